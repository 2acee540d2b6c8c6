"""Screenshot of a review report in headless Chromium (docs/report.png).

    .venv/bin/python tools/screenshot_report.py demo-ws/report.html docs/report.png --at review

Needs Debian's chromium and chromium-driver and the dev extra's selenium; nothing is downloaded.
``--at`` scrolls to an element id first; ``--decide N`` records N example decisions so the cards
show their decided state. The PNG is palette-quantised to stay small.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.by import By


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--at", default="", help="element id to scroll to (e.g. review, matrix)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--decide", type=int, default=0)
    a = ap.parse_args()
    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={a.width},{a.height}", "--hide-scrollbars"):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.get(a.report.resolve().as_uri())
        for k in range(a.decide):  # each decision re-renders the list: find the card anew
            card = driver.find_elements(By.CSS_SELECTOR, "#list .card")[k]
            buttons = card.find_elements(By.CSS_SELECTOR, "button.accept") or card.find_elements(By.CSS_SELECTOR, "button.keep")
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", buttons[0])
            buttons[0].click()
        if a.at:
            driver.execute_script("document.getElementById(arguments[0]).scrollIntoView()", a.at)
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    img.save(a.out, optimize=True)
    print(f"{a.out}: {a.out.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()

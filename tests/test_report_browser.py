"""The review report in a real browser (headless Chromium through Selenium and the system chromedriver):
thumbnails decode, filters, paging and the matrix change what is shown, a decision downloads and
`export-cleaned --decisions` applies it, and the page logs no console error."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import SAMPLE_DATA
from fercure.stages.audit import run_audit
from fercure.stages.export import run_export
from fercure.workspace import read_metadata, read_table

from test_report import make_workspace, small_audit

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("Chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver; "
                ".ci/run installs them)", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

N = 200


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """200 samples (20% planted wrong) over real sample_data crops, audited with its report."""
    root = tmp_path_factory.mktemp("browser")
    man, preds, _ = small_audit(n=N, seed=5)
    ws = make_workspace(root / "ws", man, preds)
    files = sorted((SAMPLE_DATA / "images").glob("*/*.png"))[:: 1800 // N][:N]
    crops = np.stack([np.asarray(Image.open(f).convert("RGB").resize((48, 48))) for f in files])
    np.save(ws.store, crops)
    run_audit(ws)
    return ws


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    downloads = tmp_path_factory.mktemp("downloads")
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager fetch a driver or browser
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def cards(driver) -> list[dict]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#list .card')).map(c => ({id: c.dataset.id, "
        "given: c.dataset.given, sugg: c.dataset.sugg, score: c.dataset.score === '' ? null : +c.dataset.score, "
        "decided: c.classList.contains('decided'), accept: !!c.querySelector('button.accept')}))")


def click(driver, css: str) -> None:
    """Click like a person: scrolled to the middle of the window, clear of the fixed decisions bar."""
    element = driver.find_element(By.CSS_SELECTOR, css)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def wait_for_file(folder: Path, pattern: str, timeout: float = 15) -> Path:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done = [p for p in folder.glob(pattern) if not p.name.endswith(".crdownload")]
        if done:
            return done[0]
        time.sleep(0.1)
    raise AssertionError(f"no {pattern} downloaded into {folder}: {list(folder.iterdir())}")


def test_review_report_in_chromium(workspace, browser, tmp_path):
    audit = read_table(workspace.audit)
    listed = audit["is_label_issue"] | audit["is_ambiguous_issue"]
    browser.get(workspace.report.resolve().as_uri())
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "count").text.startswith("Showing"))

    # every listed sample is reachable, 25 a page; thumbnails decode
    assert len(cards(browser)) == min(50, int(listed.sum())) and int(listed.sum()) > 25
    Select(browser.find_element(By.ID, "f-size")).select_by_visible_text("25")
    first = cards(browser)
    assert len(first) == 25 and f"of {int(listed.sum())} " in browser.find_element(By.ID, "count").text
    widths = browser.execute_script(
        "return Array.from(document.querySelectorAll('#list img')).map(i => i.complete ? i.naturalWidth : -1)")
    assert len(widths) == 25 and min(widths) > 0

    # paging
    click(browser, "#next")
    second = cards(browser)
    assert second and not {c["id"] for c in second} & {c["id"] for c in first}
    assert browser.find_element(By.ID, "count").text.startswith("Showing 26–")

    # filters: a class, then a score range
    Select(browser.find_element(By.ID, "f-given")).select_by_visible_text("sad")
    shown = cards(browser)
    assert shown and {c["given"] for c in shown} == {"sad"}
    n_sad = int((listed & (audit["given_label"] == "sad")).sum())
    assert f"of {n_sad} " in browser.find_element(By.ID, "count").text
    Select(browser.find_element(By.ID, "f-given")).select_by_visible_text("any")
    browser.find_element(By.ID, "f-smin").send_keys("0.3\n")
    shown = cards(browser)
    assert shown and all(c["score"] >= 0.3 for c in shown)
    assert len(shown) == int((listed & (audit["label_score"] >= 0.3)).sum())
    browser.find_element(By.ID, "f-smin").clear()
    browser.find_element(By.ID, "f-smin").send_keys("\n")

    # a click on a matrix cell lists that cell's samples: given happy, suggested sad
    click(browser, "td.cell[data-g='0'][data-s='1']")
    shown = cards(browser)
    cell = audit["is_label_issue"] & (audit["given_label"] == "happy") & (audit["suggested_label"] == "sad")
    assert int(cell.sum()) > 0 and sorted(c["id"] for c in shown) == sorted(audit.loc[cell, "sample_id"])
    assert "happy → sad" in browser.find_element(By.ID, "chips").text

    # decisions: accept the first card's suggestion, drop the second, then save them as CSV
    accept_id, drop_id = shown[0]["id"], shown[1]["id"]
    click(browser, f".card[data-id='{accept_id}'] button.accept")
    click(browser, f".card[data-id='{drop_id}'] button.drop")
    assert {c["id"] for c in cards(browser) if c["decided"]} == {accept_id, drop_id}
    assert browser.find_element(By.ID, "ndec").text == "2 decisions"
    click(browser, "#dl-csv")
    saved = wait_for_file(browser.downloads, "decisions-*.csv")
    rows = pd.read_csv(saved, keep_default_na=False)
    assert rows.set_index("sample_id")["action"].to_dict() == {accept_id: "relabel", drop_id: "drop"}

    out = tmp_path / "cleaned.parquet"
    run_export(workspace, out, decisions=saved)
    cleaned = read_table(out).set_index("sample_id")
    assert cleaned.at[accept_id, "action"] == "relabel" and cleaned.at[accept_id, "clean_label"] == "sad"
    assert cleaned.at[drop_id, "action"] == "drop" and pd.isna(cleaned.at[drop_id, "clean_label"])
    assert cleaned["decided_by"].value_counts().to_dict() == {"fercure": N - 2, "reviewer": 2}

    # decisions survive a reload (kept in the browser until saved)
    browser.refresh()
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "ndec").text == "2 decisions")

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def _ready(driver) -> None:
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "count").text.startswith("Showing"))


def test_filters_apply_as_typed_bulk_decisions_and_keys(workspace, browser):
    """The score filter applies while typing (no Enter, no leaving the field); "keep" for all cards
    of a matrix cell decides each of them; j / d / a decide from the keyboard; the saved CSV names
    each sample's file; a chip's × stays clickable above the fixed bar in a narrow window."""
    audit = read_table(workspace.audit)
    listed = audit["is_label_issue"] | audit["is_ambiguous_issue"]
    browser.get(workspace.report.resolve().as_uri())
    browser.execute_script("localStorage.clear()")
    browser.refresh()
    _ready(browser)

    # typed, not committed: the list follows each keystroke
    browser.find_element(By.ID, "f-smin").send_keys("0.3")
    WebDriverWait(browser, 5).until(
        lambda d: f"of {int((listed & (audit['label_score'] >= 0.3)).sum())} " in d.find_element(By.ID, "count").text)
    assert all(c["score"] >= 0.3 for c in cards(browser))
    browser.find_element(By.ID, "f-smin").send_keys(Keys.BACKSPACE * 3)
    WebDriverWait(browser, 5).until(lambda d: f"of {int(listed.sum())} " in d.find_element(By.ID, "count").text)

    # bulk: every card of one matrix cell kept at once
    click(browser, "td.cell[data-g='0'][data-s='1']")
    cell = set(c["id"] for c in cards(browser))
    assert cell and browser.find_element(By.ID, "nshown").text == str(len(cell))
    click(browser, "#bulk-keep")
    browser.switch_to.alert.accept()
    assert all(c["decided"] for c in cards(browser))
    assert browser.find_element(By.ID, "ndec").text == f"{len(cell)} decision" + ("s" if len(cell) > 1 else "")
    click(browser, "#bulk-undo")
    browser.switch_to.alert.accept()
    assert browser.find_element(By.ID, "ndec").text == "0 decisions"

    # keyboard: j selects the first card, d drops it and moves on, a accepts the next one's suggestion
    first, second = cards(browser)[:2]
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys("j")
    body.send_keys("d")
    body.send_keys("a")
    decided = browser.execute_script("return JSON.parse(localStorage.getItem(Object.keys(localStorage)[0]))")
    assert decided[first["id"]]["action"] == "drop"
    assert decided[second["id"]] == {"action": "relabel", "label": "sad", "given": "happy",
                                     "path": decided[second["id"]]["path"]}

    # the saved CSV carries each sample's file, and fercure still reads it
    for old in browser.downloads.glob("decisions-*.csv"):
        old.unlink()
    click(browser, "#dl-csv")
    saved = wait_for_file(browser.downloads, "decisions-*.csv")
    rows = pd.read_csv(saved, keep_default_na=False).set_index("sample_id")
    paths = audit.set_index("sample_id")["source_path"]
    assert list(rows.columns) == ["action", "label", "given_label", "source_path", "decided_via", "group_id",
                                 "content_hash", "run_id"]
    assert set(rows["decided_via"]) == {"card"} and set(rows["group_id"]) == {""}  # no group card in this audit
    assert rows["source_path"].to_dict() == {i: paths[i] for i in rows.index}
    hashes = audit.set_index("sample_id")["content_hash"]  # the image each decision is about, and the run shown
    as_text = pd.read_csv(saved, dtype=str, keep_default_na=False).set_index("sample_id")
    assert as_text["content_hash"].to_dict() == {i: hashes[i][:12] for i in rows.index}
    assert set(rows["run_id"]) == {read_metadata(workspace.audit)["run_id"]}
    from fercure.decisions import read_decisions
    assert {rec["sample_id"] for _, rec in read_decisions(saved)} == {first["id"], second["id"]}

    # a narrow window wraps the bar onto several lines: the chip's × must still be the element hit
    browser.set_window_size(560, 700)
    try:
        x = browser.find_element(By.CSS_SELECTOR, "#chips button.link")
        hit = ("var x = arguments[0], r = x.getBoundingClientRect();"
               "return document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2) === x;")
        # scrolled into view from below, and with the page scrolled to its end while the list is
        # empty (the chips are then the last thing on the page)
        browser.execute_script("arguments[0].scrollIntoView({block: 'end'})", x)
        assert browser.execute_script(hit, x), "the decisions bar covers the chip's ×"
        browser.find_element(By.ID, "f-text").send_keys("no such file")
        browser.execute_script("window.scrollTo(0, document.documentElement.scrollHeight)")
        x = browser.find_element(By.CSS_SELECTOR, "#chips button.link")  # the chips are drawn anew
        assert browser.execute_script(hit, x), "the decisions bar covers the chip's × at the page end"
    finally:
        browser.set_window_size(1280, 1000)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def test_reasons_expand_thumbnails_zoom_and_long_names_stay_in_their_card(browser, tmp_path):
    from fercure.report import render_report
    from test_report_bounds import many_class_audit

    audit, stats, classes = many_class_audit(3, 40)
    classes = [c * 4 for c in classes]  # names of ~150 characters
    audit["given_label"] = audit["given_label"].map(lambda c: c * 4)
    audit["suggested_label"] = audit["suggested_label"].map(lambda c: c * 4)
    stats["per_class"] = {c * 4: d for c, d in stats["per_class"].items()}
    audit["reason"] = "a long reason " * 20
    crops = np.random.default_rng(0).integers(0, 255, (len(audit), 48, 48, 3), dtype=np.uint8)
    img_root = tmp_path / "images"
    (img_root / "d").mkdir(parents=True)
    Image.fromarray(crops[0]).save(img_root / "d" / "0.png")
    page = tmp_path / "report.html"
    page.write_text(render_report(audit, stats, classes, crops=crops, run_id="r1", input_root=str(img_root)),
                    encoding="utf-8")
    browser.get(page.as_uri())
    _ready(browser)
    inside = browser.execute_script(
        "return Array.from(document.querySelectorAll('#list .card')).every(function (c) {"
        " var a = c.getBoundingClientRect(), s = c.querySelector('select').getBoundingClientRect();"
        " return s.left >= a.left - 1 && s.right <= a.right + 1; })")
    assert inside, "a class drop-down spills over its card"
    card = browser.find_element(By.CSS_SELECTOR, "#list .card")
    reason = card.find_element(By.CSS_SELECTOR, ".reason")
    h0 = reason.size["height"]
    click(browser, "#list .card button.more")
    assert reason.size["height"] > 2 * h0
    # a thumbnail opens a larger view beside the original file (linked from the card too)
    card_id = card.get_attribute("data-id")
    click(browser, "#list .card img.thumb")
    assert browser.find_element(By.ID, "zoom").is_displayed()
    assert browser.find_element(By.ID, "zoom-crop").size["width"] >= 250
    href = browser.find_element(By.ID, "zoom-link").get_attribute("href")
    row = audit.set_index("sample_id").loc[card_id]
    assert href == (img_root / row["source_path"]).as_uri()
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    assert not browser.find_element(By.ID, "zoom").is_displayed()


def fnv1a(text: str) -> int:
    """The page's per-sample order key (report.js ``hash``): FNV-1a over the id's UTF-16 code units."""
    h = 2166136261
    for ch in text:
        h = ((h ^ ord(ch)) * 16777619) & 0xFFFFFFFF
    return h


def _open(browser, page: Path) -> None:
    browser.get(page.as_uri())
    browser.execute_script("localStorage.clear()")
    browser.refresh()
    _ready(browser)


def test_spot_checks_are_listed_blind_in_a_random_order(workspace, browser):
    """The spot checks come in a fixed random order (not flagged-first), and by default blind: no
    suggestion, score, flag or reason of the model's on their cards, no accept; unticking "blind"
    shows them again."""
    audit = read_table(workspace.audit).set_index("sample_id")
    _open(browser, workspace.report.resolve())
    Select(browser.find_element(By.ID, "f-cat")).select_by_value("spot_check")
    shown = cards(browser)
    ids = [c["id"] for c in shown]
    assert len(ids) >= 5 and ids == sorted(ids, key=lambda i: (fnv1a(i), i))
    flagged = [i for i in ids if audit.at[i, "is_label_issue"]]
    assert flagged and not all(audit.loc[ids[: len(flagged)], "is_label_issue"])  # not flagged-first
    assert browser.find_element(By.ID, "f-blind").is_selected()
    for c in browser.find_elements(By.CSS_SELECTOR, "#list .card"):
        text = c.text
        assert "blind" in c.get_attribute("class") and "label score" not in text and "→" not in text
        assert not c.find_elements(By.CSS_SELECTOR, "button.accept, .reason")
        assert "label issue" not in text and "fercure (default policy)" not in text
    # a key cannot accept a hidden suggestion either
    first = flagged[0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})",
                           browser.find_element(By.CSS_SELECTOR, f".card[data-id='{first}']"))
    body = browser.find_element(By.TAG_NAME, "body")
    for _ in range(ids.index(first) + 1):
        body.send_keys("j")
    body.send_keys("a")
    assert browser.find_element(By.ID, "ndec").text == "0 decisions"
    click(browser, "#f-blind")
    card = browser.find_element(By.CSS_SELECTOR, f".card[data-id='{first}']")
    assert "label score" in card.text and "blind" not in card.get_attribute("class")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def test_bulk_actions_leave_cards_reviewed_in_an_earlier_round_alone(browser, tmp_path):
    """"keep" for everything listed decides the cards not reviewed yet, says how many reviewed ones it
    left alone, and never overwrites their earlier drop or relabel; a suggestion barely above chance
    offers no "accept"; a long reason is cut where a phrase ends."""
    from fercure import audit as core
    from fercure.report import render_report

    man, preds, _ = small_audit(n=200, seed=5)
    before, _ = core.build_audit(man, preds, ["happy", "sad"])
    flagged = before.loc[before["is_label_issue"], "sample_id"].tolist()
    done = flagged[:6]
    g = before.set_index("sample_id")["given_label"]
    other = {"happy": "sad", "sad": "happy"}
    reviewed = pd.DataFrame({"sample_id": done, "action": ["drop"] * 3 + ["relabel"] * 3,
                             "label": [None] * 3 + [other[g[i]] for i in done[3:]],
                             "given_label": [g[i] for i in done], "source": "round1.csv row 2"})
    trained = preds[~preds["sample_id"].isin(done[:3])].copy()
    trained["given_label"] = [other[x] if i in done[3:] else x for i, x in zip(trained["sample_id"], trained["given_label"])]
    audit, stats = core.build_audit(man, trained, ["happy", "sad"], reviewed=reviewed)
    weak = audit.index[audit["is_label_issue"]][0]
    audit.loc[weak, "suggested_label_confidence"] = 0.52  # chance is 0.5: no suggestion worth offering
    long = ("label score 0.08 is in the lowest 10 % of class happy; the second model, trained without it, "
            "predicts sad at 0.91 and the neighbours agree")
    audit.loc[weak, "reason"] = long
    page = tmp_path / "report.html"
    page.write_text(render_report(audit, stats, ["happy", "sad"], run_id="r2"), encoding="utf-8")
    _open(browser, page)
    card = browser.find_element(By.CSS_SELECTOR, f".card[data-id='{audit.at[weak, 'sample_id']}']")
    assert not card.find_elements(By.CSS_SELECTOR, "button.accept") and "no suggestion" in card.text
    reason = card.find_element(By.CSS_SELECTOR, ".reason").text
    assert reason == "label score 0.08 is in the lowest 10 % of class happy …"
    Select(browser.find_element(By.ID, "f-cat")).select_by_value("all")
    n_all = int(browser.find_element(By.ID, "nshown").text)
    assert "6 of them reviewed in an earlier round" in browser.find_element(By.ID, "bulk").text
    click(browser, "#bulk-keep")
    alert = browser.switch_to.alert
    assert f"Keep {n_all - 6} cards?" in alert.text and "6 reviewed in an earlier round" in alert.text
    alert.accept()
    decided = browser.execute_script("return JSON.parse(localStorage.getItem(Object.keys(localStorage)[0]))")
    assert len(decided) == n_all - 6 and not set(decided) & set(done)
    # the saved file, fed to the next run, cannot revert the earlier drops and relabels
    click(browser, "#dl-csv")
    saved = wait_for_file(browser.downloads, "decisions-r2.csv")
    rows = pd.read_csv(saved, keep_default_na=False)
    assert not set(rows["sample_id"]) & set(done)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def test_the_queue_filter_lists_the_unflagged_cards_a_reranked_queue_puts_first_with_a_suggestion(browser, tmp_path):
    from fercure import audit as core
    from fercure.audit.table import queue_suggestions
    from fercure.report import render_report

    classes = ["happy", "sad"]
    man, preds, _ = small_audit(n=80, seed=3)
    audit, stats = core.build_audit(man, preds, classes)
    issues = np.flatnonzero(audit["is_label_issue"].to_numpy())
    calm = np.flatnonzero(~audit["is_label_issue"].to_numpy() & ~audit["is_ambiguous_issue"].to_numpy()
                          & (audit["suggested_label_confidence"].to_numpy() > 0.8))
    # a far-off class made likely, so the suggestion is worth offering
    probs = audit[[f"p_{c}" for c in classes]].to_numpy(float).copy()
    probs[calm[0]] = [0.1, 0.9] if audit["given_label"].iloc[calm[0]] == "happy" else [0.9, 0.1]
    rank = audit["review_rank"].astype(float).to_numpy().copy()
    rank[calm[0]], rank[issues[-1]] = 0.5, len(audit) + 1.0
    audit["review_rank"] = pd.Series(pd.Series(rank).rank(method="first").to_numpy(), dtype="Int64")
    queue_suggestions(audit, probs, classes)
    page = tmp_path / "report.html"
    page.write_text(render_report(audit, stats, classes, run_id="q"), encoding="utf-8")
    _open(browser, page)
    Select(browser.find_element(By.ID, "f-cat")).select_by_value("queue")
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    assert [c.get_attribute("data-id") for c in cards] == [audit["sample_id"].iloc[calm[0]]]
    assert cards[0].find_elements(By.CSS_SELECTOR, "button.accept")
    assert "next in the re-ranked queue" in cards[0].text

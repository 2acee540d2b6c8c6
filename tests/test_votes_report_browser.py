"""The annotators' votes on the review page's cards, in a real browser (headless Chromium)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import make_small_workspace
from fercure import schema
from fercure.stages.audit import run_audit
from fercure.stages.train import run_train
from fercure.train.config import TrainConfig
from fercure.workspace import read_table, write_table

pytest.importorskip("selenium.webdriver")
from test_report_browser import CHROMEDRIVER, CHROMIUM, browser  # noqa: E402,F401  (the browser fixture)

if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("Chromium and chromedriver are not installed", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CLASSES = ["happy", "neutral", "sad"]


def test_cards_show_the_votes(tmp_path, browser):  # noqa: F811
    ws, _ = make_small_workspace(tmp_path / "ws", 30, 24, CLASSES, images="random")
    m = read_table(ws.manifest)
    rows = [(sid, path, who, lab if who != "c" else CLASSES[(CLASSES.index(lab) + 1) % 3], 1.0, 2)
            for sid, path, lab in zip(m["sample_id"], m["source_path"], m["label"]) for who in ("a", "b", "c")]
    write_table(pd.DataFrame(rows, columns=["sample_id", "source_path", "annotator", "label", "votes", "row"]),
                ws.annotations, {"classes": CLASSES}, table=schema.ANNOTATIONS)
    run_train(ws, TrainConfig(backbone="test_resnet", image_size=24, epochs=1, batch_size=16, device="cpu",
                              holdout=0.0, plant_rate=0.0, retrain=False, knn=0))
    run_audit(ws)
    browser.get(ws.report.resolve().as_uri())
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "count").text.startswith("Showing"))
    shown = browser.execute_script(
        "return Array.from(document.querySelectorAll('#list .card')).map(c => "
        "({id: c.dataset.id, votes: (c.querySelector('.votes') || {}).textContent || null}))")
    assert shown, "no card listed"
    by_id = read_table(ws.audit).set_index("sample_id")["votes"]
    for card in shown:
        assert card["votes"] == "votes: " + by_id[card["id"]]
        assert card["votes"].count(" · ") == 1 and " 2 · " in card["votes"]
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    assert np.isfinite(read_table(ws.audit)["annotator_agreement"]).all()

"""`fercure train --trusted`: a reviewer's decisions teach the next run (issue 18, part 1).

Unit tests on the pure parts (reading, merging, planting, flagging), then the chain on sample_data with
real MTCNN, a real timm model and real Parquet: audit → decisions (in the format the report saves them,
and saved from the report in a real browser where Chromium is installed) → train --trusted → audit → export."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fercure import audit as core
from fercure import decisions as dec
from fercure import review_calibration as rc
from fercure.cli import app
from fercure.train.config import TrainConfig
from fercure.train.detection import plan_run
from fercure.workspace import read_metadata, read_table

from test_report import payload_of, small_audit

runner = CliRunner()
CLASSES = ["happy", "sad"]


def invoke(*args: object, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


# ---------------------------------------------------------------------------------------------
# pure parts


def _parse(path: Path, ids, given, path_ids=None) -> dec.Decisions:
    records, early = dec.read_trusted_file(path, limit=None, path_ids=path_ids or {})
    d = dec.parse(records, file=str(path), sample_ids=ids, given=given, suggested=[None] * len(ids), classes=CLASSES)
    d.problems[:0] = early
    return d


def test_plain_label_table_by_id_or_path(tmp_path):
    ids, given = ["a", "b", "c"], ["happy", "happy", "sad"]
    f = tmp_path / "verified.csv"
    f.write_text("path,label\nimg/a.png,sad\nimg/b.png,happy\nimg/zz.png,sad\n", encoding="utf-8")
    d = _parse(f, ids, given, {"img/a.png": "a", "img/b.png": "b", "img/c.png": "c"})
    assert d.table.set_index("sample_id")[["action", "label"]].to_dict("index") == {
        "a": {"action": "relabel", "label": "sad"}, "b": {"action": "keep", "label": None}}
    assert [p.row for p in d.problems] == ["row 4"] and "img/zz.png" in str(d.problems[0])
    g = tmp_path / "ids.csv"
    g.write_text("sample_id,label\nc,hapy\nc,happy\n", encoding="utf-8")
    d = _parse(g, ids, given)
    assert d.table.to_dict("records")[0]["action"] == "relabel" and "Did you mean 'happy'" in str(d.problems[0])


def test_a_file_that_is_neither_is_refused_by_name(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("id,class\n1,sad\n", encoding="utf-8")
    with pytest.raises(dec.DecisionsFileError, match="x.csv has neither an action column"):
        dec.read_trusted_file(f, limit=None, path_ids={})


def test_later_decision_wins_and_is_reported(tmp_path):
    ids, given = ["a", "b"], ["happy", "sad"]
    f1, f2 = tmp_path / "one.csv", tmp_path / "two.json"
    f1.write_text("sample_id,action,label\na,drop,\nb,keep,\n", encoding="utf-8")
    f2.write_text(json.dumps([{"sample_id": "a", "action": "relabel", "label": "sad"}]), encoding="utf-8")
    t = dec.merge_trusted([_parse(f1, ids, given), _parse(f2, ids, given)], dict(zip(ids, given)))
    rows = t.table.set_index("sample_id")
    assert rows.at["a", "action"] == "relabel" and rows.at["a", "label"] == "sad"
    assert rows.at["b", "label"] == "sad" and rows.at["a", "source"] == f"{f2} entry 1"
    assert len(t.overridden) == 1 and f"{f2} entry 1 (relabel) replaces {f1} row 2 (drop)" in t.overridden[0]


def test_reviewed_samples_are_never_planted():
    given = np.repeat(np.arange(4), 50)
    reviewed = np.zeros(len(given), bool)
    reviewed[::2] = True
    plan = plan_run(given, 4, TrainConfig(plant_rate=0.2, holdout=0.1), reviewed=reviewed)
    assert plan.planted.sum() > 10 and not (plan.planted & reviewed).any()
    assert (plan.train_labels[reviewed] == given[reviewed]).all()


def test_reviewed_rows_are_never_flagged_and_show_the_reviewer():
    man, preds, _ = small_audit(n=60, seed=3)
    audit0, _ = core.build_audit(man, preds, CLASSES, threshold_method="confident_joint")
    flagged = audit0.loc[audit0["is_label_issue"], "sample_id"].tolist()
    assert len(flagged) >= 3
    keep_id, relabel_id, drop_id = flagged[:3]
    given = audit0.set_index("sample_id")["given_label"]
    other = {"happy": "sad", "sad": "happy"}
    reviewed = pd.DataFrame({
        "sample_id": [keep_id, relabel_id, drop_id], "action": ["keep", "relabel", "drop"],
        "label": [given[keep_id], other[given[relabel_id]], None],
        "given_label": [given[keep_id], given[relabel_id], given[drop_id]], "source": ["f.csv row 2"] * 3})
    # the run trained the relabelled row with its reviewed label and left the dropped one out
    p = preds[preds["sample_id"] != drop_id].copy()
    p.loc[p["sample_id"] == relabel_id, "given_label"] = other[given[relabel_id]]
    audit, stats = core.build_audit(man, p, CLASSES, threshold_method="confident_joint", reviewed=reviewed)
    a = audit.set_index("sample_id")
    assert not a.loc[[keep_id, relabel_id, drop_id], "is_label_issue"].any()
    assert a.loc[[keep_id, relabel_id, drop_id], "is_reviewed"].all() and a["is_reviewed"].sum() == 3
    assert a.at[relabel_id, "given_label"] == given[relabel_id]  # the label as given, not the reviewed one
    assert a.at[relabel_id, "reviewed_label"] == other[given[relabel_id]] and pd.isna(a.at[drop_id, "reviewed_label"])
    assert a.loc[[keep_id, relabel_id, drop_id], "decided_by"].eq("reviewer").all()
    assert a.loc[~a["is_reviewed"], "decided_by"].eq("fercure").all()
    assert a.at[drop_id, "reason"].startswith("reviewed: dropped (f.csv row 2)")
    assert stats["n_label_issues"] == int(audit["is_label_issue"].sum())
    assert stats["reviewed"] == {"n_reviewed": 3, "actions": {"keep": 1, "relabel": 1, "drop": 1}}


def test_report_hides_reviewed_cards_and_says_where_the_review_stands():
    from fercure.report.data import BIT, build_payload

    man, preds, _ = small_audit(n=60, seed=3)
    audit0, _ = core.build_audit(man, preds, CLASSES, threshold_method="confident_joint")
    done = audit0.loc[audit0["is_label_issue"], "sample_id"].tolist()[:2]
    given = audit0.set_index("sample_id")["given_label"]
    reviewed = pd.DataFrame({"sample_id": done, "action": ["keep", "drop"], "label": [given[done[0]], None],
                             "given_label": [given[s] for s in done], "source": "f.csv row 2"})
    audit, stats = core.build_audit(man, preds[preds["sample_id"] != done[1]], CLASSES,
                                    threshold_method="confident_joint", reviewed=reviewed)
    payload = build_payload(audit, stats, CLASSES)
    rows = dict(zip(payload["rows"]["id"], payload["rows"]["flags"]))
    assert all(rows[s] & BIT["reviewed"] and not rows[s] & BIT["label_issue"] for s in done)
    assert payload["rows"]["id"][-2:] == sorted(done, key=payload["rows"]["id"].index)  # last in review order
    p = payload["progress"]
    assert p["n_reviewed"] == 2 and p["n_flagged"] == int(audit["is_label_issue"].sum())
    assert p["next_cards"] == min(100, p["n_flagged"])
    # no planted flips, no reviewed queue cards: what the next cards hold is not estimated (no 1 - p sum)
    assert p["expected_from"] is None and p["expected_errors_next"] is None


# ---------------------------------------------------------------------------------------------
# the chain on real images


@pytest.fixture(scope="module")
def audited(tmp_path_factory, sample_data: Path) -> Path:
    ws = tmp_path_factory.mktemp("trusted") / "ws"
    invoke("prepare", sample_data / "images", "-l", sample_data / "labels.csv", "-w", ws, "--image-size", 48,
           "--device", "cpu")
    invoke("train", "-w", ws, "--epochs", 2, "--image-size", 48, "--batch-size", 32, "--device", "cpu",
           "--plant-rate", 0.1)
    invoke("audit-labels", "-w", ws)
    return ws


def _retrain_audit_export(ws: Path, *trusted: Path):
    args = [a for f in trusted for a in ("--trusted", f)]
    out = invoke("train", "-w", ws, "--epochs", 2, "--image-size", 48, "--batch-size", 32, "--device", "cpu",
                 "--plant-rate", 0.1, *args)
    invoke("audit-labels", "-w", ws)
    cleaned = ws.parent / f"cleaned-{len(list(ws.parent.glob('cleaned-*')))}.parquet"
    invoke("export-cleaned", "-w", ws, "-o", cleaned)
    return out, read_table(ws / "audit.parquet").set_index("sample_id"), read_table(cleaned).set_index("sample_id")


def test_train_trusted_end_to_end(audited: Path, tmp_path: Path):
    ws = audited
    audit = read_table(ws / "audit.parquet")
    flagged = audit[audit["is_label_issue"]]
    assert len(flagged) >= 2, "the 2-epoch run flags nothing to review"
    other = lambda g: "happy" if g != "happy" else "sad"  # noqa: E731
    r_id, k_id = flagged["sample_id"].iloc[0], flagged["sample_id"].iloc[1]
    d_id = audit.loc[~audit["is_label_issue"] & audit["trained"], "sample_id"].iloc[0]
    g = audit.set_index("sample_id")["given_label"]
    src = audit.set_index("sample_id")["source_path"]
    # the report's CSV (sample_id,action,label,given_label,source_path), with one bad row and a sample
    # decided twice: the later file's decision applies
    first = tmp_path / "decisions-a.csv"
    first.write_text("sample_id,action,label,given_label,source_path\n"
                     f"{r_id},drop,,{g[r_id]},{src[r_id]}\n"
                     f"{k_id},keep,,{g[k_id]},{src[k_id]}\n"
                     f"{d_id},drop,,{g[d_id]},{src[d_id]}\n"
                     "nosuchsample,drop,,,\n", encoding="utf-8")
    second = tmp_path / "decisions-b.json"
    second.write_text(json.dumps({"decisions": [{"sample_id": r_id, "action": "relabel", "label": other(g[r_id]),
                                                 "given_label": g[r_id]}]}), encoding="utf-8")
    out, a, cleaned = _retrain_audit_export(ws, first, second)
    text = " ".join(out.output.split())
    assert f"{first} row 5: unknown sample_id 'nosuchsample'" in text
    assert f"sample {r_id}: {second} entry 1 (relabel) replaces {first} row 2 (drop)" in text

    run = ws / "runs" / (ws / "runs" / "LATEST").read_text().strip()
    config = json.loads((run / "config.json").read_text())
    assert config["trusted"] == [str(first.resolve()), str(second.resolve())]
    assert [f["file"] for f in config["trusted_files"]["files"]] == [str(first.resolve()), str(second.resolve())]
    assert config["trusted_files"]["actions"] == {"keep": 1, "relabel": 1, "drop": 1}
    assert config["trusted_files"]["n_skipped"] == 1
    preds = read_table(run / "predictions.parquet").set_index("sample_id")
    assert d_id not in preds.index  # a dropped sample leaves the run
    assert preds.at[r_id, "given_label"] == other(g[r_id])  # trained with its reviewed label
    assert not preds.loc[[r_id, k_id], "planted"].any()
    assert read_metadata(run / "predictions.parquet")["trusted"]["n_reviewed"] == 3
    assert read_metadata(ws / "audit.parquet")["trusted"]["n_reviewed"] == 3
    # each reviewed row keeps the rank its score had in the audit the reviewer worked from
    # and whether the report offered it as a spot check (the same draw as the report's)
    key = rc.queue_key(audit["label_score"].to_numpy(float), audit["retrain_p_given"].to_numpy(float),
                       audit["is_label_issue"].to_numpy(bool))
    assert np.array_equal(key, audit["retrain_p_given"].to_numpy(float), equal_nan=True)  # the retrain rule's queue
    # ...its place in the queue that audit showed (review_rank), as a rank in (0, 1)
    rank_then = pd.Series(rc.ranks_of(audit["review_rank"].to_numpy(dtype=float, na_value=np.nan)),
                          index=audit["sample_id"])
    spot_then = set(audit["sample_id"].to_numpy()[rc.spot_checks(audit["sample_id"].to_numpy(),
                                                                  audit["label_score"].to_numpy(float),
                                                                  np.zeros(len(audit), bool))])
    trusted = read_table(run / "trusted.parquet").set_index("sample_id")
    assert np.allclose(trusted.loc[[r_id, k_id, d_id], "rank_when_reviewed"], rank_then.loc[[r_id, k_id, d_id]])
    assert trusted["spot_check"].to_dict() == {i: i in spot_then for i in trusted.index}
    assert trusted.loc[[k_id, d_id], "review_round"].tolist() == [1, 1] and trusted.at[r_id, "review_round"] == 2
    cal = read_metadata(ws / "audit.parquet")["stats"]["calibration"]
    assert cal["reviewed"]["n_reviewed"] == 3 and cal["reviewed"]["n_errors"] == 2
    assert cal["reviewed"]["share"] is None and "of the 30 spot checks needed" in cal["reviewed"]["why"]
    assert cal["used"] == ("planted" if cal["planted"]["share"] is not None else None)

    assert set(a.index[a["is_reviewed"]]) == {r_id, k_id, d_id}
    assert not a.loc[[r_id, k_id, d_id], "is_label_issue"].any()  # never flagged again
    assert a.at[r_id, "given_label"] == g[r_id] and a.at[r_id, "reviewed_label"] == other(g[r_id])
    assert a.at[k_id, "reviewed_label"] == g[k_id] and pd.isna(a.at[d_id, "reviewed_label"])
    assert (a.loc[[r_id, k_id, d_id], "decided_by"] == "reviewer").all()

    assert cleaned.at[r_id, "action"] == "relabel" and cleaned.at[r_id, "clean_label"] == other(g[r_id])
    assert cleaned.at[k_id, "action"] == "keep" and cleaned.at[k_id, "clean_label"] == g[k_id]
    assert cleaned.at[d_id, "action"] == "drop" and pd.isna(cleaned.at[d_id, "clean_label"])
    assert set(cleaned.index[cleaned["decided_by"] == "reviewer"]) == {r_id, k_id, d_id}
    assert "train --trusted of run" in cleaned.at[d_id, "reason"]


def test_a_trusted_file_of_only_bad_rows_is_an_error(audited: Path, tmp_path: Path):
    bad = tmp_path / "bad.csv"
    bad.write_text("sample_id,action,label\nnope,drop,\n", encoding="utf-8")
    before = sorted((audited / "runs").iterdir())
    r = invoke("train", "-w", audited, "--epochs", 1, "--image-size", 48, "--device", "cpu", "--trusted", bad, code=1)
    text = " ".join(r.output.split())
    assert f"None of the rows of --trusted {bad}" in text and "row 2: unknown sample_id 'nope'" in text
    assert sorted((audited / "runs").iterdir()) == before  # no run folder started
    invoke("train", "-w", audited, "--trusted", tmp_path / "missing.csv", code=1)


def test_decisions_saved_from_the_report_in_a_browser_teach_the_next_run(audited: Path, tmp_path: Path):
    """report.html in headless Chromium: accept a suggestion and drop a card, save the CSV, train with it."""
    tb = pytest.importorskip("test_report_browser")  # skips when selenium, Chromium or chromedriver is missing
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    os.environ.setdefault("SE_OFFLINE", "true")
    options = tb.webdriver.ChromeOptions()
    options.binary_location = tb.CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = tb.webdriver.Chrome(service=tb.webdriver.ChromeService(executable_path=tb.CHROMEDRIVER), options=options)
    try:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        driver.downloads = downloads
        driver.get((audited / "report.html").resolve().as_uri())
        WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "count").text.startswith("Showing"))
        shown = [c for c in tb.cards(driver) if c["accept"]]  # cards that offer a suggestion
        assert len(shown) >= 2, "no two cards with a suggestion to accept"
        accept, drop = shown[0], shown[1]
        tb.click(driver, f".card[data-id='{accept['id']}'] button.accept")
        tb.click(driver, f".card[data-id='{drop['id']}'] button.drop")
        tb.click(driver, "#dl-csv")
        saved = tb.wait_for_file(downloads, "decisions-*.csv")
    finally:
        driver.quit()
    _, a, cleaned = _retrain_audit_export(audited, saved)
    # the next report opens where the reviewer left off: reviewed cards hidden, a filter shows them
    driver = tb.webdriver.Chrome(service=tb.webdriver.ChromeService(executable_path=tb.CHROMEDRIVER), options=options)
    try:
        driver.get((audited / "report.html").resolve().as_uri())
        WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "count").text.startswith("Showing"))
        Select(driver.find_element(By.ID, "f-size")).select_by_visible_text("200")
        assert not {accept["id"], drop["id"]} & {c["id"] for c in tb.cards(driver)}
        Select(driver.find_element(By.ID, "f-cat")).select_by_value("reviewed")
        assert {c["id"] for c in tb.cards(driver)} == {accept["id"], drop["id"]}
        progress = driver.find_element(By.ID, "progress").text
        assert progress.startswith("Review progress: 2 samples reviewed")
        spot = int(payload_of((audited / "report.html").read_text())["progress"]["n_spot_checks"])
        Select(driver.find_element(By.ID, "f-cat")).select_by_value("spot_check")
        assert spot > 0 and len(tb.cards(driver)) == spot  # random unflagged rows, offered for calibration
        assert f"{int(a['is_label_issue'].sum())} label issues still flagged" in progress
    finally:
        driver.quit()
    assert set(a.index[a["is_reviewed"]]) == {accept["id"], drop["id"]}
    assert a.at[accept["id"], "reviewed_label"] == accept["sugg"] and not a.loc[[accept["id"], drop["id"]], "is_label_issue"].any()
    assert cleaned.at[accept["id"], "clean_label"] == accept["sugg"] and cleaned.at[drop["id"], "action"] == "drop"
    assert (cleaned.loc[[accept["id"], drop["id"]], "decided_by"] == "reviewer").all()


def test_resume_reads_the_runs_own_trusted_files(tmp_path):
    """`--resume` continues with the trusted files the run started with (its saved config)."""
    from test_train_stage import _Crash, _CrashAfter, cfg, make_workspace

    from fercure.stages.train import run_train

    ws = make_workspace(tmp_path / "ws")
    manifest = pd.read_parquet(ws.manifest)
    drop_id, relabel_id = manifest["sample_id"].iloc[5], manifest["sample_id"].iloc[6]  # both trained
    classes = sorted(manifest["label"].unique())
    new = next(c for c in classes if c != manifest["label"].iloc[6])
    f = tmp_path / "decisions.csv"
    f.write_text(f"sample_id,action,label\n{drop_id},drop,\n{relabel_id},relabel,{new}\n", encoding="utf-8")
    c = cfg(epochs=2, trusted=[str(f)])
    with pytest.raises(_Crash):
        run_train(ws, c, reporter=_CrashAfter(1))
    resumed = run_train(ws, TrainConfig(), resume=True)
    assert resumed.resumed and resumed.reviewed == 2
    preds = read_table(resumed.run_dir / "predictions.parquet").set_index("sample_id")
    assert drop_id not in preds.index and preds.at[relabel_id, "given_label"] == new
    assert read_table(resumed.run_dir / "trusted.parquet")["sample_id"].tolist() == [drop_id, relabel_id]

"""The HTML report (self-contained, escaped) and the audit stage that writes it."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from fercure import audit as core
from fercure.report import histogram_svg, render_report, thumbnail_data_uri
from fercure.report.data import FLAGS, balance_note, confidence_band, duplicate_groups, reliability_bins
from fercure.report.page import json_for_script
from fercure.report.thumbs import thumbnails
from fercure.stages.audit import AuditInputError, run_audit
from fercure.workspace import Workspace, WorkspaceError, atomic_write_json, read_metadata, read_table, write_table

CLASSES = ["happy", "sad"]
EVIL = "<script>x</script>.png"


def small_audit(n=40, seed=0):
    rng = np.random.default_rng(seed)
    given = rng.integers(0, 2, n)
    p1 = np.where(rng.random(n) < 0.2, 0.1, 0.9)  # p(given): 20% look wrong
    p1[3] = 0.5  # a 50/50 face
    probs = np.where(given[:, None] == np.arange(2), p1[:, None], 1 - p1[:, None])
    ids = [f"s{i}" for i in range(n)]
    man = pd.DataFrame({
        "sample_id": ids, "source_path": [f"d/{i}.png" for i in range(n)], "label": [CLASSES[g] for g in given],
        "split": "train", "face_status": "ok", "reason": "", "face_score": 0.9, "sharpness": 50.0,
        "duplicate_of": "", "store_index": np.arange(n),
    })
    low = np.flatnonzero(p1 < 0.5)
    man.loc[low[0], "source_path"] = EVIL  # an issue: must appear in the gallery, escaped
    preds = pd.DataFrame({"sample_id": ids, "given_label": man["label"]})
    for j, c in enumerate(CLASSES):
        preds[f"mean_p_{c}"] = probs[:, j]
    return man, preds, low[0]


def payload_of(html: str) -> dict:
    """The review list's JSON blob, as the page's script reads it."""
    m = re.search(r'<script type="application/json" id="fercure-data">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


def not_spot_checks(rows: dict) -> list[str]:
    """The listed ids but the spot checks (random unflagged rows offered for calibration)."""
    spot = 1 << FLAGS.index("spot_check")
    return [i for i, f in zip(rows["id"], rows["flags"]) if f != spot]


def test_report_is_self_contained_and_escapes_untrusted_names():
    man, preds, evil_row = small_audit()
    table, stats = core.build_audit(man, preds, CLASSES)
    assert table["is_label_issue"].iat[evil_row]
    crops = np.random.default_rng(0).integers(0, 255, (len(man), 24, 24, 3), dtype=np.uint8)
    html = render_report(table, stats, CLASSES, crops=crops, run_id="r<1>")
    # the untrusted name never appears raw: only the page's own two script elements, neither with a src
    assert EVIL not in html
    assert re.findall(r"<script[^>]*>", html) == ['<script type="application/json" id="fercure-data">', "<script>"]
    assert "r&lt;1&gt;" in html
    # nothing fetched from elsewhere: no links, no remote URLs (SVG's namespace is a name, not a fetch)
    assert "<link" not in html and not re.search(r"""\ssrc\s*=""", html)
    assert set(re.findall(r"https?://[^\s\"'<]+", html)) <= {"http://www.w3.org/2000/svg"}
    data = payload_of(html)
    listed = table["is_label_issue"] | table["is_ambiguous_issue"]
    assert sorted(not_spot_checks(data["rows"])) == sorted(table.loc[listed, "sample_id"])
    assert EVIL in data["rows"]["path"]  # kept as data; the script sets it as text
    assert all(t.startswith("data:image/jpeg;base64,") for t in data["rows"]["thumb"])
    assert table["is_ambiguous_issue"].iat[3]  # the 50/50 face
    assert "<svg" in html and "Noise transition" in html


def test_every_flagged_and_ambiguous_sample_is_listed_in_review_order():
    man, preds, _ = small_audit(n=600, seed=3)
    table, stats = core.build_audit(man, preds, CLASSES)
    n_issue, n_amb = int(table["is_label_issue"].sum()), int(table["is_ambiguous_issue"].sum())
    assert n_issue > 60  # past the old report's gallery cap
    data = payload_of(render_report(table, stats, CLASSES))
    rows = data["rows"]
    assert len(not_spot_checks(rows)) == int((table["is_label_issue"] | table["is_ambiguous_issue"]).sum())
    issue_bit = 1 << FLAGS.index("label_issue")
    scores = [s for s, f in zip(rows["score"], rows["flags"]) if f & issue_bit]
    assert len(scores) == n_issue and scores == sorted(scores)  # worst first
    assert all(f & issue_bit for f in rows["flags"][:n_issue])
    assert n_amb and all(t == "" for t in rows["thumb"])  # no crop store: no thumbnails


def test_script_blob_cannot_close_its_element():
    text = json_for_script({"path": "</script><script>alert(1)</script>", "amp": "a&b", "ls": "x\u2028y"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text)["path"] == "</script><script>alert(1)</script>"


@pytest.mark.parametrize("conf, k, verdict, band", [
    (0.17, 7, "ok", "guess"),      # chance is 0.14: near chance, grey
    (0.30, 7, "ok", "guess"),
    (0.42, 7, "ok", "lead"),
    (0.81, 7, "ok", "likely"),
    (0.81, 7, "weak", "lead"),      # a weak model never says likely
    (0.95, 7, "too_weak", "guess"),
    (0.60, 2, "ok", "guess"),       # 0.6 of two classes is barely above a coin flip
    (0.80, 2, None, "likely"),
    (float("nan"), 7, "ok", "guess"),
])
def test_confidence_band_reads_confidence_against_chance(conf, k, verdict, band):
    assert confidence_band(conf, k, verdict) == band


def test_balance_note_names_empty_and_small_classes():
    assert balance_note({"happy": 884, "sad": 800}) is None
    note = balance_note({"angry": 884, "disgust": 55, "fear": 0, "sad": 700})
    assert note.startswith("no samples in fear; disgust has 55 against 884 in angry (at least 10× fewer)")
    man, preds, _ = small_audit(n=40)
    preds["mean_p_angry"] = 0.0  # a class the run knows and no sample carries
    table, stats = core.build_audit(man, preds, CLASSES + ["angry"])
    assert "Class balance: no samples in angry" in render_report(table, stats, CLASSES + ["angry"])


def test_thumbnails_stop_at_the_budget_in_review_order():
    crops = np.random.default_rng(1).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    one = len(thumbnail_data_uri(crops[0], 32))
    store = np.array([0, 1, -1, 3, 4])
    got = thumbnails(crops, store, [4, 2, 3, 0, 1], budget=int(one * 2.5), size=32)
    assert list(got) == [4, 3]  # row 2 has no crop; the budget ends the list after two
    grey = np.repeat(crops[:1, :, :, :1], 3, axis=3)[0]
    assert len(thumbnail_data_uri(grey, 32)) < len(thumbnail_data_uri(crops[0], 32))  # one channel


def test_reliability_bins_and_calibration_error():
    probs = np.array([[0.95, 0.05]] * 10 + [[0.55, 0.45]] * 10 + [[np.nan, np.nan]])
    given = np.array([0] * 9 + [1] + [0] * 5 + [1] * 5 + [0])
    bins, ece = reliability_bins(probs, given, n_bins=10)
    top = bins[9]
    assert top["n"] == 10 and top["accuracy"] == pytest.approx(0.9) and top["confidence"] == pytest.approx(0.95)
    assert bins[5]["n"] == 10 and bins[5]["accuracy"] == pytest.approx(0.5)
    assert sum(b["n"] for b in bins) == 20  # the NaN row is left out
    assert ece == pytest.approx((10 * 0.05 + 10 * 0.05) / 20)


def test_conflicting_duplicates_and_exposure_issues_are_listed():
    man, preds, _ = small_audit()
    man.loc[5, ["face_status", "duplicate_of"]] = ["duplicate", "s6"]
    man.loc[6, "label"] = "sad" if man.loc[5, "label"] == "happy" else "happy"
    preds.loc[6, "given_label"] = man.loc[6, "label"]
    man.loc[7, ["face_status", "duplicate_of"]] = ["duplicate", "s8"]
    man.loc[8, "label"] = man.loc[7, "label"]  # same label: a duplicate, not a conflict
    preds.loc[8, "given_label"] = man.loc[8, "label"]
    man["brightness"], man["contrast"] = 120.0, 50.0
    man.loc[10, "brightness"], man.loc[11, "contrast"] = 12.0, 3.0
    table, stats = core.build_audit(man, preds, CLASSES)
    assert duplicate_groups(table["sample_id"].tolist(), table["duplicate_of"].tolist(),
                            table["given_label"].tolist()) == [[6, 5]]
    data = payload_of(render_report(table, stats, CLASSES, manifest=man))
    ids = data["rows"]["id"]
    assert [[ids[i] for i in g] for g in data["dup_groups"]] == [["s6", "s5"]]
    flags = dict(zip(ids, data["rows"]["flags"]))
    assert flags["s10"] & (1 << FLAGS.index("dark")) and flags["s11"] & (1 << FLAGS.index("low_contrast"))
    assert {"s5", "s6", "s7"} <= set(ids)


def test_report_escapes_class_names_too():
    man, preds, _ = small_audit()
    classes = ["<b>happy</b>", "sad&co"]
    man["label"] = man["label"].map({"happy": classes[0], "sad": classes[1]})
    preds = preds.rename(columns={"mean_p_happy": f"mean_p_{classes[0]}", "mean_p_sad": f"mean_p_{classes[1]}"})
    preds["given_label"] = man["label"]
    table, stats = core.build_audit(man, preds, classes)
    html = render_report(table, stats, classes)
    assert "<b>happy</b>" not in html and "&lt;b&gt;happy&lt;/b&gt;" in html and "sad&amp;co" in html
    assert payload_of(html)["classes"] == classes


def test_thumbnail_and_histogram_helpers():
    uri = thumbnail_data_uri(np.zeros((200, 200, 3), np.uint8), size=64)
    assert uri.startswith("data:image/jpeg;base64,")
    svg = histogram_svg(np.array([0.05, 0.07, 0.9, np.nan]), np.array([True, True, False, False]), bins=10,
                        threshold=0.3)
    assert svg.count("<rect") == 20 and "threshold 0.300" in svg
    assert "0.00–0.10: 2" in svg and "0.90–1.00: 1" in svg  # NaN left out


def make_workspace(root, man, preds, run_id="r1", crops=True):
    ws = Workspace(root)
    write_table(man, ws.manifest, {"classes": CLASSES})
    if crops:
        ws.faces_dir.mkdir(parents=True, exist_ok=True)
        np.save(ws.store, np.zeros((len(man), 8, 8, 3), np.uint8))
    run = ws.run_dir(run_id)
    run.mkdir(parents=True)
    atomic_write_json(run / "config.json", {"classes": CLASSES})
    write_table(preds, run / "predictions.parquet", {"run_id": run_id})
    ws.set_latest_run(run_id)
    return ws


def test_run_audit_writes_audit_and_report(tmp_path):
    man, preds, evil_row = small_audit()
    man.loc[39, ["face_status", "store_index"]] = ["unreadable", -1]
    ws = make_workspace(tmp_path / "ws", man, preds.iloc[:39])
    s = run_audit(ws)
    audit = read_table(ws.audit)
    assert audit["sample_id"].tolist() == man["sample_id"].tolist() and s.n_samples == 40 and s.n_trained == 39
    assert s.n_label_issues == int(audit["is_label_issue"].sum()) > 0
    assert s.transition_matrix.loc["happy"].sum() + s.transition_matrix.loc["sad"].sum() == 39
    assert s.per_class.loc["happy", "n"] + s.per_class.loc["sad", "n"] == 39
    assert s.face_issues["unreadable"] == 1
    meta = read_metadata(ws.audit)
    assert meta["run_id"] == "r1" and meta["classes"] == CLASSES
    assert meta["thresholds"] == s.thresholds and "class_thresholds" in meta["thresholds"]
    html = s.report_path.read_text()
    assert s.report_path == ws.report and EVIL not in html and EVIL in payload_of(html)["rows"]["path"]
    # each card says what the default export does with the sample
    rows = payload_of(html)["rows"]
    actions = {i: a for i, a in zip(rows["id"], rows["action"]) if i in not_spot_checks(rows)}
    assert set(actions.values()) <= {"keep", "relabel", "drop", "review"} and len(actions) == s.n_label_issues + s.n_ambiguous + 1
    assert actions["s39"] == "drop"  # the unreadable file is listed as a face problem, and dropped

    other = tmp_path / "elsewhere" / "r.html"
    assert run_audit(ws, run_id="r1", report_path=other).report_path == other and other.exists()


def test_run_audit_errors_say_what_to_do(tmp_path):
    man, preds, _ = small_audit()
    ws = make_workspace(tmp_path / "ws", man, preds)
    with pytest.raises(AuditInputError, match="fercure train"):
        run_audit(ws, run_id="nope")
    bad = preds.copy()
    bad.loc[0, "given_label"] = "sad" if bad.loc[0, "given_label"] == "happy" else "happy"
    write_table(bad, ws.run_dir("r1") / "predictions.parquet")
    with pytest.raises(WorkspaceError, match="manifest changed"):
        run_audit(ws)


def test_histogram_names_the_rule_and_draws_no_cut_for_the_retrain_rule():
    from fercure.report.svg import histogram_svg
    v, f = np.linspace(0, 1, 50), np.linspace(0, 1, 50) < 0.2
    svg = histogram_svg(v, f, threshold=0.2, rule="retrain")
    assert "stroke-dasharray" not in svg and "not a cut on this score" in svg
    svg = histogram_svg(v, f, threshold=0.2, rule="mixture")
    assert "stroke-dasharray" in svg and "one cut on the score" in svg


def test_confidence_band_follows_the_probe_calibration():
    from fercure.report.data import confidence_band
    bands = {"calibrated": True, "cuts": [0.0, 0.45, 0.7], "accuracy": [0.2, 0.4, 0.8]}
    assert confidence_band(0.44, 7, "ok", bands) == "guess"
    assert confidence_band(0.5, 7, "ok", bands) == "lead"
    assert confidence_band(0.71, 7, "ok", bands) == "likely"
    assert confidence_band(0.71, 7, "weak", bands) == "lead"
    # the card no longer calls 2.4× chance "near chance"
    from pathlib import Path
    js = (Path(core.__file__).parents[1] / "report" / "report.js").read_text(encoding="utf-8")
    assert "near chance" not in js and "band_accuracy" in js


def test_the_save_bar_names_the_export_and_the_review_loop():
    man, preds, _ = small_audit(n=60, seed=1)
    table, stats = core.build_audit(man, preds, CLASSES)
    html = render_report(table, stats, CLASSES, run_id="r 1", workspace="/data/my ws")
    bar = re.search(r'<div id="bar">(.*?)</div>', html, re.S).group(1)
    assert "fercure export-cleaned -w &#x27;/data/my ws&#x27;" in bar and "--decisions decisions-r_1.csv" in bar
    assert "fercure audit-labels -w &#x27;/data/my ws&#x27; --trusted decisions-r_1.csv" in bar
    assert ("fercure train -w &#x27;/data/my ws&#x27; --trusted decisions-r_1.csv &amp;&amp; "
            "fercure audit-labels -w &#x27;/data/my ws&#x27;") in bar

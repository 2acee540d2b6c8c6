"""The HTML report (self-contained, escaped) and the audit stage that writes it."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from fercure import audit as core
from fercure.report import histogram_svg, render_report, thumbnail_data_uri
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


def test_report_is_self_contained_and_escapes_untrusted_names():
    man, preds, evil_row = small_audit()
    table, stats = core.build_audit(man, preds, CLASSES)
    assert table["is_label_issue"].iat[evil_row]
    crops = np.random.default_rng(0).integers(0, 255, (len(man), 24, 24, 3), dtype=np.uint8)
    html = render_report(table, stats, CLASSES, crops=crops, run_id="r<1>")
    assert EVIL not in html and "<script" not in html.lower()
    assert "&lt;script&gt;x&lt;/script&gt;.png" in html
    assert "r&lt;1&gt;" in html
    # nothing fetched from elsewhere: images are data URIs, no links, scripts or remote sources
    assert not re.search(r"""(src|href)\s*=\s*(?!["']?data:)""", html)
    assert "<link" not in html
    assert table["is_ambiguous_issue"].iat[3]  # the 50/50 face
    assert html.count('src="data:image/png;base64,') == int(table["is_label_issue"].sum() + table["is_ambiguous_issue"].sum())
    assert "<svg" in html and "Noise transition" in html


def test_report_escapes_class_names_too():
    man, preds, _ = small_audit()
    classes = ["<b>happy</b>", "sad&co"]
    man["label"] = man["label"].map({"happy": classes[0], "sad": classes[1]})
    preds = preds.rename(columns={"mean_p_happy": f"mean_p_{classes[0]}", "mean_p_sad": f"mean_p_{classes[1]}"})
    preds["given_label"] = man["label"]
    table, stats = core.build_audit(man, preds, classes)
    html = render_report(table, stats, classes)
    assert "<b>happy</b>" not in html and "&lt;b&gt;happy&lt;/b&gt;" in html and "sad&amp;co" in html


def test_thumbnail_and_histogram_helpers():
    uri = thumbnail_data_uri(np.zeros((200, 200, 3), np.uint8), size=64)
    assert uri.startswith("data:image/png;base64,")
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
    assert s.report_path == ws.report and "&lt;script&gt;" in html and EVIL not in html

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

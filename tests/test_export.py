"""Cleaning policies, the export stage, overwrite refusal and provenance."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from fercure import export
from fercure.stages.audit import run_audit
from fercure.stages.export import OutputExistsError, ExportError, read_provenance, run_export
from fercure.workspace import Workspace, WorkspaceError, atomic_write_json, read_metadata, read_table, write_table

CLASSES = ["happy", "sad", "surprise"]


def audit_rows() -> pd.DataFrame:
    """One row per rules-table situation (plus a second face problem and an untrained sample)."""
    rows = [
        # sid, given, sugg, conf, issue, amb, face_status, store_index, trained, probs
        ("clean", "happy", "happy", 0.9, False, False, "ok", 0, True, [0.9, 0.05, 0.05]),
        ("sure_err", "happy", "sad", 0.8, True, False, "ok", 1, True, [0.1, 0.8, 0.1]),
        ("weak_err", "happy", "sad", 0.45, True, False, "ok", 2, True, [0.2, 0.45, 0.35]),
        ("same_err", "sad", "sad", 0.4, True, False, "ok", 3, True, [0.3, 0.4, 0.3]),
        ("amb", "surprise", "surprise", 0.45, False, True, "ok", 4, True, [0.45, 0.1, 0.45]),
        ("amb_err", "sad", "happy", 0.48, True, True, "ok", 5, True, [0.48, 0.1, 0.42]),
        ("dup", "sad", None, np.nan, False, False, "duplicate", 6, False, [np.nan] * 3),
        ("unread", "happy", None, np.nan, False, False, "unreadable", -1, False, [np.nan] * 3),
        ("noface_dropped", "sad", None, np.nan, False, False, "no_face", -1, False, [np.nan] * 3),
        ("noface_kept", "sad", "sad", 0.7, False, False, "no_face", 7, True, [0.2, 0.7, 0.1]),
        ("untrained", "happy", None, np.nan, False, False, "ok", 8, False, [np.nan] * 3),
    ]
    df = pd.DataFrame(rows, columns=["sample_id", "given_label", "suggested_label", "suggested_label_confidence",
                                     "is_label_issue", "is_ambiguous_issue", "face_status", "store_index", "trained", "p"])
    probs = np.array(df.pop("p").tolist(), dtype=float)
    for j, c in enumerate(CLASSES):
        df[f"p_{c}"] = probs[:, j]
    df["source_path"] = "img/" + df["sample_id"] + ".png"
    df["split"] = "train"
    df["label_score"] = np.where(df["trained"], 1 - df["is_label_issue"] * 0.8, np.nan)
    df["reliability"] = 0.5
    df["uncertainty_entropy"] = 0.3
    df["reason"] = "audit says " + df["sample_id"]
    return df


EXPECTED = {  # sample → action under relabel, drop, flag, soft (the rules table)
    "clean": ("keep", "keep", "keep", "keep"),
    "sure_err": ("relabel", "drop", "review", "review"),
    "weak_err": ("drop", "drop", "review", "review"),  # a likely wrong label, no trusted replacement
    "same_err": ("drop", "drop", "review", "review"),
    "amb": ("review", "keep", "review", "keep"),
    "amb_err": ("review", "drop", "review", "review"),
    "dup": ("drop", "drop", "review", "drop"),
    "unread": ("drop", "drop", "review", "drop"),
    "noface_dropped": ("drop", "drop", "review", "drop"),
    "noface_kept": ("keep", "keep", "keep", "keep"),
    "untrained": ("keep", "keep", "keep", "keep"),
}


@pytest.mark.parametrize("k,policy", list(enumerate(export.POLICIES)))
def test_policies_take_the_documented_actions_and_keep_every_row(k, policy):
    audit = audit_rows()
    before = audit.copy()
    out = export.apply_policy(audit, CLASSES, policy)
    pd.testing.assert_frame_equal(audit, before)  # input untouched
    assert out["sample_id"].tolist() == audit["sample_id"].tolist()
    assert out["given_label"].tolist() == audit["given_label"].tolist()
    assert dict(zip(out["sample_id"], out["action"])) == {s: a[k] for s, a in EXPECTED.items()}
    # clean_label: suggestion for relabel, none for drop, the original otherwise
    for _, r in out.iterrows():
        if r["action"] == "relabel":
            assert r["clean_label"] == r["suggested_label"] != r["given_label"]
        elif r["action"] == "drop":
            assert r["clean_label"] is None or pd.isna(r["clean_label"])
        else:
            assert r["clean_label"] == r["given_label"]
    assert list(out.columns[: len(export.BASE_COLUMNS)]) == export.BASE_COLUMNS
    assert [c for c in out.columns if c.startswith("p_")] == [f"p_{c}" for c in CLASSES]


def test_reasons_carry_the_numbers():
    out = export.apply_policy(audit_rows(), CLASSES, "relabel").set_index("sample_id")
    assert out.at["sure_err", "reason"].startswith("relabelled: likely mislabelled: happy -> sad (0.80 >= 0.50)")
    assert "audit says sure_err" in out.at["sure_err", "reason"]
    assert "sad (0.45) is below 0.50" in out.at["weak_err", "reason"]
    assert "no other label is preferred" in out.at["same_err", "reason"]
    assert out.at["dup", "reason"].startswith("dropped: face problem (duplicate)")
    assert out.at["untrained", "reason"].startswith("kept: not audited")


def test_min_confidence_turns_a_relabel_into_a_drop():
    # below the bar the suggestion is not trusted: the likely wrong label is dropped, not guessed
    out = export.apply_policy(audit_rows(), CLASSES, "relabel", min_confidence=0.9).set_index("sample_id")
    assert out.at["sure_err", "action"] == "drop" and pd.isna(out.at["sure_err", "clean_label"])
    assert "below 0.90" in out.at["sure_err", "reason"]


def test_soft_policy_keeps_distributions_where_uncertain_one_hot_elsewhere():
    out = export.apply_policy(audit_rows(), CLASSES, "soft").set_index("sample_id")
    p = out[[f"p_{c}" for c in CLASSES]]
    assert p.loc["clean"].tolist() == [1.0, 0.0, 0.0]
    assert p.loc["amb"].tolist() == pytest.approx([0.45, 0.1, 0.45])  # ambiguity kept as a soft label
    assert p.loc["sure_err"].tolist() == pytest.approx([0.1, 0.8, 0.1])  # review: the model's view
    assert p.loc["untrained"].tolist() == [1.0, 0.0, 0.0]
    assert p.loc["dup"].isna().all()
    assert (out["clean_label"].dropna() == out["given_label"][out["clean_label"].notna()]).all()
    # other policies report the model's distribution unchanged
    rel = export.apply_policy(audit_rows(), CLASSES, "relabel").set_index("sample_id")
    assert rel.loc["clean", "p_happy"] == 0.9


def test_unknown_policy_raises():
    with pytest.raises(ValueError, match="relabel, drop, flag, soft"):
        export.apply_policy(audit_rows(), CLASSES, "yolo")


# ---------------------------------------------------------------------------------------------
# The stage, on a small synthetic workspace


def make_workspace(root, n=60, seed=0) -> Workspace:
    rng = np.random.default_rng(seed)
    ws = Workspace(root)
    ids = [f"id{i:03d}" for i in range(n)]
    true = rng.integers(0, 3, n)
    given = true.copy()
    given[:8] = (true[:8] + 1) % 3  # planted errors
    man = pd.DataFrame({
        "sample_id": ids, "source_path": [f"faces/{i}.png" for i in ids], "label": [CLASSES[g] for g in given],
        "split": "train", "face_status": "ok", "reason": "", "face_score": 0.99,
        "sharpness": np.exp(rng.normal(5, 0.1, n)), "duplicate_of": "", "store_index": np.arange(n),
    })
    man.loc[n - 1, ["face_status", "duplicate_of"]] = ["duplicate", ids[0]]
    man.loc[n - 2, ["face_status", "store_index"]] = ["unreadable", -1]
    write_table(man, ws.manifest, {"classes": CLASSES})
    ws.faces_dir.mkdir(parents=True, exist_ok=True)
    np.save(ws.store, rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8))
    trained = man.iloc[: n - 2]
    logits = rng.normal(0, 0.5, (len(trained), 3))
    logits[np.arange(len(trained)), true[: n - 2]] += 3
    logits[np.arange(len(trained)), given[: n - 2]] += 0.5
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    preds = pd.DataFrame({"sample_id": trained["sample_id"], "given_label": trained["label"],
                          "given_index": given[: n - 2]})
    for j, c in enumerate(CLASSES):
        preds[f"p_{c}"] = p[:, j]
        preds[f"mean_p_{c}"] = p[:, j]
    preds["mean_p_given"] = p[np.arange(len(p)), given[: n - 2]]
    preds["reliability"] = 0.7
    preds["uncertainty_entropy"] = 0.2
    run = ws.run_dir("r1")
    run.mkdir(parents=True)
    atomic_write_json(run / "config.json", {"classes": CLASSES, "run_id": "r1"})
    write_table(preds, run / "predictions.parquet", {"run_id": "r1", "classes": CLASSES})
    ws.set_latest_run("r1")
    return ws


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_export_writes_every_sample_with_provenance_and_touches_no_input(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    run_audit(ws, write_report=False)
    inputs = {p: digest(p) for p in (ws.manifest, ws.audit, ws.run_dir("r1") / "predictions.parquet")}
    out = tmp_path / "cleaned.parquet"
    s = run_export(ws, out)
    assert {p: digest(p) for p in inputs} == inputs
    df = read_table(out)
    man = read_table(ws.manifest)
    assert df["sample_id"].tolist() == man["sample_id"].tolist()
    assert df["given_label"].tolist() == man["label"].tolist()
    assert s.n_rows == len(man) and sum(s.actions.values()) == len(man)
    assert s.actions["drop"] >= 2  # the duplicate and the unreadable file
    assert s.actions["relabel"] >= 5  # most of the 8 planted errors, confidently
    relabelled = df[df["action"] == "relabel"]
    assert relabelled["sample_id"].isin([f"id{i:03d}" for i in range(8)]).all()

    meta = read_metadata(out)
    assert meta["policy"] == "relabel" and meta["run_id"] == "r1" and meta["classes"] == CLASSES
    assert meta["fercure_version"] and meta["thresholds"]["threshold_method"] == "noise_rate"
    assert "class_thresholds" in meta["thresholds"]
    assert meta["actions"] == s.actions


def test_run_export_refuses_to_overwrite_without_force(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    run_audit(ws, write_report=False)
    out = tmp_path / "cleaned.parquet"
    run_export(ws, out, policy="flag")
    before = digest(out)
    with pytest.raises(OutputExistsError, match="--force") as err:
        run_export(ws, out, policy="drop")
    assert isinstance(err.value, WorkspaceError)
    assert digest(out) == before
    run_export(ws, out, policy="drop", force=True)
    assert read_metadata(out)["policy"] == "drop"
    with pytest.raises(ExportError, match="never overwrites"):
        run_export(ws, ws.manifest, force=True)


def test_run_export_csv_with_sidecar_provenance(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    run_audit(ws, write_report=False)
    out = tmp_path / "cleaned.csv"
    s = run_export(ws, out, policy="soft", fmt="csv")
    df = pd.read_csv(out)
    assert len(df) == 60 and df["given_label"].tolist() == read_table(ws.manifest)["label"].tolist()
    prov = read_provenance(out)
    assert s.provenance_path.exists() and prov == json.loads(s.provenance_path.read_text())
    assert prov["policy"] == "soft" and prov["run_id"] == "r1" and prov["fercure_version"]
    out.unlink()  # the sidecar alone still blocks an overwrite
    with pytest.raises(OutputExistsError):
        run_export(ws, out, fmt="csv")


def test_run_export_refuses_a_stale_audit(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    run_audit(ws, write_report=False)
    man = read_table(ws.manifest)
    extra = man.iloc[:1].assign(sample_id="new", source_path="faces/new.png")
    write_table(pd.concat([man, extra], ignore_index=True), ws.manifest, {"classes": CLASSES})
    with pytest.raises(ExportError, match="audit-labels"):
        run_export(ws, tmp_path / "c.parquet")


def test_a_model_too_weak_to_judge_changes_no_label():
    audit = pd.DataFrame({
        "sample_id": ["a", "b", "c", "d"], "source_path": ["a.png", "b.png", "c.png", "d.png"],
        "split": "train", "given_label": ["x", "x", "y", "y"], "trained": True,
        "suggested_label": ["y", "x", "x", "y"], "suggested_label_confidence": [0.9, 0.8, 0.3, 0.9],
        "label_score": [0.1, 0.9, 0.2, 0.5], "is_label_issue": [True, False, True, False],
        "is_ambiguous_issue": [False, False, False, True], "face_status": ["ok", "ok", "ok", "duplicate"],
        "store_index": [0, 1, 2, 3], "reliability": 0.5, "uncertainty_entropy": 0.5,
        "p_x": [0.1, 0.8, 0.3, 0.5], "p_y": [0.9, 0.2, 0.7, 0.5], "reason": "",
    })
    strong = export.apply_policy(audit, ["x", "y"])
    assert strong["action"].tolist() == ["relabel", "keep", "drop", "drop"]
    weak = export.apply_policy(audit, ["x", "y"], model_verdict="too_weak")
    assert weak["action"].tolist() == ["keep", "keep", "keep", "drop"]  # face problems still count
    assert weak["clean_label"].tolist()[:3] == ["x", "x", "y"]
    assert "too weak" in weak["reason"].iloc[0]
    assert export.apply_policy(audit, ["x", "y"], "flag", model_verdict="too_weak")["action"].tolist()[:3] == ["review", "keep", "review"]
    # a weak model's flags are leads: kept under relabel (ambiguity still goes to review), dropped
    # only when the user asks for the drop policy
    merely_weak = export.apply_policy(audit, ["x", "y"], model_verdict="weak")
    assert merely_weak["action"].tolist() == ["keep", "keep", "keep", "drop"]
    assert "leads, not evidence" in merely_weak["reason"].iloc[0]
    assert export.apply_policy(audit, ["x", "y"], "drop", model_verdict="weak")["action"].tolist()[:3] == ["drop", "keep", "drop"]

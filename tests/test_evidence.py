"""Bring what you have: audit-labels from the user's own probabilities (--pred-probs) and embeddings
(--features), with no train run or joined with one; bad files refused; issues beyond labels
(outliers, exposure) in audit.parquet; the label-health summary."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import make_small_workspace
from fercure import health, outliers
from fercure.cli import app
from fercure.workspace import atomic_write_json, read_metadata, read_table, write_table

runner = CliRunner()
CLASSES = ["happy", "neutral", "sad"]
N = 60


def invoke(*args, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


@pytest.fixture
def prepared(tmp_path):
    """A prepared workspace (no run) of 60 samples, 12 of them labelled wrong, and the true classes."""
    ws, wrong = make_small_workspace(tmp_path / "ws", N, flip_rate=0.2)
    return ws, wrong, np.arange(N) % 3


def good_probs(true: np.ndarray) -> np.ndarray:
    """Out-of-sample-like probabilities: 0.7 on the true class, 0.15 elsewhere."""
    p = np.full((len(true), 3), 0.15)
    p[np.arange(len(true)), true] = 0.7
    return p


def probs_frame(ws, p: np.ndarray, key: str = "sample_id") -> pd.DataFrame:
    m = read_table(ws.manifest)
    df = pd.DataFrame(p, columns=CLASSES)
    df.insert(0, key, m["sample_id" if key == "sample_id" else "source_path"].to_numpy())
    return df


def audit_json(ws, *args) -> dict:
    out = invoke("audit-labels", "-w", ws.root, *args, "--json").stdout
    return json.loads(out[out.index("{"):])


def test_prepared_workspace_is_audited_from_pred_probs_without_a_run(prepared, tmp_path):
    ws, wrong, true = prepared
    probs_frame(ws, good_probs(true)).to_csv(tmp_path / "oof.csv", index=False)
    summary = audit_json(ws, "--pred-probs", tmp_path / "oof.csv")
    audit = read_table(ws.audit)
    assert audit["is_label_issue"].to_numpy().tolist() == wrong.tolist()  # the 12 planted errors, no others
    flagged = audit["is_label_issue"].to_numpy()
    assert (audit["suggested_label"][flagged].to_numpy() == np.array(CLASSES)[true[flagged]]).all()
    assert set(audit["evidence"]) == {"pred-probs"}
    assert summary["run_id"] is None and summary["evidence"] == {"pred-probs": N}
    thresholds = read_metadata(ws.audit)["thresholds"]
    assert thresholds["threshold_method_used"] == "noise_rate" and thresholds["method"] == "self_confidence"
    assert "No fercure run" in summary["warning"] and "the noise_rate rule (per class" in summary["warning"]
    given = audit["given_label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    assert audit["label_score"].to_numpy() == pytest.approx(good_probs(true)[np.arange(N), given])  # p(given)
    page = ws.report.read_text(encoding="utf-8")
    assert "Evidence per row: 60 on pred-probs" in page and "Overall label health" in page
    assert summary["health_summary"]["overall_label_health_score"] == pytest.approx(0.8)  # 12 of 60 wrong
    assert summary["per_class"]["happy"]["est_wrong_share"] == pytest.approx(
        summary["health_summary"]["classes"]["happy"]["label_noise"])


@pytest.mark.parametrize("form", ["path-parquet", "npy"])
def test_pred_probs_keyed_by_path_or_in_manifest_order_give_the_same_audit(prepared, tmp_path, form):
    ws, wrong, true = prepared
    if form == "npy":
        path = tmp_path / "oof.npy"
        np.save(path, good_probs(true))
    else:
        path = tmp_path / "oof.parquet"
        probs_frame(ws, good_probs(true), key="path").iloc[::-1].to_parquet(path)  # any row order
    audit_json(ws, "--pred-probs", path)
    assert read_table(ws.audit)["is_label_issue"].to_numpy().tolist() == wrong.tolist()


def _missing(df):
    return df.iloc[1:]


def _unknown(df):
    extra = df.iloc[:1].copy()
    extra["sample_id"] = "no-such-sample"
    return pd.concat([df, extra])


def _classes(df):
    return df.rename(columns={"sad": "sadness"})


def _nan(df):
    df.loc[3, "happy"] = np.nan
    return df


def _negative(df):
    df.loc[4, ["happy", "neutral", "sad"]] = [-0.2, 0.6, 0.6]
    return df


def _sums(df):
    df.loc[5, ["happy", "neutral", "sad"]] = [2.0, 1.0, 0.5]  # logits, not probabilities
    return df


@pytest.mark.parametrize("spoil, says", [
    (_missing, "lacks 1 of the 60 samples"),
    (_unknown, "the manifest does not have"),
    (_classes, "classes do not match"),
    (_nan, "NaN"),
    (_negative, "is negative"),
    (_sums, "refuses to renormalise"),
])
def test_bad_pred_probs_file_is_refused_naming_it_and_nothing_is_written(prepared, tmp_path, spoil, says):
    ws, _, true = prepared
    path = tmp_path / "bad.csv"
    spoil(probs_frame(ws, good_probs(true))).to_csv(path, index=False)
    result = invoke("audit-labels", "-w", ws.root, "--pred-probs", path, code=1)
    assert str(path) in result.output.replace("\n", "") and says in result.output.replace("\n", " ")
    assert not ws.audit.exists() and not ws.report.exists()


def test_rows_off_by_rounding_are_renormalised_and_the_summary_says_so(prepared, tmp_path):
    ws, wrong, true = prepared
    p = good_probs(true)
    p[:10] *= 1.004
    probs_frame(ws, p).to_csv(tmp_path / "oof.csv", index=False)
    summary = audit_json(ws, "--pred-probs", tmp_path / "oof.csv")
    assert "10 row(s) did not sum to 1" in summary["warning"] and "renormalised" in summary["warning"]
    audit = read_table(ws.audit)
    probs = audit[[f"p_{c}" for c in CLASSES]].to_numpy()
    assert probs.sum(axis=1) == pytest.approx(np.ones(N))


def test_features_of_another_length_are_refused(prepared, tmp_path):
    ws, _, true = prepared
    probs_frame(ws, good_probs(true)).to_csv(tmp_path / "oof.csv", index=False)
    np.save(tmp_path / "emb.npy", np.random.default_rng(0).normal(size=(N - 1, 8)))
    result = invoke("audit-labels", "-w", ws.root, "--pred-probs", tmp_path / "oof.csv",
                    "--features", tmp_path / "emb.npy", code=1)
    text = result.output.replace("\n", " ")
    assert "emb.npy" in text and "manifest has 60 rows" in text
    assert not ws.audit.exists()


def test_in_sample_probabilities_are_warned_about(prepared, tmp_path):
    ws, _, _ = prepared
    given = read_table(ws.manifest)["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    p = np.full((N, 3), 0.015)
    p[np.arange(N), given] = 0.97  # the model learned the given labels, wrong ones too
    probs_frame(ws, p).to_csv(tmp_path / "fit.csv", index=False)
    summary = audit_json(ws, "--pred-probs", tmp_path / "fit.csv")
    assert "0.97" in summary["warning"] and "in-sample" in summary["warning"]
    assert "out-of-sample" in summary["warning"]


def test_features_add_an_outlier_score_and_neighbour_suggestions(prepared, tmp_path):
    ws, wrong, true = prepared
    rng = np.random.default_rng(1)
    emb = rng.normal(0, 0.3, (N, 6))
    emb[np.arange(N), true] += 3.0
    emb[17] = 0.0
    emb[17, 5] = 3.0  # a face unlike any other: its own direction
    np.save(tmp_path / "emb.npy", emb)
    probs_frame(ws, good_probs(true)).to_csv(tmp_path / "oof.csv", index=False)
    summary = audit_json(ws, "--pred-probs", tmp_path / "oof.csv", "--features", tmp_path / "emb.npy")
    audit = read_table(ws.audit)
    assert int(np.nanargmin(audit["outlier_score"].to_numpy())) == 17
    assert audit["is_outlier_issue"].to_numpy().nonzero()[0].tolist() == [17]
    assert set(audit["evidence"]) == {"pred-probs+features"}
    assert summary["face_issues"]["outlier"] == 1


def test_outlier_score_ranks_a_planted_odd_sample_lowest():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 30)
    x = rng.normal(0, 0.2, (60, 4))
    x[labels == 0, 0] += 2.0
    x[labels == 1, 1] += 2.0
    x[41] = [0.0, 0.0, 2.0, 0.0]  # labelled 1, near nothing
    nb = outliers.nearest_neighbours(x, k=5)
    r = outliers.outlier_scores(nb, labels)
    assert int(np.argmin(r.score)) == 41
    assert r.is_issue.nonzero()[0].tolist() == [41]
    assert ((r.score > 0) & (r.score <= 1)).all()
    vote = outliers.label_vote(nb, labels, 2)
    assert vote[:41].argmax(axis=1).tolist() == labels[:41].tolist()


def test_exposure_issues_are_columns_of_the_audit(tmp_path):
    ws, _ = make_small_workspace(tmp_path / "ws", 12)
    m = read_table(ws.manifest)
    m["brightness"] = [20.0, 230.0] + [120.0] * 10
    m["contrast"] = [30.0, 30.0, 5.0] + [40.0] * 9
    write_table(m, ws.manifest, read_metadata(ws.manifest))
    np.save(tmp_path / "oof.npy", good_probs(np.arange(12) % 3))
    summary = audit_json(ws, "--pred-probs", tmp_path / "oof.npy")
    audit = read_table(ws.audit)
    assert audit["is_dark_issue"].to_numpy().nonzero()[0].tolist() == [0]
    assert audit["is_bright_issue"].to_numpy().nonzero()[0].tolist() == [1]
    assert audit["is_low_contrast_issue"].to_numpy().nonzero()[0].tolist() == [2]
    assert audit["dark_score"].iat[0] == pytest.approx(20 / 255)
    assert audit["bright_score"].iat[1] == pytest.approx(1 - 230 / 255)
    assert audit["low_contrast_score"].iat[2] == pytest.approx(5 / 127.5)
    assert {k: summary["face_issues"][k] for k in ("dark", "bright", "low_contrast")} == \
        {"dark": 1, "bright": 1, "low_contrast": 1}
    invoke("export-cleaned", "-w", ws.root, "-o", tmp_path / "cleaned.parquet")
    cleaned = read_table(tmp_path / "cleaned.parquet")
    assert cleaned["is_dark_issue"].to_numpy().nonzero()[0].tolist() == [0]
    assert set(cleaned["evidence"]) == {"pred-probs"}
    prov = read_metadata(tmp_path / "cleaned.parquet")
    assert prov["issues"]["dark"] == 1 and prov["evidence"] == {"pred-probs": 12}


def fake_run(ws, true: np.ndarray, run_id: str = "r1") -> None:
    """A finished run whose in-sample probabilities learned the given labels (weak evidence)."""
    m = read_table(ws.manifest)
    given = m["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    p = np.full((N, 3), 0.2)
    p[np.arange(N), given] = 0.6
    preds = pd.DataFrame({"sample_id": m["sample_id"], "given_label": m["label"], "given_index": given})
    for j, c in enumerate(CLASSES):
        preds[f"p_{c}"] = p[:, j]
        preds[f"mean_p_{c}"] = p[:, j]
    preds["mean_p_given"] = 0.6
    run = ws.run_dir(run_id)
    run.mkdir(parents=True)
    atomic_write_json(run / "config.json", {"classes": CLASSES, "run_id": run_id})
    write_table(preds, run / "predictions.parquet", {"run_id": run_id, "classes": CLASSES})
    ws.set_latest_run(run_id)


def test_pred_probs_join_a_trained_workspace_and_run_none_leaves_the_run_out(prepared, tmp_path):
    ws, wrong, true = prepared
    fake_run(ws, true)
    probs_frame(ws, good_probs(true)).to_csv(tmp_path / "oof.csv", index=False)
    summary = audit_json(ws, "--pred-probs", tmp_path / "oof.csv")
    audit = read_table(ws.audit)
    assert summary["run_id"] == "r1" and set(audit["evidence"]) == {"pred-probs+fercure"}
    meta = read_metadata(ws.audit)
    assert meta["thresholds"]["method"] == {"confidence_variability": 1.0, "self_confidence": 1.0}
    # the run alone cannot tell the wrong labels from the right ones (0.6 on every given label)
    alone = audit_json(ws)
    assert set(read_table(ws.audit)["evidence"]) == {"fercure run"} and alone["evidence"] == {"fercure run": N}
    audit_json(ws, "--pred-probs", tmp_path / "oof.csv", "--run", "none")
    assert set(read_table(ws.audit)["evidence"]) == {"pred-probs"}
    assert read_table(ws.audit)["is_label_issue"].to_numpy().tolist() == wrong.tolist()


def test_health_summary_estimates_the_planted_share_of_wrong_labels():
    rng = np.random.default_rng(0)
    n, k = 3000, 3
    true = rng.integers(0, k, n)
    flip = rng.random(n) < np.array([0.05, 0.2, 0.35])[true]
    given = np.where(flip, (true + rng.integers(1, k, n)) % k, true)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), true] += 3.0
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    h = health.health_summary(p, given, ["a", "b", "c"], n_boot=100)
    truth = [flip[given == j].mean() for j in range(k)]
    for c, t in zip(h.classes, truth):
        lo, hi = c.label_noise_interval
        assert lo <= t <= hi, (c.name, lo, t, hi)
        assert abs(c.label_noise - t) < 0.05
    assert abs(h.overall_label_health_score - (1 - flip.mean())) < 0.03
    lo, hi = h.overall_interval
    assert lo < h.overall_label_health_score < hi


def test_health_summary_names_underperforming_and_imbalanced_classes():
    given = np.r_[np.zeros(500, int), np.ones(500, int), np.full(40, 2)]
    p = np.full((len(given), 3), 0.05)
    p[np.arange(len(given)), given] = 0.9
    hard = np.flatnonzero(given == 1)[:300]
    p[hard] = [0.6, 0.35, 0.05]  # class 1: mostly predicted as 0
    h = health.health_summary(p, given, ["a", "b", "c"], n_boot=20)
    assert h.underperforming_classes == ["b"]
    assert h.imbalanced_classes == ["c"]
    assert h.as_dict()["classes"]["b"]["agreement"] == pytest.approx(0.4)
    assert h.as_dict()["dataset_issues"] == "imbalanced: c; underperforming: b"


def test_features_alone_judge_labels_by_the_neighbours_vote(prepared, tmp_path):
    ws, wrong, true = prepared
    emb = np.random.default_rng(2).normal(0, 0.3, (N, 3))
    emb[np.arange(N), true] += 3.0
    pd.DataFrame({"sample_id": read_table(ws.manifest)["sample_id"], "embedding": list(emb)}).to_parquet(
        tmp_path / "emb.parquet")
    audit_json(ws, "--features", tmp_path / "emb.parquet")
    audit = read_table(ws.audit)
    assert set(audit["evidence"]) == {"features"}
    assert read_metadata(ws.audit)["thresholds"]["method"] == "knn"
    score = audit["label_score"].to_numpy()
    assert score[wrong].max() < score[~wrong].min()  # every wrong label has neighbours of another class


def test_run_none_without_files_is_refused(prepared):
    ws, _, _ = prepared
    result = invoke("audit-labels", "-w", ws.root, "--run", "none", code=1)
    assert "--pred-probs" in result.output and not ws.audit.exists()

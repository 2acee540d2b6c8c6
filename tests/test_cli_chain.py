"""End to end: the four CLI stages on sample_data/, with real MTCNN, a real timm model and real Parquet."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fercure.cli import app
from fercure.workspace import read_metadata

runner = CliRunner()

MANIFEST_COLUMNS = {
    "sample_id", "source_path", "label", "split", "face_status", "face_score", "bbox", "landmarks",
    "sharpness", "duplicate_of", "store_index", "reason",
}
AUDIT_COLUMNS = {
    "sample_id", "given_label", "suggested_label", "suggested_label_confidence", "label_score",
    "is_label_issue", "is_ambiguous_issue", "reliability", "uncertainty_entropy", "importance_weight",
    "relabel_count", "face_status",
}
CLEANED_COLUMNS = {"sample_id", "source_path", "given_label", "clean_label", "action", "reason"}


def invoke(*args: object, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


RESULTS: dict = {}  # stage → the CliRunner result of the chain's run (with --json)


@pytest.fixture(scope="module")
def chain(tmp_path_factory, sample_data: Path) -> Path:
    """The four stages, each with --json: stdout holds the summary JSON, progress goes to stderr."""
    ws = tmp_path_factory.mktemp("ws")
    RESULTS["prepare"] = invoke("prepare", sample_data / "images", "-l", sample_data / "labels.csv", "-w", ws,
                                "--image-size", 48, "--device", "cpu", "--json")
    RESULTS["train"] = invoke("train", "-w", ws, "--epochs", 3, "--image-size", 48, "--batch-size", 32,
                              "--device", "cpu", "--json")
    RESULTS["audit-labels"] = invoke("audit-labels", "-w", ws, "--json")
    RESULTS["export-cleaned"] = invoke("export-cleaned", "-w", ws, "-o", ws / "cleaned.parquet", "--json")
    return ws


def test_json_summaries_name_outputs_and_next_command(chain: Path):
    """stdout is exactly one JSON object per stage; it says where the outputs are and what comes next."""
    out = {stage: json.loads(r.stdout) for stage, r in RESULTS.items()}
    assert out["prepare"]["n_samples"] == 84 and out["prepare"]["next"] == f"fercure train -w {chain}"
    assert str(chain / "manifest.parquet") in out["prepare"]["outputs"]
    assert out["train"]["epochs"] == 3 and out["train"]["next"] == f"fercure audit-labels -w {chain}"
    assert out["train"]["outputs"] == [str(chain / "runs" / out["train"]["run_id"])]
    assert out["audit-labels"]["n_samples"] == 84 and "per_class" in out["audit-labels"]
    assert out["audit-labels"]["next"].startswith(f"fercure export-cleaned -w {chain}")
    assert sum(out["export-cleaned"]["actions"].values()) == 84
    assert out["export-cleaned"]["decided_by_reviewer"] == 0 and out["export-cleaned"]["decision_problems"] == []
    assert "--decisions" in out["audit-labels"]["next"]
    # the verdict's two parts under machine keys: the ranking with its interval, the suggestions unmeasured
    rk, sg = out["audit-labels"]["ranking"], out["audit-labels"]["suggestions"]
    assert rk == {} or (rk["measured_on"] == "planted" and rk["auroc_lo"] <= rk["auroc"] <= rk["auroc_hi"])
    assert sg == {"cards": 0, "chosen": 0, "judged": "not enough cards"}  # no share: not measured, left out
    assert "read_parquet" in out["export-cleaned"]["next"]


def test_train_logs_each_epoch_when_output_is_not_a_terminal(chain: Path):
    """Under CliRunner the output is not a terminal: one line per epoch, with loss and accuracy,
    on stderr (stdout stays the JSON)."""
    err = RESULTS["train"].stderr
    for k in (1, 2, 3):
        assert re.search(rf"train \S*: epoch {k}/3 loss \d+\.\d+ accuracy \d\.\d+|train: epoch {k}/3 loss", err), err[-2000:]
    assert "epoch 1/3" not in RESULTS["train"].stdout and len(RESULTS["train"].stdout.strip().splitlines()) == 1


def test_human_summary_names_the_next_command(chain: Path):
    result = invoke("export-cleaned", "-w", chain, "-o", chain / "again.csv", "--format", "csv")
    assert "Next:" in result.output and "read_csv" in result.output
    assert "Outputs:" in result.output and "again.csv.provenance.json" in result.output


def labels_csv(sample_data: Path) -> pd.DataFrame:
    return pd.read_csv(sample_data / "labels.csv")


def test_manifest_keeps_every_row_and_label(chain: Path, sample_data: Path):
    manifest = pd.read_parquet(chain / "manifest.parquet")
    given = labels_csv(sample_data)
    assert MANIFEST_COLUMNS <= set(manifest.columns)
    assert len(manifest) == len(given)
    assert manifest["sample_id"].is_unique
    merged = given.merge(manifest, left_on="path", right_on="source_path", how="left")
    assert (merged["label_x"] == merged["label_y"]).all()
    crops = np.load(chain / "faces" / "crops.npy", mmap_mode="r")
    assert crops.shape[1:] == (48, 48, 3) and crops.dtype == np.uint8
    assert crops.shape[0] == int((manifest["store_index"] >= 0).sum())
    assert set(manifest["face_status"]) <= {
        "ok", "no_face", "multiple_faces", "low_confidence", "too_small", "unreadable", "duplicate"}
    assert read_metadata(chain / "manifest.parquet")["classes"] == sorted(given["label"].unique())


def test_train_writes_run(chain: Path):
    run_id = (chain / "runs" / "LATEST").read_text().strip()
    run = chain / "runs" / run_id
    for name in ("config.json", "model.pt", "dynamics.parquet", "predictions.parquet"):
        assert (run / name).exists(), name
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 3
    dyn = pd.read_parquet(run / "dynamics.parquet")
    preds = pd.read_parquet(run / "predictions.parquet")
    assert {"sample_id", "epoch", "p_given", "margin", "importance_weight", "predicted", "relabeled"} <= set(dyn.columns)
    # one row per trained sample per epoch; planted-flip and probe samples are left out (they were
    # not trained with their given label)
    real = ~(preds["planted"] | preds["probe"])
    assert preds["probe"].sum() >= 7 and set(dyn["sample_id"]) == set(preds.loc[real, "sample_id"])
    assert len(dyn) == 3 * int(real.sum()) * config.get("ensemble", 1)
    assert np.all((dyn["p_given"] >= 0) & (dyn["p_given"] <= 1))


def test_audit_one_row_per_sample(chain: Path, sample_data: Path):
    audit = pd.read_parquet(chain / "audit.parquet")
    manifest = pd.read_parquet(chain / "manifest.parquet")
    assert AUDIT_COLUMNS <= set(audit.columns)
    assert sorted(audit["sample_id"]) == sorted(manifest["sample_id"])
    lq = audit["label_score"].dropna()
    assert len(lq) > 0 and lq.between(0, 1).all()
    m = audit.merge(manifest[["sample_id", "label"]], on="sample_id")
    assert (m["given_label"] == m["label"]).all()
    # the report is this audit's: its run, its sample count, and its data for the review script
    html = (chain / "report.html").read_text(encoding="utf-8")
    run_id = read_metadata(chain / "audit.parquet")["run_id"]
    data = json.loads(re.search(r'<script type="application/json" id="fercure-data">(.*?)</script>', html, re.S)[1])
    assert data["run_id"] == run_id and data["key"] == f"{run_id}:{len(audit)}"
    assert f'<span class="kpi"><b>{len(audit)}</b>samples</span>' in html


def test_export_keeps_every_given_label(chain: Path, sample_data: Path):
    cleaned = pd.read_parquet(chain / "cleaned.parquet")
    given = labels_csv(sample_data)
    assert CLEANED_COLUMNS <= set(cleaned.columns)
    assert len(cleaned) == len(given)
    m = given.merge(cleaned, left_on="path", right_on="source_path")
    assert len(m) == len(given)
    assert (m["label"] == m["given_label"]).all()
    assert set(cleaned["action"]) <= {"keep", "relabel", "drop", "review"}
    changed = cleaned["action"] != "keep"
    assert (cleaned.loc[changed, "reason"].str.len() > 0).all()
    relabel = cleaned["action"] == "relabel"
    assert (cleaned.loc[relabel, "clean_label"] != cleaned.loc[relabel, "given_label"]).all()
    meta = read_metadata(chain / "cleaned.parquet")
    assert meta["policy"] == "relabel" and meta["run_id"] and "fercure_version" in meta


def test_export_refuses_to_overwrite(chain: Path):
    out = chain / "cleaned.parquet"
    before = out.read_bytes()
    result = invoke("export-cleaned", "-w", chain, "-o", out, code=1)
    assert "--force" in result.output
    assert out.read_bytes() == before
    invoke("export-cleaned", "-w", chain, "-o", out, "--force", "--policy", "drop")
    assert read_metadata(out)["policy"] == "drop"


def test_missing_columns_exit_1_names_file(tmp_path: Path, sample_data: Path):
    bad = tmp_path / "labels.csv"
    bad.write_text("file_name,emotion_code\nangry/x.png,3\n")
    result = invoke("prepare", sample_data / "images", "-l", bad, "-w", tmp_path / "ws", code=1)
    assert "labels.csv" in result.output and "Traceback" not in result.output


def test_usage_error_exit_2(tmp_path: Path):
    invoke("train", "-w", tmp_path, "--no-such-option", code=2)


def test_workspace_inside_input_refused(tmp_path: Path, sample_data: Path):
    root = tmp_path / "data"
    (root / "happy").mkdir(parents=True)
    img = next((sample_data / "images" / "happy").glob("*.png"))
    (root / "happy" / img.name).write_bytes(img.read_bytes())
    result = invoke("prepare", root, "-w", root / "ws", "--device", "cpu", code=1)
    assert "inside the input" in result.output
    assert not (root / "ws").exists()


def test_stage_out_of_order_explains(tmp_path: Path):
    result = invoke("audit-labels", "-w", tmp_path, code=1)
    assert "fercure" in result.output and "Traceback" not in result.output


def test_export_never_writes_into_the_input(chain: Path, sample_data: Path):
    target = sample_data / "images" / "cleaned.parquet"
    result = invoke("export-cleaned", "-w", chain, "-o", target, code=1)
    assert "inside the input folder" in result.output
    assert not target.exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_clear_error(chain: Path):
    runs_before = sorted((chain / "runs").iterdir())
    result = invoke("train", "-w", chain, "--device", "cuda", "--epochs", 1, code=1)
    assert "no CUDA device" in result.output and "Traceback" not in result.output
    assert sorted((chain / "runs").iterdir()) == runs_before

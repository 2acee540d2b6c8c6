"""A workspace holding one input's work (or a person's review) is not replaced by another input's."""

from __future__ import annotations

import pandas as pd
from conftest import make_small_workspace
from typer.testing import CliRunner

from fercure.cli import app
from fercure.workspace import read_metadata, read_table, write_table

runner = CliRunner()


def _prepared_from(ws, root):
    man = read_table(ws.manifest)
    write_table(man, ws.manifest, {**read_metadata(ws.manifest), "input_root": str(root.resolve())})


def test_prepare_of_another_input_into_a_workspace_is_refused_and_says_what_it_would_replace(tmp_path):
    ws, _ = make_small_workspace(tmp_path / "ws", 12)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _prepared_from(ws, tmp_path / "a")
    (ws.run_dir("r1")).mkdir(parents=True)
    before = ws.manifest.read_bytes()
    r = runner.invoke(app, ["prepare", str(tmp_path / "b"), "-w", str(ws.root)])
    text = " ".join(r.output.split())
    assert r.exit_code == 1, r.output
    assert f"was prepared from {(tmp_path / 'a').resolve()}" in text
    assert "its manifest and face crops (12 samples" in text and "1 training run(s)" in text and "--new-input" in text
    assert ws.manifest.read_bytes() == before


def test_demo_refuses_a_workspace_holding_reviewed_work(tmp_path, sample_data):
    ws, _ = make_small_workspace(tmp_path / "ws", 12)
    _prepared_from(ws, sample_data / "images")  # an earlier demo's workspace, reviewed since
    ws.run_dir("r2").mkdir(parents=True)
    pd.DataFrame({"sample_id": ["x"], "action": ["keep"]}).to_parquet(ws.run_dir("r2") / "trusted.parquet")
    pd.DataFrame({"sample_id": ["x", "y"], "decided_by": ["reviewer", "fercure"]}).to_parquet(ws.root / "cleaned.parquet")
    before = {p: p.read_bytes() for p in (ws.manifest, ws.root / "cleaned.parquet")}
    r = runner.invoke(app, ["demo", "--data", str(sample_data), "-w", str(ws.root), "--epochs", "1"])
    text = " ".join(r.output.split())
    assert r.exit_code == 1, r.output
    assert "holds a person's review" in text and "run r2, trained with reviewed decisions" in text
    assert "cleaned.parquet (1 row(s) decided by a reviewer)" in text
    assert {p: p.read_bytes() for p in before} == before


def test_demo_over_its_own_damaged_manifest_rebuilds_it_instead_of_a_traceback(tmp_path, sample_data):
    ws = tmp_path / "ws"
    args = ["demo", "--data", str(sample_data), "-w", str(ws), "--limit", "3", "--epochs", "1",
            "--image-size", "32", "--batch-size", "16", "--device", "cpu", "--backbone", "test_resnet"]
    assert runner.invoke(app, args).exit_code == 0
    manifest = ws / "manifest.parquet"
    manifest.write_bytes(manifest.read_bytes()[:100])  # truncated: an interrupted copy, a full disk
    r = runner.invoke(app, args)
    assert r.exit_code == 0, (r.output, r.exception)
    assert len(read_table(manifest)) == 3 * pd.read_csv(sample_data / "labels.csv")["label"].nunique()

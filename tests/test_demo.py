"""`fercure demo` end to end on a few sample images: four stages, then the scorecard."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from fercure.cli import app
from fercure.scorecard import KEYS

runner = CliRunner()


def test_demo_writes_a_scorecard(tmp_path: Path, sample_data: Path):
    ws = tmp_path / "ws"
    result = runner.invoke(app, ["demo", "-w", str(ws), "--data", str(sample_data), "--limit", "6",
                                 "--epochs", "2", "--image-size", "32", "--batch-size", "16", "--device", "cpu"])
    assert result.exit_code == 0, (result.output, result.exception)
    used = pd.read_csv(ws / "demo-labels.csv")
    given = pd.read_csv(sample_data / "labels.csv")
    assert len(used) == 6 * given["label"].nunique()
    assert (used.groupby("label").size() == 6).all()
    assert set(used["path"]) <= set(given["path"])
    assert len(pd.read_parquet(ws / "cleaned.parquet")) == len(used)

    card = json.loads((ws / "scorecard.json").read_text())
    assert set(KEYS) <= set(card)
    reference = pd.read_csv(sample_data / "ferplus_reference.csv")
    scored = reference[reference["path"].isin(used["path"])]
    assert card["n_scored"] == len(used)
    assert card["n_known_errors"] == int(scored["clear_error"].sum())
    assert card["n_clean"] == int(scored["clean"].sum())
    assert "Scorecard" in result.output and "known errors found" in result.output
    report = ws / "report.html"
    assert report.exists() and "fercure-data" in report.read_text()
    assert f"Review report: {report.resolve()}" in " ".join(result.output.split()).replace("\n", "")
    assert not any(p.name.endswith(".tmp") for p in ws.rglob("*"))
    config = json.loads(next((ws / "runs").glob("*/config.json")).read_text())
    assert config["backbone"] == "resnet18" and config["backbone_args"] == {"channels": [32, 64, 128, 256]}


def test_demo_backbone_args_replace_the_half_width_default(tmp_path: Path, sample_data: Path):
    ws = tmp_path / "ws"
    result = runner.invoke(app, ["demo", "-w", str(ws), "--data", str(sample_data), "--limit", "3",
                                 "--epochs", "1", "--image-size", "32", "--batch-size", "16", "--device", "cpu",
                                 "--backbone", "test_resnet", "--backbone-arg", "stem_width=8"])
    assert result.exit_code == 0, (result.output, result.exception)
    config = json.loads(next((ws / "runs").glob("*/config.json")).read_text())
    assert config["backbone"] == "test_resnet" and config["backbone_args"] == {"stem_width": 8}


def test_demo_without_reference_skips_the_scorecard(tmp_path: Path, capsys):
    from fercure.cli import _demo_scorecard

    _demo_scorecard(tmp_path, tmp_path / "ws")       # no ferplus_reference.csv, no audit either
    out = " ".join(capsys.readouterr().out.split())
    assert "Scorecard skipped" in out and "ferplus_reference.csv not found" in out
    assert not (tmp_path / "ws" / "scorecard.json").exists()

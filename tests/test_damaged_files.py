"""A damaged workspace file (truncated, overwritten) is named with the command that rebuilds it, and
`prepare` re-run repairs its own files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fercure.cli import app
from fercure.workspace import Workspace, read_table

runner = CliRunner()


def invoke(*args: object, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.fixture(scope="module")
def prepared_once(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("damaged")
    data = base / "data"
    for k, cls in enumerate(("happy", "sad", "happy", "sad")):
        (data / cls).mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(k).integers(0, 256, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(data / cls / f"{k}.png")
    invoke("prepare", data, "-w", base / "ws", "--device", "cpu", "--image-size", 32)
    return data, base / "ws"


@pytest.fixture()
def ws(prepared_once, tmp_path: Path) -> Workspace:
    return Workspace(shutil.copytree(prepared_once[1], tmp_path / "ws"))


@pytest.mark.parametrize("stage", [["train", "--epochs", "1"], ["audit-labels"], ["export-cleaned", "-o", "x.parquet"]])
def test_a_truncated_manifest_is_named_with_its_rebuild_command(ws: Workspace, stage, tmp_path: Path):
    truncate(ws.manifest)
    if stage[0] == "audit-labels":  # audit needs a finished run to reach the manifest
        (ws.runs_dir).mkdir(exist_ok=True)
        ws.set_latest_run("r1")
    if stage[0] == "export-cleaned":
        stage = [stage[0], "-o", str(tmp_path / "x.parquet")]
        ws.audit.write_bytes(b"PAR1 not a table PAR1")  # export needs an audit to reach the manifest
    result = invoke(*stage, "-w", ws.root, code=1)
    assert "manifest.parquet is damaged" in result.output and "fercure prepare" in result.output
    assert "Traceback" not in result.output


def test_a_damaged_audit_names_audit_labels(ws: Workspace, tmp_path: Path):
    ws.audit.write_bytes(b"PAR1 not a table PAR1")
    result = invoke("export-cleaned", "-w", ws.root, "-o", tmp_path / "x.parquet", code=1)
    assert "audit.parquet is damaged" in result.output and "fercure audit-labels" in result.output


def test_a_truncated_crop_store_is_named_with_its_rebuild_command(ws: Workspace):
    truncate(ws.store)
    for stage in (["train", "--epochs", "1"], ["audit-labels"]):
        result = invoke(*stage, "-w", ws.root, code=1)
        assert "crops.npy is damaged" in result.output and "fercure prepare" in result.output
    assert not ws.runs_dir.exists()  # refused before a run folder was made


def test_a_broken_config_under_resume_is_named(ws: Workspace):
    run = ws.run_dir("20260101-0000-resnet18-ab12")
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"not read: the config is checked first")
    (run / "config.json").write_text('{"epochs": 3,')
    result = invoke("train", "-w", ws.root, "--resume", "--epochs", 1, code=1)
    assert "config.json is damaged" in result.output and "without --resume" in result.output


@pytest.mark.parametrize("damage", ["manifest", "store", "both"])
def test_prepare_rerun_repairs_its_own_files(prepared_once, ws: Workspace, damage: str):
    data, _ = prepared_once
    reference = read_table(ws.manifest)
    crops = np.load(ws.store)
    if damage in ("manifest", "both"):
        truncate(ws.manifest)
    if damage in ("store", "both"):
        truncate(ws.store)
    result = invoke("prepare", data, "-w", ws.root, "--device", "cpu", "--image-size", 32)
    assert "is damaged; prepare processes every sample again" in result.output
    assert read_table(ws.manifest)["sample_id"].tolist() == reference["sample_id"].tolist()
    assert np.array_equal(np.load(ws.store), crops)

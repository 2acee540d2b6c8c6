"""Outputs never destroy anything: one rule (fercure.workspace.check_output_path) for every path a
user can name: audit-labels --report, export-cleaned -o, the workspace folder, train --pretrained."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fercure.cli import app
from fercure.stages.prepare import run_prepare
from fercure.workspace import Workspace, WorkspaceError, read_metadata, read_table, write_table
from test_export import make_workspace

runner = CliRunner()


def invoke(*args: object, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def prepared(tmp_path: Path) -> tuple[Workspace, Path, Path]:
    """A synthetic audited-ready workspace whose manifest records an input root and a label file
    outside it, as prepare does."""
    data = tmp_path / "data"
    data.mkdir()
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nfaces/a.png,happy\n")
    ws = make_workspace(tmp_path / "ws")
    meta = {**read_metadata(ws.manifest), "input_root": str(data.resolve()), "labels_file": str(labels.resolve())}
    write_table(read_table(ws.manifest), ws.manifest, meta)
    return ws, data, labels


def test_report_never_replaces_the_label_file_or_the_workspace_files(prepared):
    ws, data, labels = prepared
    before = digest(labels)
    for target, why in ((labels, "the label file"), (ws.manifest, "manifest"), (ws.audit, "audit table"),
                        (ws.run_dir("r1") / "config.json", "training runs"), (data / "r.html", "input folder")):
        result = invoke("audit-labels", "-w", ws.root, "--report", target, "--force", code=1)
        assert why in result.output and str(target.name) in result.output and "Traceback" not in result.output
    assert digest(labels) == before and not (data / "r.html").exists() and not ws.audit.exists()


def test_report_needs_force_to_overwrite_but_the_default_report_is_rewritten(prepared, tmp_path: Path):
    ws, _, _ = prepared
    invoke("audit-labels", "-w", ws.root)
    invoke("audit-labels", "-w", ws.root)  # WS/report.html is the workspace's own: rewritten
    invoke("audit-labels", "-w", ws.root, "--report", ws.report)
    mine = tmp_path / "mine.html"
    mine.write_text("my notes")
    result = invoke("audit-labels", "-w", ws.root, "--report", mine, code=1)
    assert "--force" in result.output and mine.read_text() == "my notes"
    invoke("audit-labels", "-w", ws.root, "--report", mine, "--force")
    assert mine.read_text().startswith("<")


def test_no_output_replaces_a_device_a_fifo_or_a_folder(prepared, tmp_path: Path):
    ws, _, _ = prepared
    invoke("audit-labels", "-w", ws.root)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target, kind in (("/dev/null", "character device"), (fifo, "FIFO"), (tmp_path, "folder")):
        r1 = invoke("audit-labels", "-w", ws.root, "--report", target, "--force", code=1)
        r2 = invoke("export-cleaned", "-w", ws.root, "-o", target, "--force", code=1)
        assert kind in r1.output and kind in r2.output
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and stat.S_ISFIFO(fifo.stat().st_mode)


def test_export_never_replaces_the_label_file_even_with_force(prepared, tmp_path: Path):
    ws, data, labels = prepared
    invoke("audit-labels", "-w", ws.root)
    before = digest(labels)
    for target in (labels, ws.report, ws.run_dir("r1") / "predictions.parquet", data / "c.csv"):
        invoke("export-cleaned", "-w", ws.root, "-o", target, "--force", "--format", "csv", code=1)
    assert digest(labels) == before and not (data / "c.csv").exists()
    # the CSV's provenance sidecar falls under the same rule
    os.mkfifo(tmp_path / "out.csv.provenance.json")
    result = invoke("export-cleaned", "-w", ws.root, "-o", tmp_path / "out.csv", "--format", "csv", "--force", code=1)
    assert "out.csv.provenance.json" in result.output and not (tmp_path / "out.csv").exists()
    invoke("export-cleaned", "-w", ws.root, "-o", tmp_path / "cleaned.csv", "--format", "csv")


def test_workspace_is_never_the_label_file_or_a_device(tmp_path: Path):
    data = tmp_path / "data"
    (data / "happy").mkdir(parents=True)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nhappy/a.png,happy\n")
    before = digest(labels)
    with pytest.raises(WorkspaceError, match="label file"):
        run_prepare(data, labels, labels_file=labels, device="cpu")
    with pytest.raises(WorkspaceError, match="not a folder"):
        run_prepare(data, "/dev/null", labels_file=labels, device="cpu")
    with pytest.raises(WorkspaceError, match="inside the input folder"):
        run_prepare(data, data / "ws", labels_file=labels, device="cpu")
    # a label file inside the workspace is fine, but not as one of the files prepare writes
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "manifest.parquet").write_bytes(labels.read_bytes())
    with pytest.raises(WorkspaceError, match="label file"):
        run_prepare(data, ws, labels_file=ws / "manifest.parquet", device="cpu")
    assert digest(labels) == before and not (data / "ws").exists()


def test_pretrained_must_be_a_regular_file(tmp_path: Path):
    fifo = tmp_path / "weights.pt"
    os.mkfifo(fifo)  # opening it would block until a writer came: it must be refused unopened
    result = invoke("train", "-w", tmp_path / "ws", "--pretrained", fifo, code=1)
    assert "FIFO" in result.output and "weights.pt" in result.output
    result = invoke("train", "-w", tmp_path / "ws", "--pretrained", "/dev/zero", code=1)
    assert "character device" in result.output
    result = invoke("train", "-w", tmp_path / "ws", "--pretrained", tmp_path / "none.pt", code=1)
    assert "does not exist" in result.output

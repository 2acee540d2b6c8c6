"""One writing command per workspace (fercure.workspace.workspace_lock), the stale-temp cleanup of
run folders, and what Ctrl-C during train tells the user to run."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fercure.cli import app
from fercure.workspace import Workspace, WorkspaceLockedError, claim, workspace_lock

runner = CliRunner()


def invoke(*args: object, code: int):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    assert "Traceback" not in result.output
    return result


def commands(ws: Path, data: Path) -> dict[str, list[object]]:
    return {
        "prepare": ["prepare", data, "-w", ws, "--device", "cpu"],
        "train": ["train", "-w", ws, "--device", "cpu"],
        "audit-labels": ["audit-labels", "-w", ws],
        "export-cleaned": ["export-cleaned", "-w", ws, "-o", ws / "cleaned.parquet"],
    }


@pytest.mark.parametrize("command", ["prepare", "train", "audit-labels", "export-cleaned"])
def test_second_command_refused_while_workspace_locked(command: str, tmp_path: Path):
    ws, data = tmp_path / "ws", tmp_path / "data"
    (data / "happy").mkdir(parents=True)
    with workspace_lock(ws):
        assert (ws / ".lock").read_text().strip() == str(os.getpid())
        result = invoke(*commands(ws, data)[command], code=1)
    assert f"Workspace {ws} is in use" in result.output
    assert f"PID {os.getpid()}" in result.output and "--wait" in result.output
    assert not (ws / "manifest.parquet").exists() and not (ws / "runs").exists()
    # released: the lock created the folder and nothing was written there, so it goes (issue 20)
    assert not ws.exists()


def test_lock_refuses_a_second_holder_in_the_library(tmp_path: Path):
    with workspace_lock(tmp_path), pytest.raises(WorkspaceLockedError, match=f"PID {os.getpid()}"), \
            workspace_lock(tmp_path):
        pass
    with workspace_lock(tmp_path):  # released on exit
        pass


def test_stale_lock_file_does_not_block(tmp_path: Path):
    # A holder that died (even by SIGKILL) leaves the file with its PID, but the kernel dropped
    # its flock: nothing holds it now.
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / ".lock").write_text("999999999\n")
    with workspace_lock(ws):
        assert (ws / ".lock").read_text().strip() == str(os.getpid())
    result = invoke("train", "-w", ws, "--device", "cpu", code=1)
    assert "in use" not in result.output and "manifest.parquet does not exist" in result.output


def test_wait_takes_the_lock_once_released(tmp_path: Path):
    ws = tmp_path / "ws"
    holder = contextlib.ExitStack()
    holder.enter_context(workspace_lock(ws))
    timer = threading.Timer(0.2, holder.close)
    timer.start()
    try:
        result = invoke("train", "-w", ws, "--device", "cpu", "--wait", code=1)
    finally:
        timer.join()
    assert "in use" not in result.output and "manifest.parquet does not exist" in result.output


def test_missing_workspace_is_not_created_by_the_lock(tmp_path: Path):
    result = invoke("audit-labels", "-w", tmp_path / "nowhere", code=1)
    assert "does not exist" in result.output and not (tmp_path / "nowhere").exists()


def test_stale_temps_in_run_folders_are_removed(tmp_path: Path):
    ws = Workspace(tmp_path / "ws")
    claim(ws.root)  # a workspace fercure made (issue 20: never cleaned up elsewhere)
    run = ws.run_dir("20260101-000000-resnet18-ab12")
    (run / "members").mkdir(parents=True)
    stale = [run / ".checkpoint.pt.fercure-k3j2x9.tmp", run / "members" / ".g0m1.pt.fercure-q1w2e3.tmp",
             ws.root / ".manifest.parquet.fercure-a1b2c3.tmp"]
    keep = [run / "checkpoint.pt", run / "config.json", run / "members" / "g0m1.pt"]
    for p in stale + keep:
        p.write_bytes(b"x")
    # through the train command: it cleans up before it finds there is nothing to train on
    invoke("train", "-w", ws.root, "--device", "cpu", code=1)
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in keep)


def test_interrupted_train_says_resume(tmp_path: Path, monkeypatch):
    import fercure.stages.train as train_stage

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_stage, "run_train", interrupted)
    ws = tmp_path / "ws"
    result = invoke("train", "-w", ws, "--device", "cpu", code=130)
    assert f"fercure train -w {ws} --resume" in result.output
    assert "same command" not in result.output



def test_unwritable_workspace_is_a_clear_error(tmp_path: Path, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)  # a read-only workspace, also when tests run as root
    ws = tmp_path / "ws"
    ws.mkdir()
    result = invoke("train", "-w", ws, "--device", "cpu", code=1)
    assert f"Cannot create the lock file {ws / '.lock'} (Permission denied)" in result.output

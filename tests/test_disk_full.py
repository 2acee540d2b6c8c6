"""A full disk (ENOSPC, EDQUOT) is a WorkspaceError naming the file, how much it needs and how much
is free, never a traceback or a SIGBUS, and leaves no temporary file behind."""

from __future__ import annotations

import errno
import os
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fercure import workspace
from fercure.cli import app
from fercure.store import write_store
from fercure.workspace import (
    Workspace,
    WorkspaceError,
    atomic_write_text,
    is_disk_full,
    write_table,
)

Usage = namedtuple("Usage", "total used free")


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_table_write_on_a_full_disk(tmp_path: Path, monkeypatch):
    target = tmp_path / "t.parquet"
    write_table(pd.DataFrame({"a": [1]}), target)
    before = target.read_bytes()

    def partial_then_full(table, where, **kwargs):
        Path(where).write_bytes(b"x" * (3 * 2**20 + 1))  # 3 MB and a byte got written
        raise OSError("IOError: [Errno 28] No space left on device")  # pyarrow: errno in the text only

    monkeypatch.setattr(workspace.pq, "write_table", partial_then_full)
    with pytest.raises(WorkspaceError, match=r"Disk full while writing .*t\.parquet \(needs more than 4 MB; "
                                             r"[\d,]+ MB free on that filesystem\)"):
        write_table(pd.DataFrame({"a": [2]}), target)
    assert temps(tmp_path) == [] and target.read_bytes() == before  # the old file is untouched


def test_fsync_over_quota(tmp_path: Path, monkeypatch):
    target = tmp_path / "LATEST"
    target.write_text("old\n")

    def over_quota(fd):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(workspace.os, "fsync", over_quota)
    with pytest.raises(WorkspaceError, match=f"Disk full while writing {target}"):
        atomic_write_text(target, "new\n")
    assert temps(tmp_path) == [] and target.read_text() == "old\n"


def test_other_errors_pass_through(tmp_path: Path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(workspace.pq, "write_table", denied)
    with pytest.raises(PermissionError):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet")
    assert temps(tmp_path) == []
    assert is_disk_full(OSError(errno.ENOSPC, "x")) and not is_disk_full(OSError(errno.EACCES, "x"))


def test_prepare_part_np_save_on_a_full_disk(tmp_path: Path, monkeypatch):
    from fercure.prepare import facepass

    monkeypatch.setattr(facepass.np, "save", enospc)
    with pytest.raises(WorkspaceError, match=r"Disk full while writing .*part-00003\.npy"):
        facepass._save_part(tmp_path / "parts", 3, pd.DataFrame({"a": [1]}), np.zeros((2, 8, 8, 3), np.uint8))
    assert temps(tmp_path) == [] and not (tmp_path / "parts" / "part-00003.parquet").exists()


def test_store_refused_up_front_when_it_cannot_fit(tmp_path: Path, monkeypatch):
    # 100 crops of 112 px: 3,763,200 bytes + header -> "about 4 MB"; 1 MB free
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))
    consumed = []

    def chunks():
        consumed.append(1)
        yield np.zeros((100, 112, 112, 3), np.uint8)

    store = tmp_path / "faces" / "crops.npy"
    with pytest.raises(WorkspaceError, match=r"Disk full while writing .*crops\.npy \(needs about 4 MB; 1 MB free"):
        write_store(store, chunks(), 100, 112)
    assert consumed == [] and list((tmp_path / "faces").iterdir()) == []  # no memmap was ever created


def test_store_space_taken_meanwhile_fails_cleanly(tmp_path: Path, monkeypatch):
    # The free-space check passed, then the blocks cannot be allocated: ENOSPC, not SIGBUS mid-write.
    if not hasattr(os, "posix_fallocate"):
        pytest.skip("no posix_fallocate on this platform")
    monkeypatch.setattr(os, "posix_fallocate", enospc)
    store = tmp_path / "crops.npy"
    with pytest.raises(WorkspaceError, match=r"Disk full while writing .*crops\.npy \(needs about 1 MB"):
        write_store(store, iter([np.zeros((4, 16, 16, 3), np.uint8)]), 4, 16)
    assert temps(tmp_path) == [] and not store.exists()


def test_store_still_written_with_room(tmp_path: Path):
    crops = np.arange(4 * 16 * 16 * 3, dtype=np.uint64).astype(np.uint8).reshape(4, 16, 16, 3)
    write_store(tmp_path / "crops.npy", iter([crops[:3], crops[3:]]), 4, 16)
    assert np.array_equal(np.load(tmp_path / "crops.npy"), crops)  # the reservation changed no byte


def test_cli_train_disk_full_exit_1(tmp_path: Path, monkeypatch):
    ws = Workspace(tmp_path / "ws")
    n = 8
    write_table(pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "label": ["happy", "sad"] * (n // 2),
                              "face_status": "ok", "store_index": range(n)}), ws.manifest)
    write_store(ws.store, iter([np.zeros((n, 16, 16, 3), np.uint8)]), n, 16)
    monkeypatch.setattr(workspace.os, "fsync", enospc)  # config.json, the first file of a run
    result = CliRunner().invoke(app, ["train", "-w", str(ws.root), "--device", "cpu", "--image-size", "16"])
    assert result.exit_code == 1, (result.output, result.exception)
    assert "Disk full while writing" in result.output and "config.json" in result.output
    assert "MB free on that filesystem" in result.output and "Traceback" not in result.output
    assert temps(ws.root) == []


def test_torch_style_error_on_a_full_filesystem(tmp_path: Path, monkeypatch):
    # torch.save reports a short write as RuntimeError("... unexpected pos 704 vs 598"), no errno
    from fercure.workspace import atomic_path

    def torch_save_short_write(tmp: Path):
        tmp.write_bytes(b"x" * 598)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    target = tmp_path / "checkpoint.pt"
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 * 2**30, 10 * 2**30, 0))
    full = r"Disk full while writing .*checkpoint\.pt \(needs more than 1 MB; 0 MB free"
    with pytest.raises(WorkspaceError, match=full), atomic_path(target) as tmp:
        torch_save_short_write(tmp)
    assert temps(tmp_path) == [] and not target.exists()
    # the same error with room to spare is not a full disk: it passes through unchanged
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 * 2**30, 2**30, 9 * 2**30))
    with pytest.raises(RuntimeError, match="unexpected pos"), atomic_path(target) as tmp:
        torch_save_short_write(tmp)
    assert temps(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Nothing half-written: every output of a command that hit a full disk is the old one or none


def test_a_full_disk_leaves_every_output_whole_or_absent(tmp_path: Path, monkeypatch):
    from test_export import make_workspace

    from fercure import files, layouts
    from fercure.stages import audit as audit_stage
    from fercure.prepare import facepass
    from fercure.stages.audit import run_audit
    from fercure.stages.export import run_export

    # a chunk of prepare on a disk with no block left for even the empty temporary file
    with monkeypatch.context() as m:
        m.setattr(files.tempfile, "mkstemp", enospc)
        with pytest.raises(WorkspaceError, match=r"Disk full while writing .*part-00003\.npy"):
            facepass._save_part(tmp_path / "parts", 3, pd.DataFrame({"a": [1]}), np.zeros((2, 8, 8, 3), np.uint8))
    assert not list((tmp_path / "parts").glob("part-*"))

    ws = make_workspace(tmp_path / "ws")
    run_audit(ws)
    pair = {p: p.read_bytes() for p in (ws.audit, ws.report)}
    # audit-labels: the audit table does not fit -> neither the audit nor the report is replaced
    def audit_full(*args, **kwargs):  # what write_table raises on a full disk
        raise workspace.disk_full(ws.audit)

    with monkeypatch.context() as m:
        m.setattr(audit_stage, "write_table", audit_full)
        with pytest.raises(WorkspaceError, match="Disk full while writing .*audit.parquet"):
            run_audit(ws)
    assert {p: p.read_bytes() for p in pair} == pair and temps(ws.root) == []

    # a CSV export that does not fit leaves no provenance file behind
    out = tmp_path / "cleaned.csv"
    with monkeypatch.context() as m:
        m.setattr(pd.DataFrame, "to_csv", enospc)
        with pytest.raises(WorkspaceError, match="Disk full while writing .*cleaned.csv"):
            run_export(ws, out, fmt="csv")
    assert not out.exists() and not (tmp_path / "cleaned.csv.provenance.json").exists() and temps(tmp_path) == []

    # an imagefolder export: a named error, no partial tree, the earlier export untouched
    folder = tmp_path / "images"
    run_export(ws, folder, fmt="imagefolder")
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    calls = []

    def put_then_full(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            enospc()
        return real_put(*args, **kwargs)

    real_put = layouts._put_image
    with monkeypatch.context() as m:
        m.setattr(layouts, "_put_image", put_then_full)
        with pytest.raises(WorkspaceError, match=f"Disk full while writing {folder}"):
            run_export(ws, folder, fmt="imagefolder", force=True)
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".images.")]

    # a run that failed on a full disk gets no empty FAILED file
    run = ws.run_dir("r9")
    run.mkdir()
    with monkeypatch.context() as m:
        m.setattr(workspace.os, "fsync", enospc)
        assert ws.mark_run_failed("r9", RuntimeError("boom")) is False
    assert not (run / "FAILED").exists() and temps(run) == []

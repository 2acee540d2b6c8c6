"""Atomic writes, stable ids and schema-version checks."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fercure import workspace as wsmod
from fercure.workspace import Workspace, WorkspaceError, atomic_path, read_metadata, read_table, sample_id, write_table


def test_sample_id_depends_on_relative_path_only():
    assert sample_id("happy/a.png") == sample_id(Path("happy") / "a.png")
    assert sample_id("happy/a.png") != sample_id("sad/a.png")
    assert len(sample_id("x")) == 16
    # non-UTF-8 names (kept with surrogateescape) still get an id
    assert sample_id("caf\udce9.png") != sample_id("cafe.png")


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path):
    target = tmp_path / "t.parquet"
    write_table(pd.DataFrame({"a": [1, 2]}), target, {"run": "old"})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a file")
            raise RuntimeError("killed mid-write")
    assert read_table(target)["a"].tolist() == [1, 2]
    assert read_metadata(target)["run"] == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_metadata_round_trip(tmp_path: Path):
    target = tmp_path / "t.parquet"
    write_table(pd.DataFrame({"a": [1]}), target, {"classes": ["a", "b"], "threshold": 0.25})
    meta = read_metadata(target)
    assert meta["classes"] == ["a", "b"] and meta["threshold"] == 0.25
    assert meta["schema_version"] == wsmod.SCHEMA_VERSION


def test_other_schema_version_is_refused(tmp_path: Path):
    target = tmp_path / "manifest.parquet"
    table = pa.table({"a": [1]}).replace_schema_metadata(
        {b"fercure": b'{"fercure_version": "9.0.0", "schema_version": 99}'})
    pq.write_table(table, target)
    with pytest.raises(WorkspaceError, match="schema 99.*Re-run"):
        read_table(target)


def test_missing_stage_output_names_the_command(tmp_path: Path):
    ws = Workspace(tmp_path)
    with pytest.raises(WorkspaceError, match="fercure train"):
        ws.latest_run()
    with pytest.raises(WorkspaceError, match="fercure prepare"):
        ws.require(ws.manifest, "prepare")


@pytest.mark.parametrize("umask,expected", [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path: Path, umask: int, expected: int):
    import os
    import stat

    old = os.umask(umask)
    try:
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet")
        wsmod.atomic_write_text(tmp_path / "report.html", "<html></html>")
    finally:
        os.umask(old)
    for name in ("t.parquet", "report.html"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected


def test_rewriting_a_file_keeps_its_mode(tmp_path: Path):
    import os
    import stat

    target = tmp_path / "report.html"
    wsmod.atomic_write_text(target, "one")
    os.chmod(target, 0o640)
    wsmod.atomic_write_text(target, "two")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and target.read_text() == "two"


# ---------------------------------------------------------------------------------------------
# Output paths


def test_output_rule_refuses_what_would_destroy_something(tmp_path: Path):
    import os

    from fercure.workspace import check_output_path

    data = tmp_path / "data"
    data.mkdir()
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n")
    owned = tmp_path / "ws" / "runs"
    (owned / "r1").mkdir(parents=True)
    protected = {labels: "the label file", owned: "the training runs"}
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    existing = tmp_path / "old.html"
    existing.write_text("keep me")

    def refused(path, match, **kw):
        with pytest.raises(WorkspaceError, match=match):
            check_output_path(path, force=kw.pop("force", True), option="--report", input_root=data,
                              protected=protected, **kw)

    refused(data / "r.html", "inside the input folder")
    refused(labels, "is the label file")
    refused(owned / "r1" / "config.json", "inside it")
    refused(fifo, "FIFO")
    refused("/dev/null", "character device")
    refused(tmp_path, "is a folder")
    refused(existing, "--force", force=False)
    assert existing.read_text() == "keep me" and labels.read_text() == "path,label\n"
    assert check_output_path(existing, force=True) == existing
    assert check_output_path(existing, force=False, may_replace=[existing]) == existing
    assert check_output_path(tmp_path / "new.html", force=False, input_root=data) == tmp_path / "new.html"


def test_atomic_write_never_replaces_a_non_regular_file(tmp_path: Path):
    import os
    import stat

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(WorkspaceError, match="FIFO"):
        wsmod.atomic_write_text(fifo, "x")
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["fifo"]

"""export-cleaned against a hostile user: a stale audit of an older run."""

from __future__ import annotations

import os
import shutil

import pytest
from test_export import make_workspace

from fercure.stages.audit import run_audit
from fercure.stages.export import ExportError, run_export


def test_export_refuses_an_audit_older_than_the_latest_run(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    run_audit(ws, write_report=False)
    shutil.copytree(ws.run_dir("r1"), ws.run_dir("r2"))  # a later run, never audited
    later = os.stat(ws.audit).st_mtime + 10
    os.utime(ws.run_dir("r2") / "predictions.parquet", (later, later))
    ws.set_latest_run("r2")
    with pytest.raises(ExportError, match="audit of run r1, but the latest run, r2, finished after it and was never "
                                          "audited"):
        run_export(ws, tmp_path / "cleaned.parquet")
    assert not (tmp_path / "cleaned.parquet").exists()
    run_audit(ws, run_id="r1", write_report=False)  # auditing the older run again is a choice: it exports
    os.utime(ws.run_dir("r2") / "predictions.parquet", (later - 20, later - 20))
    assert run_export(ws, tmp_path / "cleaned.parquet").run_id == "r1"

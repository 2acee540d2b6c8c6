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


def _with_hashes(ws, hashes):
    from fercure.workspace import read_metadata, read_table, write_table

    man = read_table(ws.manifest)
    write_table(man.assign(content_hash=hashes), ws.manifest, read_metadata(ws.manifest))


def test_export_refuses_an_audit_of_images_swapped_since(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    n = 60
    hashes = [f"{i:032x}" for i in range(n)]
    _with_hashes(ws, hashes)
    run_audit(ws, write_report=False)
    hashes[4], hashes[5] = hashes[5], hashes[4]  # two files swapped, prepare re-run: same paths, labels, crops rows
    _with_hashes(ws, hashes)
    with pytest.raises(ExportError, match=r"2 sample\(s\) have another image file \(content hash\) now"):
        run_export(ws, tmp_path / "cleaned.parquet")


def test_decisions_about_another_image_or_from_another_workspace_are_not_applied(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    hashes = [f"{i:032x}" for i in range(60)]
    _with_hashes(ws, hashes)
    run_audit(ws, write_report=False)
    f = tmp_path / "decisions.csv"
    f.write_text("sample_id,action,label,given_label,source_path,content_hash,run_id\n"
                 f"id010,drop,,,faces/id010.png,{'f' * 12},r1\n"  # the image decided on is not id010's now
                 f"id011,drop,,,faces/id011.png,{hashes[11][:12]},20990101-other-ws\n"  # a run this workspace lacks
                 f"id012,drop,,,faces/id012.png,{hashes[12][:12]},r1\n", encoding="utf-8")
    s = run_export(ws, tmp_path / "cleaned.parquet", decisions=f)
    problems = "\n".join(s.decision_problems)
    assert "row 2: sample id010 ('faces/id010.png') was decided on another image than the one there now" in problems
    assert "row 3: sample id011 was decided on run '20990101-other-ws', which this workspace does not have" in problems
    assert s.decided_by_reviewer == 1  # id012 only

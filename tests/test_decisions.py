"""A reviewer's decisions file → overrides in the export, with decided_by per row."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fercure import decisions as dec
from fercure.cli import app
from fercure.stages.audit import run_audit
from fercure.stages.export import ExportError, read_provenance, run_export
from fercure.workspace import read_table

from test_report import make_workspace, small_audit

CLASSES = ["happy", "sad"]


def audited(tmp_path: Path):
    man, preds, _ = small_audit()
    ws = make_workspace(tmp_path / "ws", man, preds)
    run_audit(ws, write_report=False)
    return ws, read_table(ws.audit)


def parse_text(tmp_path: Path, text: str, audit: pd.DataFrame, name: str = "d.csv") -> dec.Decisions:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return dec.parse(dec.read_decisions(path), file=str(path), sample_ids=audit["sample_id"].tolist(),
                     given=audit["given_label"].tolist(), suggested=audit["suggested_label"].tolist(),
                     classes=CLASSES)


def test_bad_rows_are_named_and_skipped_the_rest_apply(tmp_path):
    _, audit = audited(tmp_path)
    issue = audit.index[audit["is_label_issue"]][0]
    sid, given, sugg = audit.at[issue, "sample_id"], audit.at[issue, "given_label"], audit.at[issue, "suggested_label"]
    clean = audit.index[~audit["is_label_issue"]][0]
    cid = audit.at[clean, "sample_id"]
    other = "sad" if audit.at[clean, "given_label"] == "happy" else "happy"
    text = ("sample_id,action,label,given_label\n"
            f"{sid},accept,,{given}\n"           # row 2: relabel to the suggestion
            "nope,drop,,\n"                      # row 3: unknown sample
            f"{cid},relabel,hapy,\n"             # row 4: unknown class (a typo)
            f"{cid},smash,,\n"                   # row 5: unknown action
            f"{cid},keep,,{other}\n"             # row 6: decided on another label
            f"{cid},accept,,\n"                  # row 7: nothing to accept
            f"{cid},drop,,\n")                   # row 8: valid
    d = parse_text(tmp_path, text, audit)
    where = str(tmp_path / "d.csv")
    msgs = [str(p) for p in d.problems]
    assert [p.row for p in d.problems] == ["row 3", "row 4", "row 5", "row 6", "row 7"]
    assert all(m.startswith(where + " row ") for m in msgs)
    assert "unknown sample_id 'nope'" in msgs[0] and "another workspace" in msgs[0]
    assert "unknown class 'hapy'" in msgs[1] and "Did you mean 'happy'?" in msgs[1]
    assert "unknown action 'smash'" in msgs[2] and "keep, relabel, drop or accept" in msgs[2]
    assert f"labelled {other!r}" in msgs[3] and "review it again" in msgs[3]
    assert "no suggestion to accept" in msgs[4]
    assert d.table[["sample_id", "action", "label", "row"]].values.tolist() == [
        [sid, "relabel", sugg, "row 2"], [cid, "drop", None, "row 8"]]


def test_a_later_row_corrects_an_earlier_one_and_relabel_to_itself_is_keep(tmp_path):
    _, audit = audited(tmp_path)
    sid, given = audit.at[0, "sample_id"], audit.at[0, "given_label"]
    d = parse_text(tmp_path, f"sample_id,action,label\n{sid},drop,\n{sid},relabel,{given}\n", audit)
    assert d.table[["action", "label", "row"]].values.tolist() == [["keep", None, "row 3"]]
    assert [str(p) for p in d.problems] == [f"{tmp_path / 'd.csv'} row 2: sample {sid} is decided again in row 3; "
                                            "the later decision applies."]


def test_json_decisions_both_shapes(tmp_path):
    _, audit = audited(tmp_path)
    sid = audit.at[1, "sample_id"]
    for payload in ([{"sample_id": sid, "action": "drop"}, 7],
                    {"run_id": "r1", "decisions": [{"sample_id": sid, "action": "drop"}, 7]}):
        d = parse_text(tmp_path, json.dumps(payload), audit, "d.json")
        assert d.table["sample_id"].tolist() == [sid] and [p.row for p in d.problems] == ["entry 2"]


@pytest.mark.parametrize("text, expected", [
    ("id,decision\nx,keep\n", "has no sample_id or action column"),
    ("sample_id,label\nx,happy\n", "has no action column"),
    ("[{\"sample_id\": 1,", "is not valid JSON"),
    ("{\"decisions\": 3}", "expected a list of decisions"),
])
def test_files_that_are_not_decisions_are_refused(tmp_path, text, expected):
    path = tmp_path / ("d.json" if text.startswith(("[", "{")) else "d.csv")
    path.write_text(text)
    with pytest.raises(dec.DecisionsFileError, match=expected) as e:
        dec.read_decisions(path)
    assert str(path) in str(e.value)


def test_apply_overrides_actions_and_records_who_decided():
    cleaned = pd.DataFrame({
        "sample_id": ["a", "b", "c", "d"], "given_label": ["happy", "sad", "happy", "sad"],
        "clean_label": ["sad", None, "happy", "sad"], "action": ["relabel", "drop", "review", "keep"],
        "reason": ["r1", "r2", "r3", "r4"], "p_happy": [0.2, 0.5, 0.5, 0.1], "p_sad": [0.8, 0.5, 0.5, 0.9],
    })
    before = cleaned.copy()
    table = pd.DataFrame({"sample_id": ["a", "b", "c"], "action": ["keep", "relabel", "drop"],
                          "label": [None, "happy", None], "row": ["row 2", "row 3", "row 4"]})
    out = dec.apply(cleaned, dec.Decisions(table, file="d.csv"), CLASSES, soft=True)
    pd.testing.assert_frame_equal(cleaned, before)  # the input is not modified
    assert out.columns.tolist()[:5] == ["sample_id", "given_label", "clean_label", "action", "decided_by"]
    assert out["action"].tolist() == ["keep", "relabel", "drop", "keep"]
    assert out["clean_label"].tolist()[:2] == ["happy", "happy"] and pd.isna(out["clean_label"].iat[2])
    assert out["decided_by"].tolist() == ["reviewer"] * 3 + ["fercure"]
    assert out["reason"].iat[0] == "reviewer kept (fercure: relabel; d.csv row 2)"
    assert out["reason"].iat[1] == "reviewer relabelled: sad -> happy (fercure: drop; d.csv row 3)"
    # soft targets follow the decision: one-hot on the label kept or given, NaN where dropped
    assert out[["p_happy", "p_sad"]].iloc[0].tolist() == [1.0, 0.0]
    assert out[["p_happy", "p_sad"]].iloc[1].tolist() == [1.0, 0.0]
    assert out[["p_happy", "p_sad"]].iloc[2].isna().all()
    assert out[["p_happy", "p_sad"]].iloc[3].tolist() == [0.1, 0.9]
    assert dec.apply(cleaned, None, CLASSES)["decided_by"].eq("fercure").all()


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_export_applies_decisions_and_keeps_inputs(tmp_path, fmt):
    ws, audit = audited(tmp_path)
    issue = audit.index[audit["is_label_issue"]][0]
    sid, sugg = audit.at[issue, "sample_id"], audit.at[issue, "suggested_label"]
    keep_id = audit.at[audit.index[~audit["is_label_issue"]][0], "sample_id"]
    decisions = tmp_path / "decisions.csv"
    decisions.write_text(f"sample_id,action,label\n{sid},accept,\n{keep_id},drop,\nghost,keep,\n")
    before = decisions.read_bytes()
    out = tmp_path / f"cleaned.{fmt}"
    s = run_export(ws, out, fmt=fmt, policy="flag", decisions=decisions)
    assert decisions.read_bytes() == before
    cleaned = read_table(out) if fmt == "parquet" else pd.read_csv(out, keep_default_na=False)
    row = cleaned.set_index("sample_id")
    assert row.at[sid, "action"] == "relabel" and row.at[sid, "clean_label"] == sugg
    assert row.at[keep_id, "action"] == "drop"
    assert (cleaned["decided_by"] == "reviewer").sum() == 2 == s.decided_by_reviewer
    assert set(cleaned.loc[cleaned["decided_by"] == "fercure", "action"]) <= {"keep", "review"}  # policy flag
    prov = read_provenance(out)
    assert prov["decided_by"] == {"reviewer": 2, "fercure": len(cleaned) - 2}
    assert prov["decisions"]["file"] == str(decisions) and prov["decisions"]["applied"] == 2
    assert prov["decisions"]["problems"] == [f"{decisions} row 4: unknown sample_id 'ghost': no such sample in this "
                                             "workspace's audit; skipped. Was the file saved from another "
                                             "workspace's report?"]
    assert s.warning.startswith("1 decision(s) were not applied") and "row 4" in s.warning
    assert not list(tmp_path.glob("*.tmp"))


def test_export_without_decisions_says_fercure_decided(tmp_path):
    ws, _ = audited(tmp_path)
    s = run_export(ws, tmp_path / "c.parquet")
    assert read_table(tmp_path / "c.parquet")["decided_by"].eq("fercure").all()
    assert read_provenance(tmp_path / "c.parquet")["decisions"] == {} and s.warning is None


def test_export_refuses_a_bad_decisions_file_or_writing_over_it(tmp_path):
    ws, _ = audited(tmp_path)
    bad = tmp_path / "d.csv"
    bad.write_text("id;what\n")
    with pytest.raises(ExportError, match="has no sample_id or action column"):
        run_export(ws, tmp_path / "c.parquet", decisions=bad)
    with pytest.raises(ExportError, match="is the --decisions file"):
        run_export(ws, bad, fmt="csv", decisions=bad, force=True)
    with pytest.raises(ExportError, match="--decisions .* does not exist"):
        run_export(ws, tmp_path / "c.parquet", decisions=tmp_path / "missing.csv")
    assert not (tmp_path / "c.parquet").exists()


def test_cli_reports_skipped_rows_and_applies_the_rest(tmp_path):
    ws, audit = audited(tmp_path)
    sid = audit.at[0, "sample_id"]
    d = tmp_path / "d.csv"
    d.write_text(f"sample_id,action,label\n{sid},drop,\n{sid}x,drop,\n")
    out = tmp_path / "c.parquet"
    result = CliRunner().invoke(app, ["export-cleaned", "-w", str(ws.root), "-o", str(out), "--decisions", str(d)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "1 decision(s) were not applied" in text and "row 3" in text and f"unknown sample_id '{sid}x'" in text
    assert read_table(out).set_index("sample_id").at[sid, "decided_by"] == "reviewer"
    d.write_text("nothing here\n")
    result = CliRunner().invoke(app, ["export-cleaned", "-w", str(ws.root), "-o", str(out), "--force",
                                      "--decisions", str(d)])
    assert result.exit_code == 1 and "has no sample_id or action column" in " ".join(result.output.split())

"""The table contracts (fercure/schema.py): checked on real Parquet writes and reads, documented
from the same declarations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fercure import schema
from fercure.workspace import META_KEY, SCHEMA_VERSION, TableContractError, read_metadata, read_table, write_table

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["angry", "happy"]


def dynamics_frame(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(n)], "member": 0, "epoch": np.arange(n),
        "given_index": 0, "current_index": 0, "p_given": np.linspace(0.1, 0.9, n), "margin": 0.0,
        "importance_weight": 1.0, "predicted": 1, "relabeled": False,
    })


def test_committed_schema_doc_matches_the_declarations():
    assert (REPO / "docs" / "SCHEMA.md").read_text(encoding="utf-8") == schema.render_markdown(), \
        "docs/SCHEMA.md is stale: run `python -m fercure.schema > docs/SCHEMA.md`"


def test_doc_lists_every_column_of_every_table():
    doc = schema.render_markdown()
    for table in schema.TABLES.values():
        assert f"## {table.name}" in doc
        for col in table.columns:
            assert f"`{col.name}_<class>`" in doc if col.per_class else f"`{col.name}`" in doc


def test_per_class_families_expand_with_the_classes():
    names = schema.AUDIT.arrow_schema(CLASSES).names
    assert "p_angry" in names and "p_happy" in names and "p" not in names
    assert schema.PREDICTIONS.arrow_schema(CLASSES).field("mean_p_happy").type == pa.float32()


def test_write_casts_to_declared_types_and_read_checks_again(tmp_path):
    path = tmp_path / "dynamics.parquet"
    df = dynamics_frame()  # int64 / float64 columns as pandas makes them
    write_table(df, path, {"run_id": "r"}, table=schema.DYNAMICS)
    arrow = pq.read_schema(path)
    assert arrow.field("epoch").type == pa.int32() and arrow.field("p_given").type == pa.float32()
    assert read_metadata(path)["table"] == "dynamics" and read_metadata(path)["schema_version"] == SCHEMA_VERSION
    back = read_table(path)
    assert back["p_given"].tolist() == pytest.approx([0.1, 0.5, 0.9])


def test_missing_column_is_refused_on_write_naming_file_and_column(tmp_path):
    path = tmp_path / "dynamics.parquet"
    with pytest.raises(TableContractError, match=r"dynamics\.parquet.*'margin'"):
        write_table(dynamics_frame().drop(columns="margin"), path, table=schema.DYNAMICS)
    assert not path.exists()


def test_undeclared_column_is_refused(tmp_path):
    with pytest.raises(TableContractError, match=r"'surprise'.*not part of the dynamics"):
        write_table(dynamics_frame().assign(surprise=1), tmp_path / "d.parquet", table=schema.DYNAMICS)


def test_score_outside_zero_one_is_refused_naming_the_row(tmp_path):
    df = dynamics_frame()
    df.loc[2, "p_given"] = 1.5
    with pytest.raises(TableContractError, match=r"'p_given'.*1\.5.*row 2.*0\.\.1"):
        write_table(df, tmp_path / "d.parquet", table=schema.DYNAMICS)


def test_nan_score_is_allowed(tmp_path):
    df = dynamics_frame()
    df.loc[1, "p_given"] = np.nan
    write_table(df, tmp_path / "d.parquet", table=schema.DYNAMICS)
    assert np.isnan(read_table(tmp_path / "d.parquet")["p_given"][1])


def test_value_that_cannot_be_cast_is_refused(tmp_path):
    df = dynamics_frame().astype({"epoch": object})
    df.loc[0, "epoch"] = "first"
    with pytest.raises(TableContractError, match=r"'epoch'.*int32"):
        write_table(df, tmp_path / "d.parquet", table=schema.DYNAMICS)


def test_per_class_columns_follow_the_metadata_classes(tmp_path):
    n = 2
    df = pd.DataFrame({
        "sample_id": ["a", "b"], "source_path": ["x/a.png", "x/b.png"], "split": "train",
        "given_label": ["angry", "happy"], "clean_label": ["angry", None], "action": ["keep", "drop"], "decided_by": ["fercure", "reviewer"],
        "reason": "", "label_score": [0.9, 0.1], "is_label_issue": [False, True],
        "predicted_label": ["angry", "angry"], "suggested_label": ["angry", "angry"],
        "suggested_label_confidence": 0.8, "ambiguous_score": [0.8, 0.6], "is_ambiguous_issue": False,
        "reliability": 0.9, "uncertainty_entropy": 0.1, "face_status": "ok", "store_index": [0, 1],
        "p_angry": [0.9, 0.8], "p_happy": [0.1, 0.2],
    })
    path = tmp_path / "cleaned.parquet"
    write_table(df, path, {"classes": CLASSES}, table=schema.CLEANED)
    assert len(read_table(path)) == n
    with pytest.raises(TableContractError, match="p_happy"):  # a class without its column
        write_table(df.drop(columns="p_happy"), path, {"classes": CLASSES}, table=schema.CLEANED)
    with pytest.raises(TableContractError, match=r"'action'.*'maybe'.*row 1"):
        write_table(df.assign(action=["keep", "maybe"]), path, {"classes": CLASSES}, table=schema.CLEANED)


def test_a_file_changed_after_writing_is_refused_on_read(tmp_path):
    """A table whose metadata names a contract it no longer meets (edited by another tool)."""
    path = tmp_path / "dynamics.parquet"
    write_table(dynamics_frame(), path, table=schema.DYNAMICS)
    data = pq.read_table(path)
    meta = data.schema.metadata
    edited = data.drop_columns(["margin"]).replace_schema_metadata(meta)
    pq.write_table(edited, path)
    with pytest.raises(TableContractError, match=r"dynamics\.parquet is not a valid dynamics table.*'margin'"):
        read_table(path)
    # and an explicit contract is checked even when the file names none
    pq.write_table(edited.replace_schema_metadata({META_KEY: json.dumps({"schema_version": SCHEMA_VERSION}).encode()}), path)
    with pytest.raises(TableContractError):
        read_table(path, table=schema.DYNAMICS)


def test_every_workspace_table_of_a_real_chain_meets_its_contract(tmp_path):
    """The columns the stages write are exactly the declared ones (pipeline tables built in tests
    elsewhere are checked on write; this pins the declared names to the stage code)."""
    from fercure.export import BASE_COLUMNS, CARRIED_COLUMNS
    from fercure.train.dynamics import DYNAMICS_COLUMNS

    assert DYNAMICS_COLUMNS == schema.DYNAMICS.column_names()
    # the policy's columns, the audit's it carries, and decided_by, which fercure.decisions adds after the policy
    assert set(BASE_COLUMNS) | set(CARRIED_COLUMNS) | {"decided_by", "p_angry", "p_happy"} == \
        set(schema.CLEANED.column_names(CLASSES))

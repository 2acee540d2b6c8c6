"""`--json` and the terminal summary stay bounded whatever the class count: a many-class audit
prints a capped table and JSON that says how much it left out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from fercure import cli
from fercure.stages.audit import AuditSummary


def many_class_summary(k: int) -> AuditSummary:
    classes = [f"a_rather_long_class_name_number_{i:04d}" for i in range(k)]
    rng = np.random.default_rng(0)
    per_class = pd.DataFrame({"n": rng.integers(1, 50, k), "n_label_issues": rng.integers(0, 5, k),
                              "n_ambiguous": 0, "mean_label_score": 0.5, "threshold": 0.2}, index=classes)
    tm = pd.DataFrame(rng.integers(0, 3, (k, k)), index=classes, columns=classes)
    return AuditSummary(run_id="r1", n_samples=5000, n_trained=5000, n_label_issues=100, n_ambiguous=3,
                        per_class=per_class, transition_matrix=tm, thresholds={}, face_issues={"duplicate": 2},
                        audit_path=Path("ws/audit.parquet"), report_path=None, seconds=1.0)


def test_json_of_a_many_class_audit_is_bounded_and_says_what_it_left_out(capsys):
    k = 300
    cli._emit(many_class_summary(k), "audit-labels", Path("ws"), True)
    out = capsys.readouterr().out
    assert len(out) < 1_500_000, len(out)  # in full: 500 × 500 cells with their names, ~15 MB
    data = json.loads(out)
    assert len(data["transition_matrix"]) == cli.JSON_MAX_MAP
    assert all(len(row) == cli.JSON_MAX_MAP for row in data["transition_matrix"].values())
    assert data["n_label_issues"] == 100 and data["next"].startswith("fercure export-cleaned")
    assert set(data["left_out"]) == {"per_class", "transition_matrix"}
    assert data["left_out"]["per_class"].startswith(f"{k - cli.JSON_MAX_MAP} entries")


def test_small_summaries_are_untouched():
    data = {"a": [1, 2], "b": {"x": {"y": 1}}, "c": "s"}
    left: dict = {}
    assert cli.bound_json(data, left) == data and left == {}
    big = {"skipped": list(range(cli.JSON_MAX_LIST + 5))}
    left = {}
    assert len(cli.bound_json(big, left)["skipped"]) == cli.JSON_MAX_LIST and left == {"skipped": 5}


def test_terminal_summary_of_a_many_class_audit_is_capped(capsys):
    cli._emit(many_class_summary(300), "audit-labels", Path("ws"), False)
    out = capsys.readouterr().out
    assert len(out) < 200_000, len(out)
    assert "250 more rows" in out and "288 more columns" in " ".join(out.split())

"""The review page stays bounded and consistent: many classes do not grow it with the square of
the class count, counts print as numbers or "–" (never None), one duplicate count, and the command
it prints names the real workspace and the file the page saves."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from fercure.report import render_report
from fercure.report.page import MAX_MATRIX_CLASSES, decisions_stem, export_command, top_classes

from test_report import payload_of


def many_class_audit(k: int, n: int, seed: int = 0) -> tuple[pd.DataFrame, dict, list[str]]:
    rng = np.random.default_rng(seed)
    classes = [f"class_{i:04d}_with_a_fairly_long_name" for i in range(k)]
    given = rng.integers(0, k, n)
    sugg = np.where(rng.random(n) < 0.2, rng.integers(0, k, n), given)
    audit = pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(n)], "source_path": [f"d/{i}.png" for i in range(n)],
        "given_label": [classes[g] for g in given], "suggested_label": [classes[s] for s in sugg],
        "suggested_label_confidence": rng.random(n), "label_score": rng.random(n),
        "is_label_issue": sugg != given, "is_ambiguous_issue": False, "face_status": "ok", "store_index": np.arange(n)})
    tm = np.zeros((k, k), np.int64)
    np.add.at(tm, (given, sugg), 1)
    per_class = {c: {"n": int((given == i).sum()), "n_label_issues": int(((given == i) & (sugg != given)).sum()),
                     "n_ambiguous": 0, "mean_label_score": 0.5, "threshold": 0.2} for i, c in enumerate(classes)}
    stats = {"transition_matrix": tm.tolist(), "per_class": per_class,
             "model_strength": {"verdict": "ok", "message": "fine"}, "threshold_method_used": "retrain"}
    return audit, stats, classes


def test_many_classes_keep_the_page_small_and_say_what_is_left_out():
    audit, stats, classes = many_class_audit(400, 3000)
    html = render_report(audit, stats, classes)
    assert len(html) < 3_000_000, len(html)  # the full 400 × 400 matrix alone was ~25 MB
    assert html.count('class="cell"') == MAX_MATRIX_CLASSES ** 2
    assert f"for the {MAX_MATRIX_CLASSES} of 400 classes" in html
    assert html.count("<figure>") <= 30
    # the review list still offers every class
    assert payload_of(html)["classes"] == classes
    small = render_report(*many_class_audit(8, 300))
    assert "classes with the most flags" not in small and small.count('class="cell"') == 64


def test_top_classes_keeps_the_heaviest_in_class_order():
    assert top_classes(np.array([5, 0, 9, 1, 7]), 3).tolist() == [0, 2, 4]
    assert top_classes(np.array([1, 2]), 5).tolist() == [0, 1]


def test_too_weak_counts_print_as_a_dash_not_none():
    audit, stats, classes = many_class_audit(3, 60)
    for d in stats["per_class"].values():
        d.update(n_label_issues=None, n_ambiguous=None, mean_label_score=None, threshold=None)
    stats["model_strength"] = {"verdict": "too_weak", "message": "too weak"}
    html = render_report(audit, stats, classes)
    assert ">None<" not in html and "None" not in re.sub(r"<script.*?</script>", "", html, flags=re.S)


def test_summary_and_face_table_count_duplicates_alike():
    """Two copies of one original, with another label: both tables say 2 (the list also shows the
    original beside them)."""
    audit, stats, classes = many_class_audit(3, 20)
    audit["duplicate_of"] = ""
    audit.loc[[5, 6], "duplicate_of"] = "s4"
    audit.loc[[5, 6], "face_status"] = "duplicate"
    audit.loc[4, "given_label"], audit.loc[[5, 6], "given_label"] = classes[0], classes[1]
    html = render_report(audit, stats, classes)
    assert '<span class="kpi"><b>2</b>duplicates</span>' in html
    assert re.search(r'duplicate <button[^>]*>show</button></td><td>2</td>', html)


def test_page_names_the_workspace_and_the_saved_file():
    audit, stats, classes = many_class_audit(3, 30)
    html = render_report(audit, stats, classes, run_id="2026 run:1", workspace="/data/my ws",
                         input_root="/data/images")
    assert decisions_stem("2026 run:1") == "decisions-2026_run_1"
    assert ("fercure export-cleaned -w &#x27;/data/my ws&#x27; -o &#x27;/data/my ws/cleaned.parquet&#x27; "
            "--force --decisions decisions-2026_run_1.csv") in html
    data = payload_of(html)
    assert data["stem"] == "decisions-2026_run_1" and data["input_root"] == "/data/images"
    assert "WS -o" not in html
    assert export_command(None, None).endswith("--decisions decisions-report.csv")

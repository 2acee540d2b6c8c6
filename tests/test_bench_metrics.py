"""Metric functions of benchmarks/common.py against values worked out by hand."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "common.py"
_spec = importlib.util.spec_from_file_location("fercure_bench_common", _PATH)
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


# ---- AUROC ------------------------------------------------------------------------------------

def test_auroc_perfect_and_reversed():
    assert common.auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert common.auroc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0


def test_auroc_hand_computed_pairs():
    # positives 0.8, 0.4; negatives 0.6, 0.2, 0.1 → pairs won: 0.8 beats all 3, 0.4 beats 2 → 5/6
    assert common.auroc([1, 0, 1, 0, 0], [0.8, 0.6, 0.4, 0.2, 0.1]) == pytest.approx(5 / 6)


def test_auroc_ties_count_half():
    # positive 0.5 vs negatives 0.5 (tie: 1/2) and 0.2 (win: 1) → 1.5/2
    assert common.auroc([1, 0, 0], [0.5, 0.5, 0.2]) == pytest.approx(0.75)
    assert common.auroc([1, 0], [0.3, 0.3]) == pytest.approx(0.5)


def test_auroc_one_class_is_nan():
    assert math.isnan(common.auroc([1, 1], [0.2, 0.3]))
    assert math.isnan(common.auroc([0, 0], [0.2, 0.3]))


def test_auroc_rejects_nan_scores():
    with pytest.raises(ValueError):
        common.auroc([1, 0], [np.nan, 0.3])


# ---- average precision ------------------------------------------------------------------------

def test_ap_hand_computed():
    # ranked: + (P=1, R=1/2), − , + (P=2/3, R=1) → AP = 1/2·1 + 1/2·2/3 = 5/6
    assert common.average_precision([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(5 / 6)
    # ranked: −, +, −, + → 1/2·1/2 + 1/2·2/4 = 1/2
    assert common.average_precision([0, 1, 0, 1], [4, 3, 2, 1]) == pytest.approx(0.5)


def test_ap_ties_enter_together():
    # all tied: one threshold, P = 1/3 at R = 1 → AP = 1/3 (no credit for order inside a tie)
    assert common.average_precision([1, 0, 0], [0.5, 0.5, 0.5]) == pytest.approx(1 / 3)
    # top tie {+,−} at P=1/2,R=1/2, then + at P=2/3,R=1 → 1/4 + 1/3
    assert common.average_precision([1, 0, 1], [0.9, 0.9, 0.1]) == pytest.approx(0.25 + 1 / 3)


def test_ap_perfect_and_no_positive():
    assert common.average_precision([1, 1, 0], [3, 2, 1]) == pytest.approx(1.0)
    assert math.isnan(common.average_precision([0, 0], [1, 2]))


def test_auroc_ap_match_sklearn_on_random_data():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.3
    s = np.round(rng.random(500) + 0.4 * y, 1)  # rounding makes plenty of ties
    assert common.auroc(y, s) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
    assert common.average_precision(y, s) == pytest.approx(metrics.average_precision_score(y, s), abs=1e-12)


# ---- precision / recall / F1 --------------------------------------------------------------------

def test_precision_recall_f1_hand_computed():
    # truth   1 1 1 0 0 0
    # flagged 1 1 0 1 0 0 → tp 2, flagged 3, positives 3 → P = R = F1 = 2/3
    r = common.precision_recall_f1([1, 1, 1, 0, 0, 0], [1, 1, 0, 1, 0, 0])
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3)
    assert (r["flagged"], r["true_positives"]) == (3, 2)
    # P = 1/4, R = 1/2 → F1 = 2·(1/8)/(3/4) = 1/3
    r = common.precision_recall_f1([1, 1, 0, 0, 0, 0], [1, 0, 1, 1, 1, 0])
    assert (r["precision"], r["recall"], r["f1"]) == pytest.approx((0.25, 0.5, 1 / 3))


def test_precision_recall_f1_edge_cases():
    r = common.precision_recall_f1([1, 0], [0, 0])  # nothing flagged
    assert math.isnan(r["precision"]) and r["recall"] == 0.0 and math.isnan(r["f1"])
    r = common.precision_recall_f1([1, 0], [0, 1])  # flagged only a negative
    assert (r["precision"], r["recall"], r["f1"]) == (0.0, 0.0, 0.0)


# ---- ECE ----------------------------------------------------------------------------------------

def test_ece_hand_computed():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right), 10 bins:
    # bin (0.8,0.9]: acc 1/2, conf 0.9 → |0.5−0.9|·2/4 = 0.2; bin (0.5,0.6]: acc 1, conf 0.6 → 0.4·2/4 = 0.2
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 1, 0, 1])
    assert common.expected_calibration_error(p, y, n_bins=10) == pytest.approx(0.4)


def test_ece_perfectly_calibrated_is_zero():
    p = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert common.expected_calibration_error(p, [0, 1]) == pytest.approx(0.0)


# ---- results file ---------------------------------------------------------------------------------

def test_merge_results_keeps_other_device(tmp_path):
    out = tmp_path / "r.json"
    common.merge_results(out, "cuda", {"a": 1})
    common.merge_results(out, "cpu", {"a": np.float64(2.5), "b": float("nan"), "c": np.arange(2)})
    doc = json.loads(out.read_text())
    assert doc == {"cuda": {"a": 1}, "cpu": {"a": 2.5, "b": None, "c": [0, 1]}}
    common.merge_results(out, "cpu", {"a": 3})
    assert json.loads(out.read_text()) == {"cuda": {"a": 1}, "cpu": {"a": 3}}


# ---- within-class ranking, the review queue, the confidence bands ------------------------------

def test_within_class_auroc_ignores_the_order_between_classes():
    # class a: errors score high inside it (AUROC 1); class b: inverted (0); all of b scores above a,
    # so the global AUROC is high while the macro within-class mean is 0.5
    y = [1] * 5 + [0] * 5 + [1] * 5 + [0] * 5
    s = [0.4] * 5 + [0.1] * 5 + [0.6] * 5 + [0.9] * 5
    g = ["a"] * 10 + ["b"] * 10
    per, macro = common.within_class_auroc(y, s, g)
    assert per == {"a": 1.0, "b": 0.0} and macro == 0.5
    per, macro = common.within_class_auroc([1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3], ["a"] * 4)
    assert math.isnan(per["a"]) and math.isnan(macro)  # fewer than 5 of each


def test_precision_at_k_and_accuracy_by_band():
    assert common.precision_at([1, 0, 1, 1], ks=(2, 4, 5)) == {"2": 0.5, "4": 0.75, "5": None}
    acc, n, rising = common.accuracy_by_band([0, 0, 1, 2, 2], [0, 1, 0, 1, 1], 3)
    assert acc == [0.5, 0.0, 1.0] and n == [2, 1, 2] and not rising
    assert common.accuracy_by_band([0, 1, 1], [0, 1, 1], 3)[2]  # an empty band does not break the rise


# ---- the simulated reviewer of bench_review_loop.py (issue 18) ---------------------------------

def test_simulated_reviewer_answers_from_the_ferplus_votes():
    import sys

    import pandas as pd

    sys.path.insert(0, str(_PATH.parent))
    import bench_review_loop as loop

    cols = loop.VOTE_COLUMNS  # neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF
    votes = [[0, 6, 0, 0, 0, 0, 0, 0, 2, 2],   # happy majority, given happy: keep
             [0, 0, 0, 5, 0, 0, 0, 0, 5, 0],   # sad has 5 of 10, given happy: relabel to sad
             [2, 0, 0, 0, 0, 0, 0, 0, 3, 5],   # no class majority, NF + unknown = 8: drop
             [4, 4, 0, 0, 0, 0, 0, 0, 1, 1],   # no majority, little junk: keep
             [0, 0, 0, 0, 0, 0, 0, 6, 2, 2]]   # contempt majority (no FER2013 class), junk 4: keep
    truth = pd.DataFrame(votes, columns=cols).assign(sample_id=list("abcde"), label="happy")
    got = loop.reviewer_answers(truth)
    assert got["action"].tolist() == ["keep", "relabel", "drop", "keep", "keep"]
    assert [x if isinstance(x, str) else None for x in got["label"]] == [None, "sad", None, None, None]

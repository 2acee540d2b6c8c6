"""Reviewed rows calibrate the run (issue 18, part 2): the pure estimators, the audit's side-by-side
statistics and the threshold rule that reads them, the report's spot checks and expected errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fercure import audit as core
from fercure import review_calibration as rc
from fercure.report import data as rd

from test_report import CLASSES, small_audit


def population(n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ranks and errors of a data set whose wrong labels sit mostly at the low ranks: P(error) 0.6
    below rank 0.1, 0.2 above (a true share of 0.24)."""
    rng = np.random.default_rng(seed)
    rank = (np.arange(n) + 0.5) / n
    err = rng.random(n) < np.where(rank < 0.1, 0.6, 0.2)
    return rank, err


def test_ranks_share_ties_and_keep_nan():
    r = rc.ranks_of(np.array([0.3, np.nan, 0.1, 0.3, 0.9]))
    assert np.isnan(r[1])
    assert r[2] < r[0] == r[3] < r[4]  # equal scores, equal rank
    assert np.allclose(r[[2, 0, 3, 4]], [0.125, 0.5, 0.5, 0.875])


def test_a_queue_and_spot_checks_estimate_the_share_a_queue_alone_does_not():
    rank, err = population()
    queue = np.arange(400)  # the lowest ranks, as the report's queue shows them
    share_q = rc.error_share(rank[queue], err[queue])
    assert share_q["share"] is None and "spot checks" in share_q["why"]  # the queue reaches 2 % of the ranks
    rng = np.random.default_rng(1)
    unlisted = np.arange(400, len(rank))
    estimates = []
    for _ in range(20):
        spot = rng.choice(unlisted, size=60, replace=False)
        rows = np.r_[queue, spot]
        est = rc.error_share(rank[rows], err[rows])
        assert est["n_spot_checks"] >= rc.MIN_SPOT_CHECKS and est["why"] is None
        estimates.append(est["share"])
    assert abs(np.median(estimates) - err.mean()) < 0.03  # not the queue's own error rate (≈ 0.6)
    # the queue alone, read without the minimums, would say far more than the truth
    assert rc.share_over_ranks(rank[queue], err[queue])[0] > 0.5


def test_too_few_reviewed_rows_say_so():
    out = rc.error_share(np.array([0.1, 0.5, 0.9]), np.array([True, False, False]))
    assert out["share"] is None and out["n_reviewed"] == 3 and f"{rc.MIN_REVIEWED} are needed" in out["why"]


def test_the_local_error_rate_never_rises_with_rank_and_stays_local():
    xs, fit = rc.local_error_rate(np.array([0.9, 0.1, 0.2, 0.5, 0.6]), np.array([True, False, True, True, False]), k=2)
    assert np.all(np.diff(fit) <= 1e-12) and list(xs) == sorted(xs)
    # a dense queue of errors at the low ranks keeps its own rate at its end, whatever lies far above
    rank = np.r_[np.linspace(0.0, 0.02, 200), np.linspace(0.3, 1.0, 50)]
    err = np.r_[np.ones(200, bool), np.zeros(50, bool)]
    xs, fit = rc.local_error_rate(rank, err)
    assert fit[199] == 1.0 and fit[-1] == 0.0


def test_expected_errors_from_the_curve():
    rank, err = population()
    rows = np.r_[np.arange(500), np.flatnonzero(rank > 0.3)[::200]]
    nxt = rank[500:600]  # the next 100 cards: still in the 0.6 stretch
    exp = rc.expected_errors(rank[rows], err[rows], nxt)
    assert 50 < exp < 70
    assert rc.expected_errors(rank[:5], err[:5], nxt) is None
    curve = rc.curve_points(rank[rows], err[rows])
    assert rc.expected_from_curve(curve, nxt) == pytest.approx(exp)
    assert len(curve["rank"]) < len(rows)  # runs of one value kept by their ends


def test_auroc_of_reviewed_rows():
    assert rc.auroc(np.array([True, True, False, False]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert rc.auroc(np.array([True, True, False, False]), np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert rc.auroc(np.array([True, True]), np.array([0.1, 0.2])) is None


def reviewed_table(table: pd.DataFrame, ids, errors, ranks) -> pd.DataFrame:
    g = table.set_index("sample_id")["given_label"]
    return pd.DataFrame({"sample_id": ids, "action": np.where(errors, "drop", "keep"),
                         "label": [None if e else g[i] for i, e in zip(ids, errors)],
                         "given_label": [g[i] for i in ids], "source": "test row 2",
                         "rank_when_reviewed": ranks})


def test_the_planted_rule_reads_the_reviewed_share_when_the_reviewed_rows_reach_across():
    man, preds, _ = small_audit(n=600, seed=3)
    meta = {"self_check": {"n_planted": 18, "estimated_error_share": 0.40, "auroc_mean_p": 0.9}}
    before, st0 = core.build_audit(man, preds, CLASSES, threshold_method="planted", run_meta=meta)
    assert st0["calibration"]["used"] == "planted" and st0["calibration"]["share"] == 0.40
    # 100 reviewed rows spread over every rank, one in ten wrong: the reviewed share ≈ 0.1
    ids = before["sample_id"].to_numpy()[::6][:100]
    rng = np.random.default_rng(0)
    ranks = (np.arange(100) + 0.5) / 100
    errors = rng.random(100) < 0.1
    after, st1 = core.build_audit(man, preds, CLASSES, threshold_method="planted", run_meta=meta,
                                  reviewed=reviewed_table(before, ids, errors, ranks))
    cal = st1["calibration"]
    assert cal["used"] == "reviewed" and cal["planted"]["share"] == 0.40
    assert cal["reviewed"]["share"] == pytest.approx(cal["share"]) and cal["share"] < 0.2
    assert cal["reviewed"]["n_reviewed"] == 100 and cal["reviewed"]["curve"]
    # fewer flags with the smaller share (the reviewed rows themselves are never flagged)
    assert after["is_label_issue"].sum() < 0.6 * before["is_label_issue"].sum()


def test_the_report_offers_spot_checks_past_the_queue_and_reads_the_curve():
    man, preds, _ = small_audit(n=2000, seed=5)
    table, stats = core.build_audit(man, preds, CLASSES)
    bits, listed = rd.review_rows(table)
    spot = np.flatnonzero(bits & rd.BIT["spot_check"])
    rank = rc.ranks_of(table["label_score"].to_numpy(float))
    assert len(spot) == rd.SPOT_CARDS
    assert not table.loc[spot, ["is_label_issue", "is_ambiguous_issue"]].any().any() and rank[spot].max() > 0.5
    assert np.array_equal(spot, np.flatnonzero(rd.review_rows(table)[0] & rd.BIT["spot_check"]))  # the same cards
    order = rd.review_order(table, listed, bits)
    p = rd.review_progress(table, CLASSES, order, bits, stats["calibration"])
    assert p["expected_from"] == "model" and p["n_spot_checks"] == rd.SPOT_CARDS
    flat = {"reviewed": {"curve": {"rank": [0.0, 1.0], "p_error": [0.25, 0.25]}, "n_reviewed": 80}}
    p = rd.review_progress(table, CLASSES, order, bits, flat)
    assert p["expected_from"] == "reviewed" and p["expected_errors_next"] == pytest.approx(0.25 * p["next_cards"])

"""Reviewed rows calibrate the run (issue 18, part 2): the pure estimators, the audit's side-by-side
statistics and the threshold rule that reads them, the report's spot checks and expected errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fercure import audit as core
from fercure import review_calibration as rc
from fercure.report import data as rd

from fercure.report import render_report

from test_report import CLASSES, small_audit


def population(n: int = 20_000, seed: int = 0) -> np.ndarray:
    """Errors of a data set ordered like a queue: P(error) 0.6 in its first tenth, 0.2 after (a true
    share of 0.24)."""
    rng = np.random.default_rng(seed)
    return rng.random(n) < np.where(np.arange(n) < n // 10, 0.6, 0.2)


def test_ranks_share_ties_and_keep_nan():
    r = rc.ranks_of(np.array([0.3, np.nan, 0.1, 0.3, 0.9]))
    assert np.isnan(r[1])
    assert r[2] < r[0] == r[3] < r[4]  # equal scores, equal rank
    assert np.allclose(r[[2, 0, 3, 4]], [0.125, 0.5, 0.5, 0.875])


@pytest.mark.parametrize("queue_cards", [0, 400, 1000])
def test_spot_checks_estimate_the_share_whatever_the_queue_found(queue_cards):
    err = population()
    n = len(err)
    rng = np.random.default_rng(1)
    estimates = []
    for _ in range(200):
        spot = rng.choice(n, size=60, replace=False)  # the spot checks: random rows, drawn before the review
        queue = np.setdiff1d(np.arange(queue_cards), spot)  # the queue's cards that were not spot checks
        rows = np.r_[queue, spot]
        est = rc.error_share(err[rows], np.r_[np.zeros(len(queue), bool), np.ones(len(spot), bool)], n)
        assert est["n_spot_checks"] == 60 and est["why"] is None
        estimates.append(est["share"])
    # not pulled toward the queue's 0.6: off by at most the spot checks that fell in the queue's stretch
    # (queue share × the rates' difference, see review_calibration.error_share) and the draws' noise
    assert abs(np.mean(estimates) - err.mean()) < queue_cards / n * 0.4 + 0.006
    assert abs(np.mean(estimates) - err.mean()) < 0.03


def test_without_spot_checks_there_is_no_reviewed_share():
    err = population()
    out = rc.error_share(err[:400], np.zeros(400, bool), len(err))
    assert out["share"] is None and out["n_reviewed"] == 400 and "spot checks" in out["why"]
    assert rc.choose(0.4, out["share"]) == ("planted", 0.4)
    assert rc.choose(None, None) == (None, None) and rc.choose(0.4, 0.25) == ("reviewed", 0.25)


def test_the_next_cards_are_read_off_the_latest_queue_cards():
    rank = np.r_[np.linspace(0.0, 0.02, 100), np.linspace(0.1, 0.9, 40)]
    err = np.r_[np.zeros(50, bool), np.ones(50, bool), np.zeros(40, bool)]  # the queue got better with depth
    spot = np.r_[np.zeros(100, bool), np.ones(40, bool)]
    out = rc.recent_queue_rate(rank, err, spot)
    assert out == {"rate": 1.0, "n": rc.RECENT_CARDS}  # the last 50 queue cards, not the spot checks
    assert rc.recent_queue_rate(rank[:10], err[:10], spot[:10])["rate"] is None
    latest = np.r_[np.zeros(60, bool), np.ones(80, bool)]  # a later round: its own queue cards
    assert rc.recent_queue_rate(rank, err, spot, latest)["n"] == 40


def test_spot_checks_are_a_fixed_draw_of_the_eligible_rows():
    ids = [f"s{i}" for i in range(2000)]
    eligible = np.arange(2000) % 3 != 0
    score, none = np.where(eligible, 0.5, np.nan), np.zeros(2000, bool)
    a = rc.spot_checks(ids, score, none)
    assert len(a) == rc.SPOT_CARDS and eligible[a].all()
    assert np.array_equal(a, rc.spot_checks(ids, score, none))
    assert not set(rc.spot_checks(ids, score, np.arange(2000) % 2 == 0)) & set(range(0, 2000, 2))  # never reviewed
    assert len(rc.spot_checks(ids[:100], np.ones(100), np.zeros(100, bool))) == 5  # at most SPOT_SHARE of a small set


def test_auroc_of_reviewed_rows():
    """The audit's reviewed AUROC: fercure.metrics.auroc with a low rank counting as suspect."""
    from fercure.metrics import auroc

    assert auroc(np.array([True, True, False, False]), -np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auroc(np.array([True, True, False, False]), -np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert np.isnan(auroc(np.array([True, True]), -np.array([0.1, 0.2])))


def reviewed_table(table: pd.DataFrame, ids, errors, spot) -> pd.DataFrame:
    g = table.set_index("sample_id")["given_label"]
    return pd.DataFrame({"sample_id": ids, "action": np.where(errors, "drop", "keep"),
                         "label": [None if e else g[i] for i, e in zip(ids, errors)],
                         "given_label": [g[i] for i in ids], "source": "test row 2",
                         "rank_when_reviewed": np.linspace(0.01, 0.99, len(ids)), "spot_check": spot,
                         "review_round": 1})


def test_the_planted_rule_reads_the_reviewed_share_once_spot_checks_are_decided():
    man, preds, _ = small_audit(n=600, seed=3)
    meta = {"self_check": {"n_planted": 18, "estimated_error_share": 0.40, "auroc_mean_p": 0.9}}
    before, st0 = core.build_audit(man, preds, CLASSES, threshold_method="planted", run_meta=meta)
    assert st0["calibration"]["used"] == "planted" and st0["calibration"]["share"] == 0.40
    # 60 reviewed rows: 10 queue cards (all wrong) and 50 spot checks, 5 of them wrong
    ids = before["sample_id"].to_numpy()[::10][:60]
    errors = np.r_[np.ones(10, bool), np.arange(50) % 10 == 0]
    spot = np.r_[np.zeros(10, bool), np.ones(50, bool)]
    after, st1 = core.build_audit(man, preds, CLASSES, threshold_method="planted", run_meta=meta,
                                  reviewed=reviewed_table(before, ids, errors, spot))
    cal = st1["calibration"]
    assert cal["used"] == "reviewed" and cal["planted"]["share"] == 0.40
    n_rows = int(before["trained"].sum()) + int(errors.sum())  # the scored rows and the reviewed drops
    assert cal["share"] == pytest.approx((10 + 0.1 * (n_rows - 10)) / n_rows)
    assert cal["reviewed"]["n_spot_checks"] == 50 and cal["reviewed"]["spot_check_error_rate"] == pytest.approx(0.1)
    from fercure.metrics import auroc

    # the reviewed AUROC: the queue's errors sit at the lowest ranks
    assert cal["reviewed"]["auroc"] == pytest.approx(auroc(errors, -np.linspace(0.01, 0.99, 60)))
    assert cal["reviewed"]["auroc"] > 0.7
    # fewer flags with the smaller share (the reviewed rows themselves are never flagged)
    assert after["is_label_issue"].sum() < 0.6 * before["is_label_issue"].sum()


def test_the_report_offers_spot_checks_and_reads_the_latest_queue_cards():
    man, preds, _ = small_audit(n=2000, seed=5)
    table, stats = core.build_audit(man, preds, CLASSES)
    bits, listed = rd.review_rows(table)
    spot = np.flatnonzero(bits & rd.BIT["spot_check"])
    assert len(spot) == rc.SPOT_CARDS and table.loc[spot, "trained"].all()
    assert table.loc[spot, "is_label_issue"].any() and not table.loc[spot, "is_label_issue"].all()  # flagged or not
    assert np.array_equal(spot, np.flatnonzero(rd.review_rows(table)[0] & rd.BIT["spot_check"]))  # the same cards
    order = rd.review_order(table, listed, bits)
    p = rd.review_progress(table, CLASSES, order, bits, stats["calibration"])
    assert p["n_spot_checks"] == rc.SPOT_CARDS and p["spot_checks_reachable"]
    recent = {"reviewed": {"recent_queue": {"rate": 0.25, "n": 50}}}
    p = rd.review_progress(table, CLASSES, order, bits, recent)
    assert p["expected_from"] == "reviewed" and p["expected_errors_next"] == pytest.approx(0.25 * p["next_cards"])


def test_before_any_review_the_next_cards_come_from_the_planted_recovery_rate_not_the_models_sum():
    man, preds, _ = small_audit(n=2000, seed=5)
    table, stats = core.build_audit(man, preds, CLASSES)
    bits, listed = rd.review_rows(table)
    order = rd.review_order(table, listed, bits)
    # no planted flips, no reviewed cards: nothing measured, so no figure (the sum of 1 - p(given) was one)
    p = rd.review_progress(table, CLASSES, order, bits, stats["calibration"])
    assert p["expected_from"] is None and p["expected_errors_next"] is None
    # the planted flips' recovery rate: 24 of 60 found, so 40 of 100 cards, with the Wilson interval
    cal = {"planted": {"recall": 0.4, "n_planted": 60}, "reviewed": {"recent_queue": {"rate": None, "n": 3}}}
    p = rd.review_progress(table, CLASSES, order, bits, cal)
    assert p["next_cards"] == 100 and p["expected_from"] == "planted"
    assert p["expected_errors_next"] == pytest.approx(40.0)
    assert (p["expected_lo"], p["expected_hi"]) == (29.0, 53.0)  # Wilson 24 / 60: 0.288-0.528
    html = render_report(table, stats, CLASSES, crops=None)
    assert "1 − p(given)" not in html


def test_a_row_reviewed_in_an_earlier_round_keeps_the_rank_and_spot_flag_it_had_then(tmp_path):
    from fercure import schema, trusted
    from fercure.workspace import Workspace, write_table

    ws = Workspace(tmp_path / "ws")
    ws.run_dir("r1").mkdir(parents=True)
    audit = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "label_score": [0.9, 0.1, 0.5, np.nan],
                          "is_reviewed": [True, False, False, False]})
    write_table(audit, ws.audit, {"run_id": "r1"})
    # run r1 trained with "a" reviewed: its score since is about the reviewed label, not what was seen
    write_table(pd.DataFrame({"sample_id": ["a"], "action": ["relabel"], "label": ["sad"], "given_label": ["happy"],
                              "source": ["f.csv row 2"], "rank_when_reviewed": [0.05], "spot_check": [True],
                              "review_round": [1]}), ws.run_dir("r1") / "trusted.parquet", table=schema.TRUSTED)
    ctx = trusted.review_context(ws, audit, ["a", "b", "d", "zz"])
    assert ctx.loc["a"].tolist() == [0.05, True, None]  # from its own round (no suggestion recorded then)
    assert ctx.at["b", "rank_when_reviewed"] == pytest.approx(1 / 6)  # lowest of the three scored rows
    assert np.isnan(ctx.at["d", "rank_when_reviewed"]) and np.isnan(ctx.at["zz", "rank_when_reviewed"])
    # a run id that is not a run folder's kind of name is not followed
    write_table(audit, ws.audit, {"run_id": "../../etc"})
    assert np.isnan(trusted.review_context(ws, audit, ["a"]).at["a", "rank_when_reviewed"])


def test_the_queue_follows_the_held_out_view_when_every_flagged_row_has_one():
    man, preds, _ = small_audit(n=600, seed=3)
    table, _ = core.build_audit(man, preds, CLASSES)
    flagged = np.flatnonzero(table["is_label_issue"].to_numpy())
    assert len(flagged) > 10
    rng = np.random.default_rng(0)
    table["retrain_p_given"] = np.where(table["is_label_issue"], rng.random(len(table)), np.nan)
    table = table.drop(columns="review_rank")  # an audit written before the queue had its own column
    bits, listed = rd.review_rows(table)
    order = rd.review_order(table, listed, bits)
    first = order[: len(flagged)]
    assert set(first) == set(flagged)
    assert np.all(np.diff(table["retrain_p_given"].to_numpy()[first]) >= 0)  # lowest held-out p(given) first
    # one flagged row without the held-out view: the label score orders the queue
    table.loc[flagged[0], "retrain_p_given"] = np.nan
    first = rd.review_order(table, listed, bits)[: len(flagged)]
    assert np.all(np.diff(table["label_score"].to_numpy()[first]) >= 0)

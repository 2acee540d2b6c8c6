"""What a reviewer's decisions say about a run's scores (pure numpy): the share of wrong labels, and how
many wrong labels the next cards hold.

A reviewed row carries the rank its ``label_score`` had among the scored rows of the audit the
reviewer worked from (``rank_when_reviewed``, in (0, 1), low = suspect) and its verdict: an error
(relabelled or dropped) or a confirmed label (kept). The queue shows the lowest ranks first, so the
reviewed rows are no random sample of the data; but they are selected on the rank itself, so the
error rate measured at a rank holds for every row of that rank. The share of wrong labels is then
the mean of P(error | rank) over all ranks, each reviewed row standing for the stretch of ranks
nearer to it than to any other reviewed row (``share_over_ranks``) — once the reviewed rows reach
across the ranks. A queue alone covers only the lowest ranks; a few *spot checks* (random unflagged
cards, the report's *spot checks* filter) cover the rest.

Planted flips stand in for real errors elsewhere in the run; they are clear faces with a foreign
label, real errors mostly ambiguous faces, so the two estimates can differ widely. Both are reported;
``choose`` says which one the run uses and why.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Below these the reviewed rows say too little (benchmarks/RESULTS.md, "Reviewed rows calibrate the
# run": the error of the estimate against the FER+ votes, by how many random cards were reviewed).
MIN_REVIEWED = 30  # reviewed rows with a rank
MIN_SPOT_CHECKS = 20  # of them past the queue: ranks above SPOT_CHECK_FROM
SPOT_CHECK_FROM = 0.25  # reviewed rows above this rank count as spot checks (a queue does not reach them)
MAX_RANK_GAP = 0.25  # the widest stretch of ranks without a reviewed row (the ends 0 and 1 included)


def isotonic_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing least-squares fit of y on x (pool adjacent violators).

    Returns the sorted x and the fitted value at each; ``np.interp`` over them reads the fit."""
    order = np.argsort(x, kind="stable")
    xs, ys = np.asarray(x, float)[order], np.asarray(y, float)[order]
    vals, wts, sizes = [], [], []
    for v in ys:
        vals.append(v), wts.append(1.0), sizes.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            w = wts[-2] + wts[-1]
            v2 = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / w
            n2 = sizes[-2] + sizes[-1]
            del vals[-1], wts[-1], sizes[-1]
            vals[-1], wts[-1], sizes[-1] = v2, w, n2
    return xs, np.repeat(vals, sizes)


def ranks_of(score: np.ndarray) -> np.ndarray:
    """Mid-rank of each finite score among the finite ones, scaled into (0, 1); NaN stays NaN.
    Ties share their mean rank, so the rank does not depend on row order."""
    s = np.asarray(score, float)
    out = np.full(len(s), np.nan)
    ok = np.isfinite(s)
    n = int(ok.sum())
    if n:
        order = np.argsort(s[ok], kind="stable")
        r = np.empty(n)
        r[order] = np.arange(n, dtype=float)
        sorted_s = s[ok][order]
        # mean rank over each run of equal scores
        starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
        ends = np.r_[starts[1:], n]
        mean_rank = np.repeat((starts + ends - 1) / 2.0, ends - starts)
        r[order] = mean_rank
        out[ok] = (r + 0.5) / n
    return out


NEIGHBOURS = 50  # reviewed rows the local error rate at a rank is read from


def local_error_rate(rank: np.ndarray, is_error: np.ndarray, k: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """P(error | rank) read locally: at each reviewed rank (sorted), the error rate of the ``k`` reviewed
    rows nearest in rank, then made non-increasing (isotonic). Unlike the isotonic fit alone, the end of
    a reviewed queue is not pooled with spot checks far above it, so the next cards' figure reflects
    the queue's own latest rate."""
    order = np.argsort(np.asarray(rank, float), kind="stable")
    r, e = np.asarray(rank, float)[order], np.asarray(is_error, float)[order]
    n = len(r)
    k = max(1, min(k, n))
    cum = np.r_[0.0, np.cumsum(e)]
    i = np.arange(n)
    # the window of k consecutive sorted rows holding row i with the smallest reach from r[i]
    starts = np.clip(i[:, None] - np.arange(k)[None, :], 0, n - k)
    reach = np.maximum(r[i][:, None] - r[starts], r[starts + k - 1] - r[i][:, None])
    best = starts[i, np.argmin(reach, axis=1)]
    rate = (cum[best + k] - cum[best]) / k
    xs, p_right = isotonic_fit(r, 1.0 - rate)
    return xs, 1.0 - p_right


def curve_points(rank: np.ndarray, is_error: np.ndarray) -> dict | None:
    """``local_error_rate`` as few points as read it back with ``np.interp`` (each run of one value
    reduced to its ends): what the audit's metadata keeps for the report. None with fewer than
    ``MIN_REVIEWED`` reviewed rows."""
    rank = np.asarray(rank, float)
    ok = np.isfinite(rank)
    if ok.sum() < MIN_REVIEWED:
        return None
    xs, fit = local_error_rate(rank[ok], np.asarray(is_error, bool)[ok])
    edge = np.r_[True, fit[1:] != fit[:-1]] | np.r_[fit[1:] != fit[:-1], True]
    return {"rank": [round(float(v), 6) for v in xs[edge]], "p_error": [round(float(v), 6) for v in fit[edge]]}


def expected_from_curve(curve: dict | None, ranks: Sequence[float]) -> float | None:
    """The expected number of wrong labels among rows of ``ranks``, read off ``curve_points``."""
    if not curve:
        return None
    r = np.asarray(ranks, float)
    return float(np.interp(r[np.isfinite(r)], curve["rank"], curve["p_error"]).sum())


def share_over_ranks(rank: np.ndarray, is_error: np.ndarray) -> tuple[float, float]:
    """The mean of P(error) over the ranks (0, 1), each reviewed row weighing the stretch of ranks
    nearest to it (half way to its neighbours; the ends to 0 and 1), and a rough standard error. With
    spot checks drawn at random, the weights do not depend on the errors, so the estimate is not
    pulled toward the queue's rate however many queue cards were reviewed."""
    order = np.argsort(np.asarray(rank, float), kind="stable")
    r, e = np.asarray(rank, float)[order], np.asarray(is_error, float)[order]
    mid = (r[1:] + r[:-1]) / 2.0
    w = np.diff(np.r_[0.0, mid, 1.0])
    _, p_local = local_error_rate(r, e)
    return float((w * e).sum()), float(np.sqrt((w ** 2 * p_local * (1 - p_local)).sum()))


def coverage(rank: np.ndarray) -> dict:
    """How far the reviewed ranks reach: their number, how many lie past the queue (spot checks),
    the widest stretch of ranks without one."""
    r = np.sort(np.asarray(rank, float)[np.isfinite(rank)])
    gaps = np.diff(np.r_[0.0, r, 1.0])
    return {"n_reviewed": int(len(r)), "n_spot_checks": int((r > SPOT_CHECK_FROM).sum()),
            "max_rank_gap": float(gaps.max())}


def error_share(rank: np.ndarray, is_error: np.ndarray) -> dict:
    """The share of wrong labels from reviewed rows, or why not (``share`` None and ``why``).

    Parameters
    ----------
    rank : (m,) rank each reviewed row had when reviewed (``ranks_of`` of that audit), NaN: none.
    is_error : (m,) bool, the reviewer relabelled or dropped it.

    Returns
    -------
    dict: ``share`` (float or None), ``standard_error`` (``share_over_ranks``), ``n_errors``, the
    ``coverage`` figures, ``why``.
    """
    rank = np.asarray(rank, float)
    err = np.asarray(is_error, bool)
    ok = np.isfinite(rank)
    rank, err = rank[ok], err[ok]
    cov = coverage(rank)
    out = {"share": None, "standard_error": None, "n_errors": int(err.sum()), **cov}
    if cov["n_reviewed"] < MIN_REVIEWED:
        return {**out, "why": f"{cov['n_reviewed']} reviewed rows with a score; {MIN_REVIEWED} are needed"}
    if cov["n_spot_checks"] < MIN_SPOT_CHECKS or cov["max_rank_gap"] > MAX_RANK_GAP:
        return {**out, "why": (f"the reviewed rows reach {cov['n_spot_checks']} of the {MIN_SPOT_CHECKS} spot checks "
                               f"needed past the queue (ranks above {SPOT_CHECK_FROM:.0%}) and leave a stretch of "
                               f"{cov['max_rank_gap']:.0%} of the ranks unreviewed (at most {MAX_RANK_GAP:.0%}); "
                               "review the report's spot-check cards")}
    share, se = share_over_ranks(rank, err)
    return {**out, "share": share, "standard_error": se, "why": None}


def expected_errors(rank: np.ndarray, is_error: np.ndarray, next_ranks: Sequence[float]) -> float | None:
    """The expected number of wrong labels among rows of ``next_ranks`` (the next cards), read off the
    reviewed rows' local P(error | rank) (``local_error_rate``); None with fewer than ``MIN_REVIEWED``
    reviewed rows. Between reviewed ranks the curve is interpolated; since P(error) does not rise
    with rank, the figure for cards just past a reviewed queue leans high."""
    return expected_from_curve(curve_points(rank, is_error), next_ranks)


def auroc(is_error: np.ndarray, rank: np.ndarray) -> float | None:
    """How well the rank put the reviewed errors before the confirmed labels (Mann-Whitney; ties
    half); None without both kinds."""
    rank = np.asarray(rank, float)
    err = np.asarray(is_error, bool)
    ok = np.isfinite(rank)
    pos, neg = rank[ok & err], rank[ok & ~err]
    if not len(pos) or not len(neg):
        return None
    r = ranks_of(np.r_[pos, neg]) * (len(pos) + len(neg)) - 0.5
    # low rank = suspect: errors should have the low ranks
    u = r[len(pos):].sum() - len(neg) * (len(neg) - 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def choose(planted_share: float | None, reviewed: dict) -> dict:
    """Which error-share estimate the run uses: the reviewed one when it exists, else the planted one."""
    use = "reviewed" if reviewed.get("share") is not None else "planted"
    planted = planted_share if planted_share is not None and np.isfinite(planted_share) else None
    return {"planted": planted, "reviewed": reviewed.get("share"), "used": use if use == "reviewed" or planted is not None
            else None, "share": reviewed.get("share") if use == "reviewed" else planted}

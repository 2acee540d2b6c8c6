"""Ranking metrics shared by the engine's self-check and the demo's scorecard (pure numpy)."""

from __future__ import annotations

import numpy as np


def auroc(positive: np.ndarray, score: np.ndarray, weights: np.ndarray | None = None) -> float:
    """P(score of a random positive > score of a random negative), ties counting one half
    (Mann–Whitney U with average ranks). Non-finite scores are left out; NaN when either class is
    empty. With ``weights`` each row is drawn in proportion to its weight (a pair counts w_i · w_j):
    rows that stand for others (a random sample's) count for them."""
    y = np.asarray(positive, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    ok = np.isfinite(s)
    y, s = y[ok], s[ok]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    if weights is not None:
        return _weighted_auroc(y, s, np.asarray(weights, dtype=np.float64)[ok])
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    ranks = np.empty(len(s), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # 1-based average ranks
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _weighted_auroc(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> float:
    """``auroc`` with row weights: per group of tied scores, its positive weight times the negative
    weight below it, plus half the negative weight tied with it."""
    order = np.argsort(s, kind="mergesort")
    s, y, w = s[order], y[order], w[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
    pos = np.add.reduceat(np.where(y, w, 0.0), starts)
    neg = np.add.reduceat(np.where(y, 0.0, w), starts)
    below = np.cumsum(neg) - neg
    total = pos.sum() * neg.sum()
    return float((pos * (below + 0.5 * neg)).sum() / total) if total > 0 else float("nan")

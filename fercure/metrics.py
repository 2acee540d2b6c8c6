"""Ranking metrics shared by the engine's self-check and the demo's scorecard (pure numpy)."""

from __future__ import annotations

import numpy as np


def auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting one half
    (Mann–Whitney U with average ranks). Non-finite scores are left out; NaN when either class is
    empty."""
    y = np.asarray(positive, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    ok = np.isfinite(s)
    y, s = y[ok], s[ok]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    ranks = np.empty(len(s), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # 1-based average ranks
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))

"""What a reviewer's decisions say about a run (pure functions): the share of wrong labels, and how many
wrong labels the next cards hold.

Each reviewed row carries its verdict, an error (relabelled or dropped) or a confirmed label (kept),
and whether it was one of the report's *spot checks*: cards drawn at random (``spot_checks``) from
the scored rows no reviewer had decided yet, whatever their flags. The other reviewed rows come from
the queue, the rows the run found most suspect, so their error rate says nothing about the rest. The
share of wrong labels is therefore estimated in two parts: the errors the reviewer found outside the
spot checks, counted exactly, plus the spot checks' error rate times the rows nobody reviewed — the
spot checks are a random sample of those. Not quite: a spot check can fall among the queue's cards,
and then speaks for them too, which leans the estimate toward the queue's rate by at most the share of
rows reviewed through the queue times the two rates' difference — under a point at the few per cent
of the rows a review covers, far inside the spot checks' own spread.

Planted flips stand in for real errors elsewhere in the run; they are clear faces with a foreign
label, real errors mostly ambiguous faces, so the two estimates can differ widely. Both are reported;
``choose`` says which one the run uses.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from fercure.strength import wilson

# The minimums, set by replaying reviews on the reference benchmark (benchmarks/RESULTS.md, "Reviewed
# rows calibrate the run").
MIN_SPOT_CHECKS = 30  # decided spot checks before the reviewed estimate replaces the planted one
SPOT_CARDS = 40  # spot checks a report offers...
SPOT_SHARE = 0.05  # ...at most this share of the scored rows (a small set is not worth calibrating this way)
RECENT_CARDS = 50  # the latest queue cards whose error rate predicts the next cards
MIN_RECENT_CARDS = 30  # queue cards before that prediction replaces the model's


def ranks_of(score: np.ndarray) -> np.ndarray:
    """Mid-rank of each finite score among the finite ones, scaled into (0, 1); NaN stays NaN.
    Ties share their mean rank, so the rank does not depend on row order."""
    s = pd.Series(np.asarray(score, float)).where(lambda v: np.isfinite(v))
    return ((s.rank(method="average") - 0.5) / max(int(s.notna().sum()), 1)).to_numpy(dtype=float, copy=True)


def queue_key(label_score: np.ndarray, held_out_p: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    """What orders the review queue's label issues, low first: the second model's held-out p(given)
    when every flagged row has one (the default retrain rule flags only rows that model held out),
    else the label score. The held-out view found the most wrong labels per card reviewed
    (benchmarks/RESULTS.md, "What to review next")."""
    held = np.asarray(held_out_p, float)
    flagged = np.asarray(flagged, bool)
    return held if flagged.any() and np.isfinite(held[flagged]).all() else np.asarray(label_score, float)


def spot_checks(sample_ids: Sequence[str], score: np.ndarray, reviewed: np.ndarray) -> np.ndarray:
    """Positions of the spot checks: ``SPOT_CARDS`` rows (at most ``SPOT_SHARE`` of the eligible)
    drawn at random among the scored rows not reviewed yet. The draw depends on the sample ids only,
    so the report and the next ``train --trusted`` find the same cards."""
    cand = np.flatnonzero(np.isfinite(np.asarray(score, float)) & ~np.asarray(reviewed, bool))
    n = min(SPOT_CARDS, int(SPOT_SHARE * len(cand)))
    if not len(cand) or n <= 0:
        return np.zeros(0, np.int64)
    cand = cand[np.argsort(np.asarray(sample_ids, dtype=str)[cand], kind="stable")]
    return np.sort(np.random.default_rng(0).permutation(cand)[:n])


def label_decisions(action: Sequence[str], image_problem: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which reviewed rows are decisions about the label, and which of those found it wrong.

    A keep confirms the label, a relabel corrects it; a drop of a card with an image problem (no face,
    a duplicate, unreadable, blurry: ``image_problem``) says the image cannot train, not that its
    label was wrong, so it is no label decision; a drop of a card without one is (no class fits the
    face). Returns (is_label_decision, is_wrong_label), both (m,) bool."""
    a = np.asarray(action, dtype=object)
    img = np.asarray(image_problem, bool)
    drop = a == "drop"
    is_label = ~(drop & img)
    return is_label, is_label & ((a == "relabel") | drop)


def spot_checks_reachable(n_offered: int) -> bool:
    """Whether the spot checks a report offers can ever reach ``MIN_SPOT_CHECKS`` (a small set offers
    ``SPOT_SHARE`` of its rows, fewer than that)."""
    return int(n_offered) >= MIN_SPOT_CHECKS


def error_share(is_error: np.ndarray, is_spot: np.ndarray, n_rows: int) -> dict:
    """The share of wrong labels among ``n_rows`` rows from the reviewed ones, or why not.

    Parameters
    ----------
    is_error : (m,) bool, the reviewer found the label wrong (``label_decisions``; pass only label decisions).
    is_spot : (m,) bool, the row was a spot check (a random draw among the rows not reviewed before).
    n_rows : the rows the share is of (the run's scored rows and the reviewed label drops).

    Returns
    -------
    dict: ``share`` (None below ``MIN_SPOT_CHECKS`` spot checks, with ``why``), ``lo`` / ``hi`` (its 95 %
    interval: the queue's errors are counted exactly, the spot checks' rate carries the Wilson interval,
    so 0 wrong of 30 still allows about 11 %), ``standard_error`` (binomial, of the spot checks' part),
    ``n_reviewed``, ``n_errors``, ``n_spot_checks``, ``n_spot_errors``, ``spot_check_error_rate`` and
    its ``spot_lo`` / ``spot_hi``.
    """
    err, spot = np.asarray(is_error, bool), np.asarray(is_spot, bool)
    n_spot = int(spot.sum())
    k_spot = int(err[spot].sum())
    s_lo, s_hi = wilson(k_spot, n_spot)
    out = {"share": None, "lo": None, "hi": None, "standard_error": None, "n_reviewed": int(len(err)),
           "n_errors": int(err.sum()), "n_spot_checks": n_spot, "n_spot_errors": k_spot,
           "spot_check_error_rate": float(k_spot / n_spot) if n_spot else None,
           "spot_lo": s_lo if n_spot else None, "spot_hi": s_hi if n_spot else None}
    if n_spot < MIN_SPOT_CHECKS:
        return {**out, "why": f"{n_spot} of the {MIN_SPOT_CHECKS} spot checks needed were decided (the report's "
                              "spot-check cards: random rows, so that your decisions speak for every row)"}
    rest = max(int(n_rows) - int((~spot).sum()), 0)  # rows the queue did not show: the spot checks' population
    rate = out["spot_check_error_rate"]
    exact = int(err[~spot].sum())
    n = max(int(n_rows), 1)
    se = np.sqrt(max(rate * (1 - rate), 1e-12) / n_spot) * rest / n
    return {**out, "share": float(min((exact + rate * rest) / n, 1.0)), "lo": float(min((exact + s_lo * rest) / n, 1.0)),
            "hi": float(min((exact + s_hi * rest) / n, 1.0)), "standard_error": float(se), "why": None}


def share_for_flags(used: str | None, share: float | None, reviewed: dict) -> float | None:
    """The share of wrong labels the ``planted`` threshold rule flags: the share the run uses, except
    that spot checks with no wrong label give the top of their interval — no error in 30 random rows
    is no evidence of none in the rest, and a point estimate of 0 would flag nothing to review."""
    if used == "reviewed" and reviewed.get("n_spot_errors") == 0 and reviewed.get("hi") is not None:
        return float(reviewed["hi"])
    return share


def recent_queue_rate(rank: np.ndarray, is_error: np.ndarray, is_spot: np.ndarray,
                      latest: np.ndarray | None = None) -> dict:
    """The error rate of the last ``RECENT_CARDS`` queue cards (not spot checks; of the ``latest``
    round when given; the highest ranks when reviewed, i.e. the deepest the queue went): what the next
    queue cards are expected to hold. ``rate`` None below ``MIN_RECENT_CARDS`` such cards."""
    rank = np.asarray(rank, float)
    pick = ~np.asarray(is_spot, bool) & np.isfinite(rank)
    if latest is not None and (pick & latest).sum() >= MIN_RECENT_CARDS:
        pick &= latest
    idx = np.flatnonzero(pick)
    if len(idx) < MIN_RECENT_CARDS:
        return {"rate": None, "n": int(len(idx))}
    last = idx[np.argsort(rank[idx], kind="stable")][-RECENT_CARDS:]
    return {"rate": float(np.asarray(is_error, bool)[last].mean()), "n": int(len(last))}


def choose(planted_share: float | None, reviewed_share: float | None) -> tuple[str | None, float | None]:
    """Which error-share estimate the run uses, and its value: the reviewed one when it exists, else the
    planted one (None, None without either)."""
    if reviewed_share is not None:
        return "reviewed", reviewed_share
    if planted_share is not None and np.isfinite(planted_share):
        return "planted", planted_share
    return None, None

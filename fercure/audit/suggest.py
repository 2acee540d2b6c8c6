"""Suggested labels, ambiguity and the noise transition (pure functions over arrays), and the step
that puts them together with the confidence bands calibrated on the probe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from fercure.audit.bands import confidence_bands
from fercure.audit.scale import estimator_groups
from fercure.audit.signals import class_distribution

# A sample is ambiguous when the top two classes of its suggestion distribution are this close and
# the top one is below this: measured against FER+ vote disagreement, a wider band flagged over half
# the benchmark at barely better than the base rate and sent it all to review (benchmarks/RESULTS.md).
AMBIGUITY_MARGIN = 0.03
AMBIGUITY_MAX_CONFIDENCE = 0.55  # not binding with this margin (p1 − p2 < 0.03 forces p1 < 0.515): a 50/50 face is ambiguous


def suggest_labels(probs: np.ndarray, labels: np.ndarray, is_issue: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Suggested label: for an issue, the most probable class other than the given one (a flag
    says the given label is wrong, so suggesting it back is no suggestion); the given label otherwise.

    Parameters
    ----------
    probs : ndarray (n, K)
    labels : ndarray (n,) of int
    is_issue : ndarray (n,) of bool

    Returns
    -------
    suggested : ndarray (n,) of int
    confidence : ndarray (n,)
        ``probs[suggested]``: how much of the distribution backs the suggestion.
    """
    n = len(labels)
    rows = np.arange(n)
    others = np.where(np.isfinite(probs), probs, -np.inf)
    if n:
        others[rows, labels] = -np.inf
    argmax = np.argmax(others, axis=1) if n else np.zeros(0, int)
    suggested = np.where(is_issue, argmax, labels).astype(int)
    return suggested, probs[rows, suggested] if n else np.zeros(0)


def ambiguity(probs: np.ndarray, *, margin: float = 0.2, max_confidence: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Flag samples whose distribution has no clear winner.

    A sample is ambiguous when its top two probabilities are close (p1 − p2 < ``margin``) and the
    top one is not a clear majority (p1 < ``max_confidence``): a 0.48/0.45 happy/surprise face is
    ambiguous, a 0.70/0.25 face is not. The defaults read the distribution like FER+'s ten votes:
    a label with 6 of 10 votes, or 2 votes ahead, is settled. With them the second condition is
    implied by the first (p1 − p2 < 0.2 and p1 + p2 ≤ 1 force p1 < 0.6); it bites when ``margin`` is
    raised, so a wide margin does not call a 0.65 majority ambiguous.

    Parameters
    ----------
    probs : ndarray (n, K)
    margin : float, default 0.2
    max_confidence : float, default 0.6

    Returns
    -------
    is_ambiguous : ndarray (n,) of bool
    top2_margin : ndarray (n,)
        p1 − p2 (NaN rows → NaN): the audit's ``ambiguous_score`` (low = more ambiguous).
    """
    if probs.shape[0] == 0:
        return np.zeros(0, bool), np.zeros(0)
    if probs.shape[1] < 2:
        return np.zeros(len(probs), bool), np.ones(len(probs))
    top = -np.sort(-np.where(np.isfinite(probs), probs, -np.inf), axis=1)[:, :2]
    p1, p2 = top[:, 0], top[:, 1]
    with np.errstate(invalid="ignore"):
        gap = np.where(np.isfinite(p1) & np.isfinite(p2), p1 - p2, np.nan)
    return (gap < margin) & (p1 < max_confidence), gap


def noise_transition_matrix(given: np.ndarray, suggested: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts C[i, j] of samples given label i and suggested label j (diagonal = kept).

    Parameters
    ----------
    given, suggested : ndarray (n,) of int in [0, n_classes)
    n_classes : int

    Returns
    -------
    ndarray (K, K) of int64
    """
    c = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(c, (np.asarray(given, int), np.asarray(suggested, int)), 1)
    return c


@dataclass(frozen=True)
class Suggestions:
    """The suggestion step's output, one entry per scored row."""

    probs: np.ndarray  # (n, K) the suggestion distribution
    suggested: np.ndarray  # (n,) class index
    confidence: np.ndarray  # (n,) probs[suggested]
    bands: dict  # ``confidence_bands`` on the probe
    is_ambiguous: np.ndarray  # (n,) bool
    gap: np.ndarray  # (n,) p(top) − p(second)


def suggest_step(preds: pd.DataFrame, classes: list[str], given: np.ndarray, is_issue: np.ndarray,
                 suggest_from: Sequence[str], *, margin: float, max_confidence: float) -> Suggestions:
    """Suggested label and its confidence, the confidence bands calibrated on the probe, ambiguity."""
    sugg_probs = class_distribution(preds, classes, tuple(suggest_from))
    suggested, conf = suggest_labels(sugg_probs, given, is_issue)
    probe = estimator_groups(preds) == 1
    finite = np.isfinite(sugg_probs[probe]).all(axis=1)
    top = np.argmax(np.nan_to_num(sugg_probs[probe][finite], nan=-1.0), axis=1) if finite.any() else np.zeros(0, int)
    bands = confidence_bands(sugg_probs[probe][finite].max(axis=1) if finite.any() else np.zeros(0),
                             top == given[probe][finite])
    is_amb, gap = ambiguity(sugg_probs, margin=margin, max_confidence=max_confidence)
    return Suggestions(sugg_probs, suggested, conf, bands, is_amb, gap)

"""Counting wrong labels without ground truth (pure functions over arrays): the confident joint,
its calibrated per-class counts, the count-then-rank flags, the two-component mixture, the retrain's
held-out vote, the planted-flip counts. The threshold rules (``fercure.audit.rules``) compose them.

``threshold_method="retrain"`` (``DEFAULT_THRESHOLD``): a sample is an issue when the run's second
model, trained without it, still finds its label suspect (``rules.Retrain``); a run without the retrain
falls back to ``noise_rate`` and ``stats["threshold_method_used"]`` says so.
``threshold_method="noise_rate"``: count with the confident joint, rank with the score —
cleanlab's count-then-rank rule in its per-class form (``find_label_issues(...,
filter_by="prune_by_class")``; its default ``"prune_by_noise_rate"`` differs as noted below). (1)
The confident joint C[given, confident class] is built on the audit distribution p̄ with the
per-class thresholds t_j below (``confident_joint``). (2) Each row j is calibrated to the class size
as in cleanlab's ``calibrate_confident_joint``: scaled so it sums to the number of samples labelled
j (samples that clear no threshold are missing from the raw joint), so class j is estimated to hold
n_j = round(size_j × off-diagonal_j / row_j) wrong labels, at most size_j − 1 (cleanlab's
``min_examples_per_class=1``) (``noise_rate_counts``). (3) The n_j samples labelled j with the
lowest ``label_score`` are flagged, ties broken by manifest order
(``find_label_issues_noise_rate``). ``stats["noise_rate"]`` records n_j, the confident joint and the
per-class score cut (the label_score of the last flagged sample), which is also the per-class
table's ``threshold``. cleanlab's ``prune_by_noise_rate`` splits each n_j further over the (given,
true) cells and ranks by margin; the per-class form ranks by our score alone. On synthetic
probabilities with p(given) as the score the counts agree with cleanlab's ``prune_by_class`` to a
few samples (tests/test_audit.py).
``threshold_method="mixture"``: a two-component Gaussian mixture fitted by EM on
logit(label_score); a sample is an issue when its score lies below the point where the low
component's posterior crosses 0.5 (DivideMix's per-sample-loss GMM, applied to the score). Guard:
when the fit is degenerate or its "low" component is the majority (that is the bulk of the data,
not a minority of wrong labels), the confident joint decides instead, and
``stats["threshold_method_used"]`` says which did.
``threshold_method="confident_joint"``: cleanlab's per-class thresholds t_j = mean of p̄_j over samples
labelled j, on the audit distribution p̄ (mean over epochs); a sample labelled y is an issue when
p̄_y < t_y and some other class k has p̄_k ≥ t_k — the off-diagonal of the confident joint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd


def per_class_thresholds(probs: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Confident-learning thresholds t_j = mean of probs[:, j] over samples labelled j.

    Parameters
    ----------
    probs : ndarray (n, K)
    labels : ndarray (n,) of int
    n_classes : int

    Returns
    -------
    ndarray (K,)
        NaN for a class with no labelled samples (no sample can be confidently that class).
    """
    t = np.full(n_classes, np.nan)
    for j in range(n_classes):
        m = labels == j
        if m.any():
            t[j] = float(np.nanmean(probs[m, j])) if np.isfinite(probs[m, j]).any() else np.nan
    return t


def find_label_issues_confident_joint(probs: np.ndarray, labels: np.ndarray,
                                      thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Off-diagonal of the confident joint.

    A sample labelled y is an issue when ``probs[y] < t_y`` and some k ≠ y has ``probs[k] ≥ t_k``.
    (cleanlab also counts a sample whose own class clears its threshold but loses to another that
    clears its own; requiring ``probs[y] < t_y`` is the more conservative reading.)

    Parameters
    ----------
    probs : ndarray (n, K)
    labels : ndarray (n,) of int
    thresholds : ndarray (K,)
        From ``per_class_thresholds``; NaN entries are never cleared.

    Returns
    -------
    is_issue : ndarray (n,) of bool
    confident_class : ndarray (n,) of int
        Among the other classes that clear their thresholds, the most probable (-1 if none).
    """
    n = len(labels)
    rows = np.arange(n)
    t = np.where(np.isfinite(thresholds), thresholds, np.inf)
    above = probs >= t[None, :]
    above[rows, labels] = False
    own_low = probs[rows, labels] < t[labels]
    masked = np.where(above, probs, -np.inf)
    confident_class = np.where(above.any(axis=1), np.argmax(masked, axis=1), -1) if n else np.zeros(0, int)
    is_issue = own_low & above.any(axis=1) & np.isfinite(probs).all(axis=1)
    return is_issue, confident_class.astype(int)


def confident_joint(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray,
                    n_classes: int) -> np.ndarray:
    """The confident joint C[given, confident class], with the conservative off-diagonal rule.

    A sample labelled y whose own class clears its threshold (``probs[y] >= t_y``) counts on the
    diagonal C[y, y]; a sample that ``find_label_issues_confident_joint`` flags counts in C[y, k],
    k its confident class; a sample that clears no threshold (or has non-finite probabilities) is
    not counted. (cleanlab moves a sample whose own class clears but loses to another class that
    clears too off the diagonal; here it stays on it, so off-diagonal counts are never larger.)

    Parameters
    ----------
    probs : ndarray (n, K)
    labels : ndarray (n,) of int
    thresholds : ndarray (K,)
        From ``per_class_thresholds``; NaN entries are never cleared.
    n_classes : int

    Returns
    -------
    ndarray (K, K) of int64
    """
    labels = np.asarray(labels, int)
    n = len(labels)
    c = np.zeros((n_classes, n_classes), dtype=np.int64)
    if n == 0:
        return c
    rows = np.arange(n)
    t = np.where(np.isfinite(thresholds), thresholds, np.inf)
    finite = np.isfinite(probs).all(axis=1)
    diag = finite & (probs[rows, labels] >= t[labels])
    off, cls = find_label_issues_confident_joint(probs, labels, thresholds)
    np.add.at(c, (labels[diag], labels[diag]), 1)
    np.add.at(c, (labels[off], cls[off]), 1)
    return c


def noise_rate_counts(joint: np.ndarray, class_sizes: np.ndarray) -> np.ndarray:
    """How many wrong labels each given class has, from the confident joint calibrated to the class sizes.

    As cleanlab's ``calibrate_confident_joint``: row j of the joint is scaled to sum to the number
    of samples labelled j (samples that clear no threshold are missing from the raw joint, so the
    raw off-diagonal count undercounts), and the estimate is the calibrated off-diagonal mass,
    rounded half up: n_j = round(size_j × off_j / (off_j + diag_j)). As cleanlab's
    ``min_examples_per_class=1``, at least one sample of each class is kept; a class whose row is
    empty (no sample cleared any threshold) gets 0.

    Parameters
    ----------
    joint : ndarray (K, K)
        ``confident_joint``.
    class_sizes : ndarray (K,)
        Number of samples labelled j (that could be flagged).

    Returns
    -------
    ndarray (K,) of int64, each in [0, max(size_j − 1, 0)]
    """
    joint = np.asarray(joint, dtype=float)
    sizes = np.asarray(class_sizes, dtype=float)
    row = joint.sum(axis=1)
    off = row - np.diag(joint)
    with np.errstate(invalid="ignore", divide="ignore"):
        est = np.where(row > 0, sizes * off / row, 0.0)
    est = np.floor(est + 0.5)
    return np.clip(est, 0, np.maximum(sizes - 1, 0)).astype(np.int64)


def find_label_issues_noise_rate(quality: np.ndarray, labels: np.ndarray, counts: np.ndarray,
                                 tiebreak: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Flag, in each given class j, the ``counts[j]`` samples with the lowest label-quality score.

    Parameters
    ----------
    quality : ndarray (n,)
        Label-quality scores (low = likely wrong); NaN scores are never flagged.
    labels : ndarray (n,) of int
    counts : ndarray (K,) of int
        Per-class number to flag (``noise_rate_counts``); capped at the class's scored samples.
    tiebreak : ndarray (n,), optional
        Order among equal scores (ascending, first flagged first); default the row position.
        ``build_audit`` passes the manifest position, so the flags do not depend on the row order
        of the predictions table.

    Returns
    -------
    is_issue : ndarray (n,) of bool
    cut : ndarray (K,)
        Score of the last flagged sample of each class (NaN where none is flagged): every sample
        of the class scoring below it is flagged, one scoring above it is not, and among samples
        scoring exactly the cut the tiebreak decides.
    """
    q = np.asarray(quality, dtype=float)
    labels = np.asarray(labels, int)
    n = len(labels)
    key = np.arange(n) if tiebreak is None else np.asarray(tiebreak)
    is_issue = np.zeros(n, dtype=bool)
    cut = np.full(len(counts), np.nan)
    for j, m in enumerate(counts):
        idx = np.flatnonzero((labels == j) & np.isfinite(q))
        m = int(min(max(int(m), 0), len(idx)))
        if m == 0:
            continue
        order = idx[np.lexsort((key[idx], q[idx]))]
        is_issue[order[:m]] = True
        cut[j] = q[order[m - 1]]
    return is_issue, cut


@dataclass(frozen=True)
class MixtureFit:
    """A two-component Gaussian mixture on logit(score)."""

    threshold: float  # in score units; score < threshold → the low component dominates
    means: tuple[float, float]  # low, high (score units, via the sigmoid of the logit means)
    weights: tuple[float, float]
    separation: float  # Ashman's D on the logit scale: |μ1 − μ2| / sqrt((σ1² + σ2²) / 2)
    converged: bool


def _logit(x: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    x = np.clip(x, eps, 1 - eps)
    return np.log(x) - np.log1p(-x)


def fit_two_component_mixture(scores: np.ndarray, *, max_iter: int = 200, tol: float = 1e-6) -> MixtureFit:
    """Fit a two-component 1-D Gaussian mixture by EM on logit(scores) and return the cut.

    Parameters
    ----------
    scores : ndarray (n,)
        Scores in 0..1 (NaN ignored).
    max_iter, tol : EM stopping rule.

    Returns
    -------
    MixtureFit
        ``threshold`` is the score where the low component's posterior crosses 0.5 between the two
        means; 0.0 (flag nothing) when the fit is degenerate (fewer than 4 scores, a single mode).
    """
    z = _logit(np.asarray(scores, dtype=float)[np.isfinite(scores)])
    if len(z) < 4 or np.ptp(z) < 1e-9:
        return MixtureFit(0.0, (math.nan, math.nan), (math.nan, math.nan), 0.0, False)
    mu = np.quantile(z, [0.2, 0.8]).astype(float)
    var = np.full(2, max(np.var(z), 1e-6))
    w = np.array([0.5, 0.5])
    floor = 1e-4 * np.var(z) + 1e-8  # keeps a component from collapsing onto one point
    prev, converged = -np.inf, False
    for _ in range(max_iter):
        logp = -0.5 * ((z[:, None] - mu) ** 2 / var + np.log(2 * np.pi * var)) + np.log(w)
        m = logp.max(axis=1, keepdims=True)
        ll = float((m[:, 0] + np.log(np.exp(logp - m).sum(axis=1))).sum())
        r = np.exp(logp - m)
        r /= r.sum(axis=1, keepdims=True)
        nk = r.sum(axis=0) + 1e-12
        w = nk / nk.sum()
        mu = (r * z[:, None]).sum(axis=0) / nk
        var = np.maximum((r * (z[:, None] - mu) ** 2).sum(axis=0) / nk, floor)
        if ll - prev < tol * abs(ll):
            converged = True
            break
        prev = ll
    lo, hi = (0, 1) if mu[0] <= mu[1] else (1, 0)
    sig = lambda v: float(1.0 / (1.0 + np.exp(-v)))  # noqa: E731
    # Posterior of the low component on a grid between the two means; the cut is its 0.5 crossing.
    grid = np.linspace(mu[lo], mu[hi], 2001)
    lp = -0.5 * ((grid[:, None] - mu) ** 2 / var + np.log(2 * np.pi * var)) + np.log(w)
    post_lo = np.exp(lp[:, lo] - np.logaddexp(lp[:, 0], lp[:, 1]))
    cross = np.flatnonzero(post_lo < 0.5)
    if mu[hi] - mu[lo] < 1e-6 or len(cross) == 0 or cross[0] == 0:
        threshold = 0.0
    else:
        threshold = sig(grid[cross[0]])
    sep = float(abs(mu[hi] - mu[lo]) / np.sqrt((var[0] + var[1]) / 2))
    return MixtureFit(threshold, (sig(mu[lo]), sig(mu[hi])), (float(w[lo]), float(w[hi])), sep, converged)


def find_label_issues_retrain(predictions: pd.DataFrame, classes: Sequence[str], given: np.ndarray) -> np.ndarray | None:
    """The retrain rule: a sample is a label issue when it is a suspect (the lowest ``retrain_drop``
    share of its estimator group by that group's own score: ``fercure.train.detection``), the
    second model never trained on it, and that model, judging it held out, predicts another class.
    Trained, probe and planted rows go through the same two steps, so each group is flagged at
    the rate its errors warrant. None when the run has no retrain (the caller falls back).

    Two models must agree, and the second one never saw the sample's label, so a label the first
    model merely found hard, or memorised, does not decide; the count is not set in advance but
    follows from how many suspects the held-out model contradicts."""
    cols = [f"retrain_p_{c}" for c in classes]
    if "retrain_held_out" not in predictions.columns or not all(c in predictions.columns for c in cols):
        return None
    held = predictions["retrain_held_out"].fillna(False).to_numpy(dtype=bool)
    # runs before retrain_suspect: the suspects were exactly the held-out rows
    suspect = predictions["retrain_suspect"].fillna(False).to_numpy(dtype=bool) \
        if "retrain_suspect" in predictions.columns else held
    rp = predictions[cols].to_numpy(dtype=float)
    if not held.any() or not np.isfinite(rp[held]).all():
        return None
    return suspect & held & (np.argmax(np.nan_to_num(rp, nan=-1.0), axis=1) != np.asarray(given))


def planted_counts(share: float, n_scored: int, noise_counts: np.ndarray, class_sizes: np.ndarray) -> np.ndarray:
    """Per-class numbers to flag when the total comes from the planted-flip estimate of the error
    share: ``share × n_scored`` in all, spread over the classes as the confident joint spreads its
    own estimate (by class size where it found none)."""
    total = int(round(float(share) * n_scored)) if np.isfinite(share) else 0
    sizes = np.asarray(class_sizes, dtype=float)
    w = np.asarray(noise_counts, dtype=float)
    if w.sum() <= 0:
        w = sizes.copy()
    if total <= 0 or w.sum() <= 0:
        return np.zeros(len(sizes), dtype=np.int64)
    raw = total * w / w.sum()
    out = np.floor(raw).astype(np.int64)
    out[np.argsort(-(raw - out))[: total - out.sum()]] += 1  # largest remainders
    return np.minimum(out, np.maximum(sizes.astype(np.int64) - 1, 0))

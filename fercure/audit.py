"""Per-sample signals → label-quality scores, thresholds, suggested labels (pure functions).

The functional core of the audit stage, in the style of cleanlab's ``rank.py`` / ``filter.py``:
functions over numpy arrays with no file I/O. ``build_audit`` composes them over the manifest and a
run's predictions table; ``fercure.stages.audit`` does the reading and writing.

The audit is a pipeline of named steps: ``align_predictions`` → ``score_step`` (a signal or blend of
``SIGNAL_FUNCS``, then every estimator group put on the trained rows' scale by ``align_groups``) →
a threshold rule of ``THRESHOLD_RULES`` → ``suggest_step`` (suggestion; confidence bands calibrated
on the probe) → ``ambiguity`` → ``verdict_table``. A new signal or rule is one function and one entry.

Scores
------
The audit's ``label_score`` column (computed by ``label_quality``) is in 0..1, low = the given label
is likely wrong (cleanlab's convention; every ``<issue>_score`` column points the same way). The
audit's default (``DEFAULT_SCORE``) is ``confidence_variability``: the mean over training epochs of
p(given label) plus its standard deviation, scaled to 0..1 — dataset cartography's *confidence* and
*variability*: a wrong label stays low and steady, an ambiguous one swings. Other
signals of the predictions table can be used alone or blended (see ``label_quality``); how each
measured is in docs/METHODS.md and benchmarks/RESULTS.md (figures live there, not here).

Thresholds (no ground truth)
----------------------------
``threshold_method="retrain"`` (``DEFAULT_THRESHOLD``): a sample is an issue when the run's second
model, trained without it, still finds its label suspect (``rule_retrain``); a run without the retrain
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
All three are always computed; provenance carries each one's count, so the alternatives show.

Which rule is the default, and why, is measured in benchmarks/RESULTS.md (audit variants).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from fercure import exposure
from fercure import rerank
from fercure import review_calibration as rc
from fercure import strength as st
from fercure.metrics import auroc

# Signals that can make up label_score, each mapped to 0..1 with low = likely wrong.
SIGNALS = ("confidence", "confidence_variability", "aum", "last", "self_confidence", "oof", "reliability",
           "importance", "retrain", "fusion", "knn", "eval")
# max of μ + σ for a variable in [0, 1]: σ² ≤ μ(1 − μ) (Bhatia–Davis), so μ + σ ≤ (1 + √2) / 2.
_MAX_MEAN_PLUS_STD = (1.0 + np.sqrt(2.0)) / 2.0
THRESHOLD_METHODS = ("retrain", "noise_rate", "planted", "mixture", "confident_joint")
# The defaults, chosen by the label-noise benchmark (benchmarks/RESULTS.md); every entry point reads them here.
DEFAULT_SCORE = "confidence_variability"
DEFAULT_THRESHOLD = "retrain"
# A sample is ambiguous when the top two classes of its suggestion distribution are this close and
# the top one is below this: measured against FER+ vote disagreement, a wider band flagged over half
# the benchmark at barely better than the base rate and sent it all to review (benchmarks/RESULTS.md).
AMBIGUITY_MARGIN = 0.03
AMBIGUITY_MAX_CONFIDENCE = 0.55  # not binding with this margin (p1 − p2 < 0.03 forces p1 < 0.515): a 50/50 face is ambiguous



# ---------------------------------------------------------------------------------------------
# Distributions and scores


def class_distribution(predictions: pd.DataFrame, classes: Sequence[str],
                       prefixes: Sequence[str] = ("mean_p",)) -> np.ndarray:
    """The per-sample class distribution the audit works on.

    Parameters
    ----------
    predictions : DataFrame
        A run's predictions table with ``<prefix>_<class>`` columns.
    classes : sequence of str
        Class names, in training-index order.
    prefixes : sequence of str, default ("mean_p",)
        Column families to average: ``"mean_p"`` (mean over epochs of the training-time
        probabilities), ``"p"`` (final-epoch eval probabilities), ``"rel_p"`` (ARBEx-corrected).
        A family whose columns are missing or non-finite for a row is skipped for that row; when
        ``mean_p`` is missing altogether, ``p`` is used.

    Returns
    -------
    ndarray of shape (n, K)
        Rows sum to 1 (NaN rows where no family had values).
    """
    k = len(classes)
    stack = []
    for prefix in prefixes:
        cols = [f"{prefix}_{c}" for c in classes]
        if all(c in predictions.columns for c in cols):
            stack.append(predictions[cols].to_numpy(dtype=float))
    if not stack:
        cols = [f"p_{c}" for c in classes]
        missing = [c for c in cols if c not in predictions.columns]
        if missing:
            raise ValueError(f"predictions has none of the {list(prefixes)} column families, nor p_<class> "
                             f"(missing e.g. {missing[:3]})")
        stack.append(predictions[cols].to_numpy(dtype=float))
    arr = np.stack(stack)  # (F, n, K)
    ok = np.isfinite(arr).all(axis=2, keepdims=True)
    total = np.where(ok, arr, 0.0).sum(axis=0)
    count = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        probs = total / count
        probs = np.clip(probs, 0.0, None)
        probs = probs / probs.sum(axis=1, keepdims=True)
    return probs.reshape(-1, k)


@dataclass(frozen=True)
class SignalInputs:
    """What a signal function reads: the predictions table, the audit distribution, the given
    labels, and the two quantities most signals share (mean p(given) and its spread over epochs)."""

    predictions: pd.DataFrame
    probs: np.ndarray  # (n, K)
    given: np.ndarray  # (n,)
    conf: np.ndarray  # mean p(given) over epochs (the distribution's p(given) where absent)
    std: np.ndarray  # its spread over epochs (the typical spread where a row has none)

    def col(self, name: str) -> np.ndarray:
        if name in self.predictions.columns:
            return self.predictions[name].to_numpy(dtype=float)
        return np.full(len(self.predictions), np.nan)


# The label-quality signals, by name: each a function of ``SignalInputs`` → (n,) in 0..1, low =
# the given label is likely wrong. A new signal is one function and one entry.
SIGNAL_FUNCS = {
    "confidence": lambda x: x.conf,
    # dataset cartography's confidence and variability together: a wrong label stays low *and*
    # steady, a hard but right one swings
    "confidence_variability": lambda x: np.clip((x.conf + x.std) / _MAX_MEAN_PLUS_STD, 0.0, 1.0),
    "aum": lambda x: (x.col("aum") + 1.0) / 2.0,
    "last": lambda x: x.col("last_p_given"),
    "self_confidence": lambda x: x.probs[np.arange(len(x.given)), x.given] if len(x.given) else np.zeros(0),
    "oof": lambda x: x.col("oof_p_given"),
    "reliability": lambda x: x.col("reliability"),
    "importance": lambda x: x.col("importance_weight"),
    # the retrain's second opinion averaged with the first: held out for the suspects it dropped
    "retrain": lambda x: np.where(np.isfinite(x.col("retrain_p_given")), (x.conf + x.col("retrain_p_given")) / 2.0,
                                  x.conf),
    "fusion": lambda x: x.col("fusion_quality"),
    "knn": lambda x: x.col("knn_agreement"),
    "eval": lambda x: x.col("mean_p_given_eval"),
}
assert tuple(SIGNAL_FUNCS) == SIGNALS


def signals_from_predictions(predictions: pd.DataFrame, probs: np.ndarray,
                             given: np.ndarray) -> dict[str, np.ndarray]:
    """Every label-quality signal of ``SIGNAL_FUNCS`` the predictions table offers, each in 0..1
    (low = wrong); absent columns give all-NaN arrays.

    ``confidence`` mean_p_given; ``confidence_variability`` (mean + std of p_given over epochs) /
    1.207; ``aum`` (aum + 1) / 2 (aum is in [-1, 1]); ``last`` last_p_given; ``self_confidence``
    p(given) of the audit distribution; ``oof`` oof_p_given; ``reliability``; ``importance`` SCN's
    α; ``retrain`` first and second model averaged; ``fusion``; ``knn`` neighbour agreement;
    ``eval`` mean eval-mode p(given).
    """
    n = len(predictions)
    given = np.asarray(given, dtype=int)
    p_given = probs[np.arange(n), given] if n else np.zeros(0)

    def col(name: str) -> np.ndarray:
        return predictions[name].to_numpy(dtype=float) if name in predictions.columns else np.full(n, np.nan)

    conf = col("mean_p_given")
    conf = np.where(np.isfinite(conf), conf, p_given)
    std = np.sqrt(np.clip(col("var_p_given"), 0.0, None))
    # Probe and planted samples have no spread of their own (not trained with their given label);
    # they get the typical spread, so their score is their confidence shifted like everyone's.
    std = np.where(np.isfinite(std), std, np.nanmedian(std) if np.isfinite(std).any() else 0.0)
    x = SignalInputs(predictions, probs, given, conf, std)
    return {k: np.clip(np.asarray(f(x), dtype=float), 0.0, 1.0) for k, f in SIGNAL_FUNCS.items()}


def label_quality(signals: Mapping[str, np.ndarray], method: str | Mapping[str, float] = "confidence") -> np.ndarray:
    """Label-quality score in 0..1, low = the given label is likely wrong.

    Parameters
    ----------
    signals : mapping str → ndarray (n,)
        From ``signals_from_predictions``: each already in 0..1, low = likely wrong.
    method : str or mapping str → float, default "confidence"
        A signal name (one of ``SIGNALS``) to use alone, or a mapping ``{signal: weight}`` to
        blend: the weighted mean of the finite signals of each sample (weights renormalised per
        sample, so a missing ``oof`` does not drag a score down). This function's own default is
        ``"confidence"`` (mean p(given) over epochs); the audit passes ``DEFAULT_SCORE``.

    Returns
    -------
    ndarray (n,)
        NaN where no requested signal is finite.

    Raises
    ------
    ValueError
        Unknown signal name, a non-positive total weight, or a requested signal with no finite value.
    """
    weights = {method: 1.0} if isinstance(method, str) else dict(method)
    unknown = [k for k in weights if k not in SIGNALS]
    if unknown:
        raise ValueError(f"unknown label-quality signal(s) {unknown}; choose from {list(SIGNALS)}")
    if sum(weights.values()) <= 0 or any(w < 0 for w in weights.values()):
        raise ValueError(f"label-quality weights must be non-negative with a positive sum, got {weights}")
    n = len(next(iter(signals.values()))) if signals else 0
    num, den = np.zeros(n), np.zeros(n)
    for name, w in weights.items():
        s = np.asarray(signals[name], dtype=float)
        if n and w > 0 and not np.isfinite(s).any():
            raise ValueError(f"signal {name!r} has no values in this run's predictions")
        ok = np.isfinite(s)
        num += np.where(ok, s * w, 0.0)
        den += np.where(ok, w, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


# ---------------------------------------------------------------------------------------------
# Thresholds


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


# ---------------------------------------------------------------------------------------------
# Suggestions, ambiguity, uncertainty


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


def sharpness_rank(sharpness: np.ndarray) -> np.ndarray:
    """``blur_score`` in 0..1, low = blurrier: the share of the dataset's crops that are blurrier
    than this one (ties share their mean rank). The raw measure's scale depends on crop size and
    content, so the score is relative to the dataset, like the blur cut. NaN where no crop."""
    b = np.asarray(sharpness, dtype=float)
    out = np.full(len(b), np.nan)
    ok = np.isfinite(b)
    n = int(ok.sum())
    if n == 1:
        out[ok] = 1.0
    elif n > 1:
        out[ok] = (pd.Series(b[ok]).rank(method="average").to_numpy() - 1.0) / (n - 1)
    return out


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats of each row of ``probs`` (0 log 0 = 0)."""
    p = np.asarray(probs, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    out = terms.sum(axis=1)
    return np.where(np.isfinite(p).all(axis=1), out, np.nan)


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


def blur_issues(sharpness: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, float]:
    """Flag blurry crops: ``sharpness`` (the manifest's variance of the Laplacian, higher = sharper)
    below ``threshold``.

    Without a threshold, a robust low-outlier cut on log1p(sharpness) is used: median − 3 × 1.4826
    × MAD, i.e. about 3 standard deviations below typical sharpness for this dataset, whatever the
    scale of the measure and the crop size.

    Returns
    -------
    is_issue : ndarray (n,) of bool (False where the score is NaN)
    threshold : float (NaN when there are no scores)
    """
    b = np.asarray(sharpness, dtype=float)
    ok = np.isfinite(b)
    if threshold is None:
        if ok.sum() < 2:
            return np.zeros(len(b), bool), math.nan
        lb = np.log1p(np.clip(b[ok], 0, None))
        med = np.median(lb)
        spread = np.median(np.abs(lb - med)) * 1.4826
        if spread == 0:  # over half the crops share one value: fall back to the standard deviation
            spread = float(np.std(lb))
        threshold = float(np.expm1(med - 3 * spread)) if spread > 0 else -math.inf
    return ok & (b < threshold), float(threshold)


# ---------------------------------------------------------------------------------------------
# The audit table


def _json_float(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


# ---------------------------------------------------------------------------------------------
# One scale for every row


# Which estimator scored a row's given label (``fercure.train.detection.GROUPS``): the trained rows'
# in-sample dynamics, the probe's held-out view, the planted rows' second-model held-out view.
GROUPS = ("trained", "probe", "planted")


def estimator_groups(predictions: pd.DataFrame) -> np.ndarray:
    """(n,) index into ``GROUPS`` from the predictions' ``probe`` and ``planted`` columns (all
    ``trained`` when the run has neither)."""
    n = len(predictions)

    def flag(name: str) -> np.ndarray:
        return predictions[name].fillna(False).to_numpy(dtype=bool) if name in predictions.columns else np.zeros(n, bool)

    return np.where(flag("probe"), 1, np.where(flag("planted"), 2, 0)).astype(np.int64)


def align_groups(score: np.ndarray, group: np.ndarray, reference: int = 0) -> np.ndarray:
    """Put every group's scores on the reference group's scale by rank.

    A row of another group gets the reference group's score at the row's quantile within its own
    group (mid-rank (i + 0.5) / m). The probe and the planted rows are drawn at random (the probe
    stratified by class), so each group holds about the same share of wrong labels as the rest;
    their estimators are harsher (held out) than the trained rows' in-sample one, so their raw
    scores would crowd the bottom of the list. The order within each group is unchanged; the
    reference group's scores are returned as they are. NaN stays NaN; a group is left as it is
    when the reference has no finite score.
    """
    score = np.asarray(score, dtype=float)
    group = np.asarray(group)
    out = score.copy()
    ref = np.sort(score[(group == reference) & np.isfinite(score)])
    if len(ref) == 0:
        return out
    for g in np.unique(group):
        if g == reference:
            continue
        idx = np.flatnonzero((group == g) & np.isfinite(score))
        if len(idx) == 0:
            continue
        ranks = pd.Series(score[idx]).rank(method="average").to_numpy() - 0.5
        out[idx] = np.quantile(ref, ranks / len(idx))
    return out


# ---------------------------------------------------------------------------------------------
# Suggestion confidence, calibrated on the probe

# The bands by the measured share of held-out predictions that matched their (given) label:
# "likely" when right more often than wrong, "lead" from one in three, "guess" below.
BAND_NAMES = ("guess", "lead", "likely")
BAND_ACCURACY = (0.0, 1.0 / 3.0, 0.5)
MIN_CALIBRATION_ROWS = 30  # below this the probe says too little; the bands fall back to the lift rule
MIN_BAND_ROWS = st.MIN_RATE_ROWS  # probe rows a band needs before its accuracy is printed (or it is a band)


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


def confidence_bands(confidence: np.ndarray, correct: np.ndarray,
                     accuracy_cuts: Sequence[float] = BAND_ACCURACY) -> dict:
    """Band cuts on the suggestion confidence, set where the measured accuracy crosses each cut.

    Parameters
    ----------
    confidence : ndarray (m,)
        The top-class probability of held-out predictions (the probe).
    correct : ndarray (m,) of bool
        Whether that top class is the given label.
    accuracy_cuts : the least measured accuracy of each band, ascending from 0.

    Returns
    -------
    dict
        ``calibrated`` False (and no cuts) with fewer than ``MIN_CALIBRATION_ROWS`` rows;
        otherwise ``cuts`` (the least confidence of each band, the first 0; infinite for a band with
        fewer than ``MIN_BAND_ROWS`` rows, folded into the band below), and per band ``n``, the share
        of its probe rows whose top class was the given label (``accuracy``) and its Wilson interval
        (``lo``, ``hi``); these three None below ``MIN_BAND_ROWS`` rows. The given labels are the noisy
        ones under audit: agreement with them is not how often a suggestion is right.
    """
    conf = np.asarray(confidence, float)
    ok = np.isfinite(conf)
    conf, correct = conf[ok], np.asarray(correct, bool)[ok]
    out: dict = {"names": list(BAND_NAMES), "accuracy_cuts": [float(a) for a in accuracy_cuts],
                 "n_calibration": int(len(conf))}
    if len(conf) < MIN_CALIBRATION_ROWS:
        return {**out, "calibrated": False}
    xs, fit = isotonic_fit(conf, correct.astype(float))
    cuts = [0.0]
    for a in accuracy_cuts[1:]:
        reach = np.flatnonzero(fit >= a)
        cuts.append(float(xs[reach[0]]) if len(reach) else math.inf)
    band = band_of(conf, cuts)
    # A band of fewer than MIN_BAND_ROWS probe rows measures nothing ("100 % right of 1"): from the top,
    # such a band is folded into the one below, so no card is called likely on a handful of rows.
    for i in range(len(cuts) - 1, 0, -1):
        if math.isfinite(cuts[i]) and (band == i).sum() < MIN_BAND_ROWS:
            cuts[i] = math.inf
            band = band_of(conf, cuts)
    rates = [st.share_with_interval(int(correct[band == i].sum()), int((band == i).sum()), MIN_BAND_ROWS)
             for i in range(len(cuts))]
    out.update(calibrated=True, cuts=[_json_float(c) for c in cuts],
               n=[r["n"] for r in rates], accuracy=[r["share"] for r in rates],
               lo=[r["lo"] for r in rates], hi=[r["hi"] for r in rates], min_rows=MIN_BAND_ROWS)
    return out


def band_of(confidence: np.ndarray, cuts: Sequence[float | None]) -> np.ndarray:
    """Band index of each confidence: the last band whose cut it reaches (NaN → 0)."""
    c = np.asarray([math.inf if v is None else v for v in cuts], float)
    conf = np.nan_to_num(np.asarray(confidence, float), nan=-1.0)
    return np.clip(np.searchsorted(c, conf, side="right") - 1, 0, len(c) - 1)


# ---------------------------------------------------------------------------------------------
# The audit as steps: score → threshold → suggest → ambiguity → verdict


@dataclass
class Scored:
    """What the threshold rules read: the rows' scores on one scale and the distributions."""

    quality: np.ndarray  # label_score (n,), one scale (``align_groups``)
    probs: np.ndarray  # the audit distribution (n, K)
    given: np.ndarray  # (n,) class index
    group: np.ndarray  # (n,) estimator group
    predictions: pd.DataFrame
    classes: list[str]
    tiebreak: np.ndarray  # manifest position
    run_meta: Mapping
    error_share: float = math.nan  # the share of wrong labels the run uses (``calibration_stats``)

    # The rule and the verdict's provenance both read these: computed once per audit.
    @cached_property
    def cj(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Class thresholds, confident joint (on the trained rows), calibrated per-class counts, class sizes."""
        k = len(self.classes)
        ref = _reference_rows(self)
        t = per_class_thresholds(self.probs[ref], self.given[ref], k)
        joint = confident_joint(self.probs[ref], self.given[ref], t, k)
        sizes = np.bincount(self.given[np.isfinite(self.probs).all(axis=1)], minlength=k)
        return t, joint, noise_rate_counts(joint, sizes), sizes

    @cached_property
    def mixture(self) -> "MixtureFit":
        return fit_two_component_mixture(self.quality)


@dataclass
class Flags:
    """A threshold rule's decision."""

    is_issue: np.ndarray  # (n,) bool
    rule: str  # the rule that decided (a rule may hand over to another)
    counts: np.ndarray  # (K,) flagged per class
    cut: np.ndarray | None  # (K,) per-class score cut, or None when the rule is not a cut on the score
    global_cut: float | None = None  # one cut for every class (mixture)


def score_step(preds: pd.DataFrame, classes: list[str], given: np.ndarray, method, distribution) -> tuple:
    """signals → label_score on one scale. Returns (probs, quality, group)."""
    probs = class_distribution(preds, classes, tuple(distribution))
    signals = signals_from_predictions(preds, probs, given)
    group = estimator_groups(preds)
    return probs, align_groups(label_quality(signals, method), group), group


def _reference_rows(s: Scored) -> np.ndarray:
    """Rows the confident joint is counted on: the trained rows (one estimator); all rows when none."""
    ref = s.group == 0
    return ref if ref.any() else np.ones(len(s.group), bool)


def _cj_parts(s: Scored) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class thresholds, confident joint (on the trained rows) and the calibrated per-class counts."""
    return s.cj[:3]


def rule_noise_rate(s: Scored) -> Flags:
    _, _, counts = _cj_parts(s)
    issue, cut = find_label_issues_noise_rate(s.quality, s.given, counts, tiebreak=s.tiebreak)
    return Flags(issue, "noise_rate", counts, cut)


def rule_planted(s: Scored) -> Flags:
    """Flag as many rows as the run's error-share estimate says are wrong: the reviewed rows' estimate
    when they reach across the ranks, else the planted flips' (``calibration_stats``)."""
    share = s.error_share
    if not np.isfinite(share):
        return rule_noise_rate(s)  # a run without planted flips: the confident joint counts
    _, _, nr, sizes = s.cj
    counts = planted_counts(share, int(np.isfinite(s.quality).sum()), nr, sizes)
    issue, cut = find_label_issues_noise_rate(s.quality, s.given, counts, tiebreak=s.tiebreak)
    return Flags(issue, "planted", counts, cut)


def rule_retrain(s: Scored) -> Flags:
    issue = find_label_issues_retrain(s.predictions, s.classes, s.given)
    if issue is None:
        return rule_noise_rate(s)  # a run without the retrain: the confident joint counts
    return Flags(issue, "retrain", np.bincount(s.given[issue], minlength=len(s.classes)), None)


def rule_mixture(s: Scored) -> Flags:
    mix = s.mixture
    if not (mix.threshold > 0 and mix.weights[0] <= 0.5):
        return rule_confident_joint(s)  # degenerate, or the "low" component is the bulk of the data
    issue = np.isfinite(s.quality) & (s.quality < mix.threshold)
    return Flags(issue, "mixture", np.bincount(s.given[issue], minlength=len(s.classes)), None,
                 global_cut=mix.threshold)


def rule_confident_joint(s: Scored) -> Flags:
    t, _, _ = _cj_parts(s)
    issue, _ = find_label_issues_confident_joint(s.probs, s.given, t)
    return Flags(issue, "confident_joint", np.bincount(s.given[issue], minlength=len(s.classes)), None)


# The threshold rules, by name: a new rule is one function of ``Scored`` → ``Flags`` and one entry.
THRESHOLD_RULES = {"retrain": rule_retrain, "noise_rate": rule_noise_rate, "planted": rule_planted,
                   "mixture": rule_mixture, "confident_joint": rule_confident_joint}
assert tuple(THRESHOLD_RULES) == THRESHOLD_METHODS


def suggest_step(preds: pd.DataFrame, classes: list[str], given: np.ndarray, is_issue: np.ndarray,
                 suggest_from: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Suggested label and its confidence; the confidence bands calibrated on the probe.

    Returns (suggestion distribution, suggested, confidence, bands)."""
    sugg_probs = class_distribution(preds, classes, tuple(suggest_from))
    suggested, conf = suggest_labels(sugg_probs, given, is_issue)
    probe = estimator_groups(preds) == 1
    finite = np.isfinite(sugg_probs[probe]).all(axis=1)
    top = np.argmax(np.nan_to_num(sugg_probs[probe][finite], nan=-1.0), axis=1) if finite.any() else np.zeros(0, int)
    bands = confidence_bands(sugg_probs[probe][finite].max(axis=1) if finite.any() else np.zeros(0),
                             top == given[probe][finite])
    return sugg_probs, suggested, conf, bands


def _per_class_cut(flags: Flags, t: np.ndarray) -> np.ndarray:
    """The threshold the per-class table shows: the rule's score cut; the confident-joint class
    threshold under that rule; none for a rule that is not a per-class cut on the score."""
    if flags.cut is not None:
        return flags.cut
    if flags.rule == "confident_joint":
        return t
    return np.full(len(t), np.nan)


def build_audit(
    manifest: pd.DataFrame,
    predictions: pd.DataFrame,
    classes: list[str],
    *,
    method: str | Mapping[str, float] = DEFAULT_SCORE,
    threshold_method: str = DEFAULT_THRESHOLD,
    distribution: Sequence[str] = ("mean_p",),
    suggest_from: Sequence[str] = ("retrain_p", "knn_p", "mean_p"),
    ambiguity_margin: float = AMBIGUITY_MARGIN,
    ambiguity_max_confidence: float = AMBIGUITY_MAX_CONFIDENCE,
    blur_threshold: float | None = None,
    run_meta: Mapping | None = None,
    reviewed: pd.DataFrame | None = None,
    decided: pd.DataFrame | None = None,
    queue_order: str = "auto",
) -> tuple[pd.DataFrame, dict]:
    """One audit row per manifest row, and the thresholds/statistics behind the flags.

    The steps: ``align_predictions`` (rows, given labels) → ``_score_and_flag`` (``score_step``:
    label_score on one scale, then the rule of ``THRESHOLD_RULES``) → ``suggest_step`` (suggestion,
    calibrated bands) → ``ambiguity`` → ``verdict_table`` (the table, the reasons, the stats).

    Parameters
    ----------
    manifest : DataFrame
        WS/manifest.parquet (sample_id, source_path, label, split, face_status, face_score,
        sharpness, duplicate_of, store_index; ``reason`` used when present).
    predictions : DataFrame
        A run's predictions.parquet (one row per trained sample).
    classes : list of str
        The run's classes, in training-index order.
    method : str or mapping
        Label-quality signal or blend; see ``label_quality``.
    threshold_method : one of ``THRESHOLD_METHODS``
        How ``is_label_issue`` is decided; see the module docstring. ``stats["threshold_method_used"]``
        says which rule decided (a rule without its inputs hands over to another).
    distribution : sequence of str, default ("mean_p",)
        Column families averaged into the audit distribution; see ``class_distribution``.
    ambiguity_margin, ambiguity_max_confidence : float
        See ``ambiguity``.
    blur_threshold : float, optional
        Fixed blur cut; default is data-driven (``blur_issues``).
    reviewed : DataFrame, optional
        The run's trusted table (``fercure.trusted``): those rows are scored about their reviewed
        label and never flagged (``reviewed_step``).
    decided : DataFrame, optional
        Decisions made after the run (``audit-labels --trusted``; the trusted table's columns): never
        flagged either, but the run trained them with their given label, so their scores are about
        it, and they teach the re-ranker (``fercure.rerank``). A sample in both takes this decision.
    queue_order : one of ``fercure.rerank.QUEUE_ORDERS``
        How ``review_rank`` orders the rows nobody reviewed (``fercure.rerank.order_queue``).

    Returns
    -------
    audit : DataFrame
        Manifest order. Samples the run did not train get NaN scores, ``is_label_issue`` False,
        ``trained`` False and a ``reason`` saying why.
    stats : dict
        JSON-ready: options, class thresholds, the rule's counts and per-class score cuts, mixture
        fit, the confidence bands, counts, transition matrix. ``per_class[c]["threshold"]`` is the
        threshold that decided class c's flags, None when the rule is not a cut on the score
        (``retrain``, ``mixture``: its one cut is ``stats["mixture"]["threshold"]``).

    Raises
    ------
    ValueError
        Bad options, duplicate sample ids in predictions, a given label outside ``classes``, or a
        prediction whose given label disagrees with the manifest (the manifest changed after
        training).
    """
    if threshold_method not in THRESHOLD_RULES:
        raise ValueError(f"threshold_method must be one of {list(THRESHOLD_METHODS)}, not {threshold_method!r}")
    classes = [str(c) for c in classes]
    as_given, manifest = manifest, with_reviewed_labels(manifest, reviewed)
    preds, rows, given, given_str, n_unmatched = align_predictions(manifest, predictions, classes)
    trained_with = reviewed  # the decisions the run trained with (their rows are scored about them)
    reviewed = combine_reviewed(reviewed, decided)
    # a decision made after the run to drop a row leaves it among the trained rows, not beside them
    late_drops = 0 if decided is None else int(np.isin(
        decided.loc[decided["action"] == "drop", "sample_id"].astype(str), preds["sample_id"].astype(str)).sum())
    reviewed_rows = ReviewedRows.of(reviewed, image_problem_ids(as_given, blur_threshold))
    calibration = calibration_stats(run_meta or {}, reviewed_rows, len(preds) - late_drops)
    scored, flags, is_rev = _score_and_flag(preds, rows, given, classes, method, distribution, threshold_method,
                                            run_meta, reviewed, calibration["share_for_flags"])
    sugg_probs, suggested, sugg_conf, bands = suggest_step(preds, classes, given, flags.is_issue, suggest_from)
    is_amb, gap = ambiguity(sugg_probs, margin=ambiguity_margin, max_confidence=ambiguity_max_confidence)
    is_amb = is_amb & ~is_rev
    audit, stats = verdict_table(manifest, scored, flags, sugg_probs, suggested, sugg_conf, bands, is_amb, gap,
                                 given_str, blur_threshold)
    audit = reviewed_step(audit, as_given, reviewed)
    stats["reviewed"] = reviewed_stats(reviewed)
    stats["calibration"] = calibration
    # the rule's flags before any review: the hand-made order the re-ranker is measured against
    rule_flags = _spread(THRESHOLD_RULES[threshold_method](scored).is_issue, False, rows, len(audit), bool) \
        if is_rev.any() else None
    queue = rerank.order_queue(audit, classes, learnable_verdicts(decided, trained_with), queue_order,
                               rule_flags=rule_flags)
    audit["review_rank"] = pd.Series(queue.rank, index=audit.index).astype("Int64")
    stats["queue"] = queue.stats()
    stats["model_strength"] = strength_stats(run_meta or {}, reviewed_rows, scored.group)
    stats.update(_option_stats(method, threshold_method, flags.rule, distribution, suggest_from, ambiguity_margin,
                               ambiguity_max_confidence, n_unmatched))
    return audit, stats


def _score_and_flag(preds: pd.DataFrame, rows: np.ndarray, given: np.ndarray, classes: list[str],
                    method: str | Mapping[str, float], distribution: Sequence[str], threshold_method: str,
                    run_meta: Mapping | None, reviewed: pd.DataFrame | None,
                    error_share: float | None) -> tuple[Scored, Flags, np.ndarray]:
    """``score_step`` then the threshold rule, reviewed rows unflagged: the scores, the flags and
    which trained rows a reviewer decided (the suggestion and ambiguity steps need all three)."""
    probs, quality, group = score_step(preds, classes, given, method, distribution)
    scored = Scored(quality, probs, given, group, preds, classes, rows, run_meta or {},
                    math.nan if error_share is None else float(error_share))
    is_rev = reviewed_mask(preds["sample_id"].tolist(), reviewed)
    flags = unflag_reviewed(THRESHOLD_RULES[threshold_method](scored), is_rev, len(classes), given)
    return scored, flags, is_rev


def _option_stats(method: str | Mapping[str, float], threshold_method: str, rule_used: str,
                  distribution: Sequence[str], suggest_from: Sequence[str], ambiguity_margin: float,
                  ambiguity_max_confidence: float, n_unmatched: int) -> dict:
    """The options the audit ran with, as the stats record them. ``planted``/``retrain`` asked for
    but handed over (their inputs missing) are recorded as ``noise_rate``, the rule that decided."""
    return {
        "method": method if isinstance(method, str) else dict(method),
        "threshold_method": threshold_method if threshold_method not in ("planted", "retrain") or
        rule_used == threshold_method else "noise_rate",
        "distribution": list(distribution),
        "suggest_from": list(suggest_from),
        "ambiguity_margin": float(ambiguity_margin),
        "ambiguity_max_confidence": float(ambiguity_max_confidence),
        "n_predictions_not_in_manifest": int(n_unmatched),
    }


# ---------------------------------------------------------------------------------------------
# Reviewed rows (``fercure train --trusted``): trained with the reviewer's label, never flagged again


def with_reviewed_labels(manifest: pd.DataFrame, reviewed: pd.DataFrame | None) -> pd.DataFrame:
    """The manifest with each relabelled row's label replaced by the reviewed one: the label the run
    trained it with, the one its scores are about."""
    if reviewed is None or not len(reviewed):
        return manifest
    rel = reviewed[reviewed["action"] == "relabel"]
    new = pd.Series(rel["label"].to_numpy(dtype=object), index=rel["sample_id"].astype(str).to_numpy())
    out = manifest.copy()
    ids = out["sample_id"].astype(str)
    hit = ids.isin(new.index).to_numpy()
    out.loc[hit, "label"] = new.loc[ids[hit]].to_numpy()
    return out


def reviewed_mask(sample_ids: Sequence[str], reviewed: pd.DataFrame | None) -> np.ndarray:
    """(n,) bool: the samples a reviewer decided."""
    if reviewed is None or not len(reviewed):
        return np.zeros(len(sample_ids), bool)
    return np.isin(np.asarray(sample_ids, dtype=str), reviewed["sample_id"].astype(str).to_numpy())


def unflag_reviewed(flags: Flags, is_reviewed: np.ndarray, n_classes: int, given: np.ndarray) -> Flags:
    """A person's decision outranks any score: reviewed rows are never flagged."""
    if not is_reviewed.any():
        return flags
    issue = flags.is_issue & ~is_reviewed
    counts = np.bincount(given[issue], minlength=n_classes) if flags.cut is None else flags.counts
    return Flags(issue, flags.rule, counts, flags.cut, flags.global_cut)


def reviewed_step(audit: pd.DataFrame, manifest: pd.DataFrame, reviewed: pd.DataFrame | None) -> pd.DataFrame:
    """The audit with ``is_reviewed``, ``reviewed_label`` and ``decided_by``; ``given_label`` back to the
    label as given (the manifest's); a reviewed row's reason says what the reviewer decided first."""
    audit["given_label"] = _col(manifest, "label", "")
    mask = reviewed_mask(audit["sample_id"].tolist(), reviewed)
    audit["is_reviewed"] = mask
    audit["reviewed_label"] = np.full(len(audit), None, object)
    audit["decided_by"] = np.where(mask, "reviewer", "fercure").astype(object)
    if mask.any():
        r = reviewed.set_index(reviewed["sample_id"].astype(str)).loc[audit.loc[mask, "sample_id"]]
        audit.loc[mask, "reviewed_label"] = r["label"].to_numpy(dtype=object)
        verbs = {"keep": "kept", "relabel": "relabelled", "drop": "dropped"}
        said = [f"reviewed: {verbs[a]}" + (f" {g} -> {lab}" if a == "relabel" else "") + f" ({src})"
                for a, g, lab, src in zip(r["action"], r["given_label"], r["label"], r["source"])]
        audit.loc[mask, "reason"] = [f"{w}; {old}" if old else w for w, old in zip(said, audit.loc[mask, "reason"])]
        audit.loc[mask, ["is_label_issue", "is_ambiguous_issue"]] = False
    return audit


def combine_reviewed(reviewed: pd.DataFrame | None, decided: pd.DataFrame | None) -> pd.DataFrame | None:
    """The run's trusted table and the decisions made after it, one row per sample (the later wins)."""
    parts = [t for t in (reviewed, decided) if t is not None and len(t)]
    if not parts:
        return reviewed
    both = pd.concat(parts, ignore_index=True)
    return both[~both["sample_id"].astype(str).duplicated(keep="last")].reset_index(drop=True)


def learnable_verdicts(decided: pd.DataFrame | None, trained_with: pd.DataFrame | None) -> pd.DataFrame | None:
    """The decisions a re-ranker may learn from: those made after the run on rows it trained with their
    given label, so the row's scores are about the label the reviewer judged (a row the run trained with
    another reviewed label is scored about that label instead; one it dropped is not scored)."""
    if decided is None or not len(decided):
        return None
    if trained_with is None or not len(trained_with):
        return decided
    other = trained_with.loc[trained_with["action"] != "keep", "sample_id"].astype(str)
    return decided[~decided["sample_id"].astype(str).isin(other)]


@dataclass
class ReviewedRows:
    """What the reviewed rows say, one entry per row of the run's trusted table (``reviewed``)."""

    is_label: np.ndarray  # (m,) bool: a decision about the label (``review_calibration.label_decisions``)
    is_error: np.ndarray  # (m,) bool: a label decision that found the label wrong
    spot: np.ndarray  # (m,) bool: offered as a spot check (a random row)
    rank: np.ndarray  # (m,) float: the queue rank when reviewed, low = suspect (NaN: unknown)
    round: np.ndarray  # (m,) int: the review round (the --trusted file, 1-based)
    offered: np.ndarray  # (m,) bool: the card offered a suggestion (another class than the given one)
    agreed: np.ndarray  # (m,) bool: the reviewer chose that suggested class
    dropped: np.ndarray  # (m,) bool: the reviewer dropped the sample

    @classmethod
    def of(cls, reviewed: pd.DataFrame | None, image_problem: set[str]) -> "ReviewedRows":
        r = reviewed if reviewed is not None and len(reviewed) else None
        n = 0 if r is None else len(r)

        def col(name: str, fill, dtype) -> np.ndarray:
            return (r[name].fillna(fill).to_numpy(dtype=dtype) if r is not None and name in r.columns
                    else np.full(n, fill, dtype=dtype))

        action = col("action", "", object)
        img = np.isin(col("sample_id", "", object).astype(str), list(image_problem)) if n else np.zeros(0, bool)
        is_label, is_error = rc.label_decisions(action, img)
        sugg = col("suggested_when_reviewed", "", object).astype(str)
        offered = is_label & (sugg != "") & (sugg != col("given_label", "", object).astype(str))
        agreed = offered & (action == "relabel") & (col("label", "", object).astype(str) == sugg)
        return cls(is_label, is_error, col("spot_check", False, bool), col("rank_when_reviewed", np.nan, float),
                   col("review_round", 0, int), offered, agreed, action == "drop")


def image_problem_ids(manifest: pd.DataFrame, blur_threshold: float | None = None) -> set[str]:
    """Samples whose image, not label, is the problem (the face-stage issues of ``_face_columns``): no
    usable face (any face status but ``ok``), a near-duplicate, a blurry, too dark, too bright or flat
    crop. A reviewer's drop of one says nothing about its label."""
    face, _ = _face_columns(manifest, blur_threshold)
    bad = face["face_status"] != "ok"
    for name, hit in face.items():
        if name.startswith("is_") and name.endswith("_issue"):
            bad = bad | np.asarray(hit, bool)
    return set(manifest["sample_id"].astype(str).to_numpy()[bad])


def calibration_stats(run_meta: Mapping, rows: ReviewedRows, n_trained: int) -> dict:
    """The share of wrong labels twice, side by side: from the planted flips (the run's self-check) and
    from the reviewed label decisions (``fercure.review_calibration``: exact on the queue's cards, the
    spot checks for the rest, with an interval), and which share the run uses (``share``; None when
    neither exists; ``share_for_flags`` what the ``planted`` rule flags). Also the error rate of the
    latest queue cards (what the next ones hold) and the reviewed rows' AUROC at the ranks they had
    when reviewed: mostly a queue's low ranks, so no match for the planted flips' AUROC."""
    sc = dict(run_meta.get("self_check") or {})
    planted_share = sc.get("estimated_error_share")
    planted_share = float(planted_share) if planted_share is not None and np.isfinite(planted_share) else None
    lab = rows.is_label
    err, rank, spot, rnd = rows.is_error[lab], rows.rank[lab], rows.spot[lab], rows.round[lab]
    # the share is of the scored rows and the label drops (they left the run); image drops are no labels
    rev = rc.error_share(err, spot, n_trained + int((rows.dropped & lab).sum()))
    rev["n_image_drops"] = int((~lab).sum())
    rev["auroc"] = _json_float(auroc(err, -rank))  # low rank = suspect
    rev["recent_queue"] = rc.recent_queue_rate(rank, err, spot, latest=rnd == rnd.max() if len(rnd) else None)
    used, share = rc.choose(planted_share, rev["share"])
    return {"planted": {"share": planted_share, "auroc": _json_float(sc.get("auroc_mean_p") or np.nan),
                        "n_planted": sc.get("n_planted"),
                        "recall": _json_float(np.nan if sc.get("recall_at_estimated_share") is None
                                              else float(sc["recall_at_estimated_share"]))},
            "reviewed": {k: (_json_float(v) if isinstance(v, float) else v) for k, v in rev.items()},
            "used": used, "share": share, "share_for_flags": rc.share_for_flags(used, share, rev)}


def strength_stats(run_meta: Mapping, rows: ReviewedRows, group: np.ndarray) -> dict:
    """The run's model-strength record (the probe's numbers as the run wrote them) with its verdict
    judged again from what is known now (``fercure.strength``): the ranking's strength from the
    planted flips, or from the decided spot checks once they hold enough wrong and right labels, and
    the suggestions' from the decided cards that offered one."""
    ms = dict(run_meta.get("model_strength") or {})
    sc = dict(run_meta.get("self_check") or {})
    n_planted = int(sc.get("n_planted") or 0)
    # the self-check ranked the planted flips among the trained rows (``n_scored``; older runs: the
    # rows scored in-sample, group 0, beside the planted ones)
    n_other = int(sc.get("n_scored") or (int((np.asarray(group) == 0).sum()) + n_planted)) - n_planted
    planted_auroc = sc.get("auroc_mean_p", ms.get("planted_auroc"))
    spot = rows.spot & rows.is_label
    ranking = st.ranking_strength(None if planted_auroc is None else float(planted_auroc), n_planted, n_other,
                                  rows.is_error[spot], rows.rank[spot])
    suggestions = st.suggestion_strength(rows.agreed[rows.offered])
    probe = {k: ms.get(k) for k in ("holdout_accuracy", "chance_accuracy", "standard_error", "n_holdout")}
    ms.update(st.verdict(ranking, suggestions, probe), ranking=ranking, suggestions=suggestions)
    return ms


def reviewed_stats(reviewed: pd.DataFrame | None) -> dict:
    counts = reviewed["action"].value_counts() if reviewed is not None else pd.Series(dtype=int)
    return {"n_reviewed": int(counts.sum()), "actions": {a: int(counts.get(a, 0)) for a in ("keep", "relabel", "drop")}}


def align_predictions(manifest: pd.DataFrame, predictions: pd.DataFrame, classes: list[str]) -> tuple:
    """The predictions of manifest rows, their manifest positions and given-label indices.

    Returns (preds, rows, given, given_str (every manifest row), n_unmatched)."""
    cidx = {c: i for i, c in enumerate(classes)}
    if manifest["sample_id"].duplicated().any():
        dup = manifest.loc[manifest["sample_id"].duplicated(), "sample_id"].iloc[0]
        raise ValueError(f"the manifest lists sample {dup!r} more than once")
    if predictions["sample_id"].duplicated().any():
        dup = predictions.loc[predictions["sample_id"].duplicated(), "sample_id"].iloc[0]
        raise ValueError(f"predictions lists sample {dup!r} more than once")
    pos_of = pd.Series(np.arange(len(manifest)), index=manifest["sample_id"].to_numpy())
    in_manifest = predictions["sample_id"].isin(pos_of.index).to_numpy()
    preds = predictions.loc[in_manifest].reset_index(drop=True)
    rows = pos_of.loc[preds["sample_id"].to_numpy()].to_numpy()  # manifest position of each prediction
    given_str = _col(manifest, "label", "")
    if "given_label" in preds.columns:
        mism = preds["given_label"].astype(str).to_numpy() != given_str[rows]
        if mism.any():
            i = int(np.flatnonzero(mism)[0])
            raise ValueError(
                f"sample {preds['sample_id'].iloc[i]!r}: the run trained it as "
                f"{preds['given_label'].iloc[i]!r} but the manifest says {given_str[rows[i]]!r}; "
                "the manifest changed after training")
    unknown = sorted({g for g in given_str[rows] if g not in cidx})
    if unknown:
        raise ValueError(f"trained samples carry labels {unknown[:5]} that are not among the run's classes {classes}")
    given = np.array([cidx[g] for g in given_str[rows]], dtype=int)
    return preds, rows, given, given_str, int((~in_manifest).sum())


def verdict_table(manifest: pd.DataFrame, s: Scored, flags: Flags, sugg_probs: np.ndarray, suggested: np.ndarray,
                  sugg_conf: np.ndarray, bands: dict, is_amb: np.ndarray, gap: np.ndarray,
                  given_str: np.ndarray, blur_threshold: float | None) -> tuple[pd.DataFrame, dict]:
    """The audit table in manifest order (label columns, face-stage columns, reasons) and its stats."""
    classes, n_all = s.classes, len(manifest)
    t, joint, nr_counts = _cj_parts(s)
    cj_issue, cj_class = find_label_issues_confident_joint(s.probs, s.given, t)
    mix = s.mixture
    cut = _per_class_cut(flags, t)
    audit = _label_columns(manifest, s, flags.is_issue, sugg_probs, suggested, sugg_conf, is_amb, gap, given_str)
    face, blur_t = _face_columns(manifest, blur_threshold)
    for name, values in face.items():
        audit[name] = values
    audit["reason"] = _reasons(audit, classes, t, _spread(cj_class, -1, s.tiebreak, n_all, int), mix.threshold,
                               flags.counts, cut, flags.rule, blur_t, _col(manifest, "reason", ""))
    stats = _verdict_stats(s, flags, t, joint, nr_counts, cut, mix, int(cj_issue.sum()), bands, blur_t, is_amb,
                           suggested, face, n_all)
    return audit, stats


def _spread(values: np.ndarray, fill, rows: np.ndarray, n_all: int, dtype=None) -> np.ndarray:
    """A per-trained-sample array laid out in manifest order (``rows``), ``fill`` elsewhere."""
    out = np.full(n_all, fill, dtype=dtype if dtype is not None else np.asarray(values).dtype)
    out[rows] = values
    return out


def _label_columns(manifest: pd.DataFrame, s: Scored, is_issue: np.ndarray, sugg_probs: np.ndarray,
                   suggested: np.ndarray, sugg_conf: np.ndarray, is_amb: np.ndarray, gap: np.ndarray,
                   given_str: np.ndarray) -> pd.DataFrame:
    """The audit's label columns (scores, flags, suggestion, the run's signals, p_<class>) in manifest
    order: the part of the table that comes from the run rather than from the face stage."""
    classes, preds, rows, probs = s.classes, s.predictions, s.tiebreak, s.probs
    n_all = len(manifest)
    ent = preds["uncertainty_entropy"].to_numpy(dtype=float) if "uncertainty_entropy" in preds.columns \
        else np.full(len(preds), np.nan)
    ent = np.where(np.isfinite(ent), ent, entropy(probs))  # the run's (ensemble) entropy, else ours

    def full(values: np.ndarray, fill, dtype=None) -> np.ndarray:
        return _spread(values, fill, rows, n_all, dtype)

    def pred_col(name: str) -> np.ndarray:
        v = preds[name].to_numpy(dtype=float) if name in preds.columns else np.full(len(preds), np.nan)
        return full(v, np.nan, float)

    sugg_str = np.array([classes[i] for i in suggested], dtype=object)
    # cleanlab's predicted_label: the argmax of the suggestion distribution, flagged or not
    finite = np.where(np.isfinite(sugg_probs), sugg_probs, -np.inf)
    pred_str = np.array([classes[i] for i in np.argmax(finite, axis=1)] if len(finite) else [], dtype=object)
    scored_rows = np.isfinite(sugg_probs).all(axis=1)
    pred_str = np.where(scored_rows, pred_str, None)
    audit = pd.DataFrame({
        "sample_id": manifest["sample_id"].astype(str).to_numpy(),
        "source_path": manifest["source_path"].astype(str).to_numpy(),
        "split": _col(manifest, "split", ""),
        "given_label": given_str,
        "trained": full(np.ones(len(preds), bool), False, bool),
        "predicted_label": full(pred_str, None, object),
        "suggested_label": full(sugg_str, None, object),
        "suggested_label_confidence": full(sugg_conf, np.nan, float),
        "label_score": full(s.quality, np.nan, float),
        "is_label_issue": full(is_issue, False, bool),
        "ambiguous_score": full(np.clip(gap, 0, 1), np.nan, float),
        "is_ambiguous_issue": full(is_amb, False, bool),
        "reliability": pred_col("reliability"),
        "uncertainty_entropy": full(ent, np.nan, float),
        "uncertainty_mutual_info": pred_col("uncertainty_mutual_info"),
        "importance_weight": pred_col("importance_weight"),
        "relabel_count": pred_col("relabel_count"),
        "scn_label": full(preds["scn_label"].astype(str).to_numpy(dtype=object), None, object)
        if "scn_label" in preds.columns else np.full(n_all, None, object),
        "aum": pred_col("aum"),
        "oof_p_given": pred_col("oof_p_given"),
        "retrain_p_given": pred_col("retrain_p_given"),
        # signals from the run's records (``fercure.dynamics_signals``; the re-ranker's inputs)
        "knn_agreement": pred_col("knn_agreement"),
        "fine_alignment": pred_col("fine_alignment"),
        "logit_margin": pred_col("logit_margin"),
        "el2n_early": pred_col("el2n_early"),
        "learned_epoch": pred_col("learned_epoch"),
    })
    for j, c in enumerate(classes):
        audit[f"p_{c}"] = full(probs[:, j], np.nan, float)
    return audit


def _face_columns(manifest: pd.DataFrame, blur_threshold: float | None) -> tuple[dict[str, np.ndarray], float]:
    """The face-stage columns and issues carried over from the manifest, in table order, and the blur
    cut used; they need no run, so they are computed apart from the label columns."""
    face_status = _col(manifest, "face_status", "ok")
    face_score, sharpness = _num(manifest, "face_score"), _num(manifest, "sharpness")
    duplicate_of = _col(manifest, "duplicate_of", "")
    is_dup = (face_status == "duplicate") | (duplicate_of != "")
    is_noface = face_status == "no_face"
    is_blur, blur_t = blur_issues(sharpness, blur_threshold)
    cols = {
        "face_status": face_status, "face_score": face_score, "sharpness": sharpness, "duplicate_of": duplicate_of,
        "store_index": _num(manifest, "store_index", -1).astype(np.int64),
        "content_hash": _col(manifest, "content_hash", ""),
        "is_duplicate_issue": is_dup, "duplicate_score": np.where(is_dup, 0.0, 1.0),
        "is_no_face_issue": is_noface, "no_face_score": np.where(is_noface, 0.0, np.nan_to_num(face_score, nan=0.0)),
        "blur_score": sharpness_rank(sharpness), "is_blur_issue": is_blur,
        "unreadable_score": np.where(face_status == "unreadable", 0.0, 1.0),
        "is_unreadable_issue": face_status == "unreadable",
    }
    brightness, contrast = _num(manifest, "brightness"), _num(manifest, "contrast")
    hits, scores = exposure.exposure_issues(brightness, contrast), exposure.exposure_scores(brightness, contrast)
    for issue in exposure.ISSUES:
        cols[f"is_{issue}_issue"], cols[f"{issue}_score"] = hits[issue], scores[issue]
    return cols, blur_t


def _verdict_stats(s: Scored, flags: Flags, t: np.ndarray, joint: np.ndarray, nr_counts: np.ndarray,
                   cut: np.ndarray, mix, n_cj_flagged: int, bands: dict, blur_t: float, is_amb: np.ndarray,
                   suggested: np.ndarray, face: dict[str, np.ndarray], n_all: int) -> dict:
    """The JSON-ready stats behind the table: thresholds of every rule, mixture fit, counts, per-class
    rows, transition matrix (what ``stats`` documents in ``build_audit``)."""
    classes, given, quality, is_issue, used = s.classes, s.given, s.quality, flags.is_issue, flags.rule
    mix_issue = np.isfinite(quality) & (quality < mix.threshold)
    per_class = {
        c: {
            "n": int((given == j).sum()),
            "n_label_issues": int((is_issue & (given == j)).sum()),
            "n_ambiguous": int((is_amb & (given == j)).sum()),
            "mean_label_score": _nanmean(quality[given == j]),
            "threshold": _json_float(cut[j]),
        }
        for j, c in enumerate(classes)
    }
    return {
        "threshold_method_used": used,
        "classes": classes,
        "class_thresholds": {c: _json_float(t[j]) for j, c in enumerate(classes)},
        "mixture": {"threshold": _json_float(mix.threshold), "converged": bool(mix.converged),
                    "separation": _json_float(mix.separation),
                    "means": [_json_float(m) for m in mix.means],
                    "weights": [_json_float(w) for w in mix.weights],
                    "n_flagged": int(mix_issue.sum())},
        "confident_joint_n_flagged": n_cj_flagged,
        "model_strength": dict(s.run_meta.get("model_strength") or {}),
        "self_check": dict(s.run_meta.get("self_check") or {}),
        "noise_rate": {"n_issues": {c: int(flags.counts[j] if used in ("noise_rate", "planted") else nr_counts[j])
                                    for j, c in enumerate(classes)},
                       "score_cut": {c: _json_float(cut[j]) if flags.cut is not None else None
                                     for j, c in enumerate(classes)},
                       "confident_joint": joint.tolist(),
                       "n_flagged": int(is_issue.sum()) if used in ("noise_rate", "planted") else None},
        "rule": {"name": used, "n_issues": {c: int(flags.counts[j]) for j, c in enumerate(classes)},
                 "score_cut": None if flags.cut is None else {c: _json_float(flags.cut[j]) for j, c in enumerate(classes)},
                 "global_cut": _json_float(flags.global_cut) if flags.global_cut is not None else None},
        "score_scale": {"reference": GROUPS[0], "aligned_by_rank": [GROUPS[g] for g in sorted(set(s.group.tolist())) if g != 0],
                        "n_by_group": {GROUPS[g]: int((s.group == g).sum()) for g in range(len(GROUPS))}},
        "confidence_bands": bands,
        "blur_threshold": _json_float(blur_t),
        "n_samples": int(n_all),
        "n_trained": int(len(s.predictions)),
        "n_label_issues": int(is_issue.sum()),
        "n_ambiguous": int(is_amb.sum()),
        "n_duplicate_issues": int(face["is_duplicate_issue"].sum()),
        "n_no_face_issues": int(face["is_no_face_issue"].sum()),
        "n_blur_issues": int(face["is_blur_issue"].sum()),
        **{f"n_{issue}_issues": int(face[f"is_{issue}_issue"].sum()) for issue in exposure.ISSUES},
        "per_class": per_class,
        "transition_matrix": noise_transition_matrix(given, suggested, len(classes)).tolist(),
    }


def _nanmean(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else None


def _col(df: pd.DataFrame, name: str, fill: str) -> np.ndarray:
    if name not in df.columns:
        return np.full(len(df), fill, dtype=object)
    return df[name].astype(object).where(df[name].notna(), fill).astype(str).to_numpy(dtype=object)


def _num(df: pd.DataFrame, name: str, fill: float = np.nan) -> np.ndarray:
    if name not in df.columns:
        return np.full(len(df), fill, dtype=float)
    return pd.to_numeric(df[name], errors="coerce").fillna(fill).to_numpy(dtype=float)


def _reasons(audit: pd.DataFrame, classes: list[str], t: np.ndarray, cj_class: np.ndarray, mix_t: float,
             nr_counts: np.ndarray, nr_cut: np.ndarray, threshold_method: str, blur_t: float,
             face_reason: np.ndarray) -> list[str]:
    """One human-readable sentence per row, with the numbers behind its flags."""
    out = []
    cols = audit[["trained", "given_label", "suggested_label", "suggested_label_confidence", "label_score",
                  "is_label_issue", "is_ambiguous_issue", "face_status", "is_blur_issue", "sharpness",
                  "duplicate_of"]].to_numpy(dtype=object)
    probs = audit[[f"p_{c}" for c in classes]].to_numpy(dtype=float)
    cidx = {c: i for i, c in enumerate(classes)}
    for i, (trained, given, sugg, conf, q, issue, amb, fs, blurry, blur, dup) in enumerate(cols):
        parts = []
        if not trained:
            why = f"not trained (face_status={fs}"
            why += f": {face_reason[i]})" if face_reason[i] else ")"
            if not given:
                why = "not trained: no label"
            elif given not in cidx:
                why = f"not trained: label {given!r} is not one of the run's classes"
            parts.append(why)
            if fs == "duplicate" and dup:
                parts.append(f"duplicate of sample {dup}")
        elif not np.isfinite(q):
            parts.append("not scored: the run left no probabilities for this sample")
        else:
            y = cidx[given]
            py = probs[i, y]
            if issue and threshold_method == "confident_joint":
                k = cj_class[i]
                alt = (f"suggested {sugg} ({conf:.2f})" if sugg != given
                       else f"p({given}) is still the largest, so no other label is suggested")
                parts.append(f"label issue: p({given})={py:.2f} < class threshold {t[y]:.2f}, "
                             f"p({classes[k]})={probs[i, k]:.2f} >= its threshold {t[k]:.2f}; {alt}")
            elif issue and threshold_method == "retrain":
                alt = (f"suggested {sugg} ({conf:.2f})" if sugg != given
                       else f"p({given}) is still the largest, so no other label is suggested")
                parts.append(f"label issue: among the most suspect of its group (label_score {q:.2f}), "
                             f"and a second model that never trained on it predicts another class; {alt}")
            elif issue and threshold_method in ("noise_rate", "planted"):
                alt = (f"suggested {sugg} ({conf:.2f})" if sugg != given
                       else f"p({given}) is still the largest, so no other label is suggested")
                parts.append(f"label issue: label_score {q:.2f} is among the {int(nr_counts[y])} lowest of "
                             f"class {given} ({'the planted-flip' if threshold_method == 'planted' else 'the confident joint'}'s "
                             f"estimate of its wrong labels; class cut "
                             f"{nr_cut[y]:.2f}); {alt}")
            elif issue:
                alt = (f"suggested {sugg} ({conf:.2f})" if sugg != given
                       else f"p({given}) is still the largest, so no other label is suggested")
                parts.append(f"label issue: label_score {q:.2f} < mixture threshold {mix_t:.2f}; {alt}")
            else:
                parts.append(f"label looks right: p({given})={py:.2f}, label_score {q:.2f}")
            if amb:
                order = np.argsort(-probs[i])
                a, b = order[0], order[1]
                parts.append(f"ambiguous: {classes[a]} {probs[i, a]:.2f} vs {classes[b]} {probs[i, b]:.2f}")
            if fs not in ("ok", ""):
                parts.append(f"face_status={fs}" + (f" ({face_reason[i]})" if face_reason[i] else ""))
        if blurry:
            parts.append(f"blurry: sharpness {blur:.1f} < {blur_t:.1f}")
        out.append("; ".join(parts))
    return out

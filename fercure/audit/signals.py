"""Label-quality signals: a run's predictions → per-sample scores in 0..1, low = the given label is
likely wrong (cleanlab's convention; every ``<issue>_score`` column points the same way).

The audit's default (``DEFAULT_SCORE``) is ``confidence_variability``: the mean over training epochs of
p(given label) plus its standard deviation, scaled to 0..1 — dataset cartography's *confidence* and
*variability*: a wrong label stays low and steady, an ambiguous one swings. Other signals of the
predictions table can be used alone or blended (``label_quality``); how each measured is in
docs/METHODS.md and benchmarks/RESULTS.md. A new signal is one function and one entry of ``SIGNAL_FUNCS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

# Signals that can make up label_score, each mapped to 0..1 with low = likely wrong.
SIGNALS = ("confidence", "confidence_variability", "aum", "last", "self_confidence", "oof", "reliability",
           "importance", "retrain", "fusion", "knn", "eval")
# The default, chosen by the label-noise benchmark (benchmarks/RESULTS.md); every entry point reads it here.
DEFAULT_SCORE = "confidence_variability"
# max of μ + σ for a variable in [0, 1]: σ² ≤ μ(1 − μ) (Bhatia–Davis), so μ + σ ≤ (1 + √2) / 2.
_MAX_MEAN_PLUS_STD = (1.0 + np.sqrt(2.0)) / 2.0


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



def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats of each row of ``probs`` (0 log 0 = 0)."""
    p = np.asarray(probs, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    out = terms.sum(axis=1)
    return np.where(np.isfinite(p).all(axis=1), out, np.nan)

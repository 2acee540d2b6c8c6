"""Per-sample signals from what a run already records (issue 28, part 3; pure functions, numpy in/out).

From the per-epoch records of ``dynamics.parquet`` (p(given), the probability margin p(given) − max
other p, the argmax; one row per sample, epoch and member):

- ``logit_margin``: the epoch-averaged *logit* margin z_given − max_{k≠given} z_k. The table keeps
  probabilities, not logits, but a softmax keeps logit differences as log-probability ratios, so
  z_y − z_k = log p_y − log p_k exactly, and the largest other probability is p_y − margin.
  (AUM is the same average on the probability scale; the logit scale does not saturate near 0 and 1.)
- ``el2n_early``: EL2N (Paul et al., NeurIPS 2021), ‖softmax − one-hot(given)‖₂, averaged over the
  early epochs. The table keeps two of the C probabilities, p(given) and the largest other one p_o,
  so this is √((1 − p_y)² + p_o²), a lower bound of the exact norm (which adds the other classes'
  squares, together at most p_o · (1 − p_y − p_o)).
- ``learned_epoch``: the first epoch from which the training prediction stays the given label to the
  end (Late Stopping's first-k-consecutive-correct idea with k = the rest of the run); the number of
  epochs when it never does. A wrong label is learned late or never.

From the embedding (where a run keeps it):

- ``fine_alignment``: FINE (Kim et al., NeurIPS 2021): per given class, the principal direction of
  the L2-normalised embeddings labelled with it; a sample's |cosine| to its class's direction. A
  within-class score by construction (low = unlike its class).

And from a class distribution, an order rather than a score:

- ``unambiguous_wrong``: active label cleaning's priority (Bernhardt et al., Nature Communications
  2022): cross-entropy to the given label minus the distribution's entropy, so a confidently
  contradicted label comes before an ambiguous one (high = review first).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

EARLY_SHARE = 0.2  # EL2N's "early": the first fifth of the epochs (Paul et al. score at ~10 % of training)
_EPS = 1e-7  # probabilities are clipped here before a log (float32 tables round tiny ones to 0)


@dataclass(frozen=True)
class DynamicsSignals:
    """One value per sample (``sample_ids`` order); NaN for a sample without dynamics (probe, planted)."""

    sample_ids: np.ndarray  # (n,) str
    logit_margin: np.ndarray  # (n,) nats, mean over epochs and members; < 0: another class wins
    el2n_early: np.ndarray  # (n,) in [0, √2], mean over the early epochs and members
    learned_epoch: np.ndarray  # (n,) epochs, mean over members; = the epoch count when never learned
    n_epochs: int

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"sample_id": self.sample_ids, "logit_margin": self.logit_margin,
                             "el2n_early": self.el2n_early, "learned_epoch": self.learned_epoch})


def logit_margin(p_given: np.ndarray, margin: np.ndarray) -> np.ndarray:
    """(E, n) p(given) and probability margin → (n,) mean over epochs of log p_y − log max_{k≠y} p_k."""
    p = np.clip(np.asarray(p_given, float), _EPS, 1.0)
    other = np.clip(p - np.asarray(margin, float), _EPS, 1.0)
    return (np.log(p) - np.log(other)).mean(axis=0)


def el2n(p_given: np.ndarray, margin: np.ndarray, early: int) -> np.ndarray:
    """(E, n) → (n,) mean over the first ``early`` epochs of √((1 − p_y)² + p_o²) (see the module note)."""
    p = np.asarray(p_given, float)[: max(int(early), 1)]
    other = np.clip(p - np.asarray(margin, float)[: len(p)], 0.0, 1.0)
    return np.sqrt((1.0 - p) ** 2 + other ** 2).mean(axis=0)


def learned_epoch(predicted: np.ndarray, given: np.ndarray) -> np.ndarray:
    """(E, n) per-epoch predictions, (n,) given labels → the first epoch e with the prediction the given
    label at every epoch from e on; E when the last epoch's prediction is another class."""
    wrong = np.asarray(predicted) != np.asarray(given)[None, :]
    e = wrong.shape[0]
    # index of the last wrong epoch + 1 (0 when never wrong)
    last_wrong = np.where(wrong.any(axis=0), e - np.argmax(wrong[::-1], axis=0), 0)
    return last_wrong.astype(float)


def early_epochs(n_epochs: int, share: float = EARLY_SHARE) -> int:
    return max(1, int(round(share * n_epochs)))


def from_dynamics(dynamics: pd.DataFrame, early_share: float = EARLY_SHARE) -> DynamicsSignals:
    """The signals of every sample in a ``dynamics.parquet`` table (columns sample_id, member, epoch,
    given_index, p_given, margin, predicted), averaged over members."""
    ids = pd.unique(dynamics["sample_id"].astype(str))
    pos = pd.Series(np.arange(len(ids)), index=ids)
    epochs = int(dynamics["epoch"].max()) + 1 if len(dynamics) else 0
    out = {k: np.zeros(len(ids)) for k in ("logit_margin", "el2n_early", "learned_epoch")}
    members = sorted(dynamics["member"].unique()) if len(dynamics) else []
    for m in members:
        d = dynamics[dynamics["member"] == m]
        col = pos.loc[d["sample_id"].astype(str).to_numpy()].to_numpy()
        ep = d["epoch"].to_numpy(dtype=np.int64)

        def grid(name: str, fill: float) -> np.ndarray:
            g = np.full((epochs, len(ids)), fill)
            g[ep, col] = d[name].to_numpy(dtype=float)
            return g

        p, mg, pred = grid("p_given", np.nan), grid("margin", np.nan), grid("predicted", -1)
        given = np.full(len(ids), -2)
        given[col] = d["given_index"].to_numpy(dtype=np.int64)
        out["logit_margin"] += logit_margin(p, mg) / len(members)
        out["el2n_early"] += el2n(p, mg, early_epochs(epochs, early_share)) / len(members)
        out["learned_epoch"] += learned_epoch(pred, given) / len(members)
    return DynamicsSignals(np.asarray(ids, dtype=object), out["logit_margin"], out["el2n_early"],
                           out["learned_epoch"], epochs)


def fine_alignment(embedding: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(n, D) embeddings, (n,) class indices → (n,) |cosine| of each L2-normalised embedding to the first
    right-singular vector of its class's normalised embeddings (FINE's principal direction). NaN for a
    row with a non-finite or zero embedding."""
    e = np.asarray(embedding, float)
    labels = np.asarray(labels)
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    ok = np.isfinite(e).all(axis=1) & (norm[:, 0] > 0)
    z = np.where(ok[:, None], e / np.where(norm > 0, norm, 1.0), 0.0)
    out = np.full(len(e), np.nan)
    for c in range(num_classes):
        rows = np.flatnonzero(ok & (labels == c))
        if len(rows) == 0:
            continue
        # the principal eigenvector of the class's (uncentred) Gram matrix; its sign is arbitrary
        _, _, vt = np.linalg.svd(z[rows], full_matrices=False)
        out[rows] = np.abs(z[rows] @ vt[0])
    return out


def unambiguous_wrong(probs: np.ndarray, given: np.ndarray) -> np.ndarray:
    """(n, K) class distribution, (n,) given class index → −log p(given) − H(p) in nats (p clipped at
    1e-7 before the logs), high = likely wrong *and* unambiguous: review first. NaN rows stay NaN."""
    p = np.clip(np.asarray(probs, float), _EPS, 1.0)
    n = len(p)
    ce = -np.log(p[np.arange(n), np.asarray(given, int)]) if n else np.zeros(0)
    h = -(p * np.log(p)).sum(axis=1)
    return np.where(np.isfinite(np.asarray(probs, float)).all(axis=1), ce - h, np.nan)

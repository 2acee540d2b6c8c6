"""Embedding neighbours → label agreement and an outlier score (pure functions, numpy in, numpy out).

The features are a model's embeddings (``audit-labels --features``). Neighbours are found by cosine
similarity, exactly, in blocks (memory: one block × N similarities, never N × N), each sample
excluding itself, ties to the smaller index.

- Label agreement: the neighbours' similarity-weighted vote for each class (as the training run's
  own kNN signal, ``fercure.train.signals.knn_label_distribution``); a neighbour without a known
  label does not vote.
- Outlier score: the mean cosine distance to the k nearest neighbours, divided by the median of
  that distance over the sample's class (a class of spread-out faces is not an outlier for being
  spread out), mapped to 0..1 with ``exp(-ratio)`` as cleanlab's ``OutOfDistribution`` maps its
  (globally scaled) distances: low = likely an outlier; a typical sample of its class scores
  exp(-1). A sample is an outlier issue past Tukey's far-out fence of its class's log distances
  (third quartile + 3 × the interquartile range), a cut with no parameter fitted to this data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fercure.groups import Neighbours  # each row's k nearest other rows, best first (one record for all)

DEFAULT_K = 10
FENCE_IQR = 3.0  # Tukey's "far out" fence


@dataclass(frozen=True)
class OutlierScores:
    score: np.ndarray  # (n,) in 0..1, low = likely outlier (NaN without features)
    is_issue: np.ndarray  # (n,) bool
    distance: np.ndarray  # (n,) mean cosine distance to the k nearest neighbours
    fence: np.ndarray  # (n,) the distance cut of the row's class (NaN where none)


def normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero: it is similar to nothing)."""
    x = np.asarray(features, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def nearest_neighbours(features: np.ndarray, k: int = DEFAULT_K, block_cells: int = 1 << 23) -> Neighbours:
    """Exact k nearest neighbours by cosine similarity, itself excluded (k is capped at n − 1).
    ``block_cells``: similarities held at once (queries per block × n)."""
    e = normalise(features)
    n = len(e)
    k = max(0, min(int(k), n - 1))
    sims = np.zeros((n, k))
    idx = np.zeros((n, k), dtype=np.int64)
    if k == 0:
        return Neighbours(index=idx, similarity=sims)
    block = max(1, block_cells // max(n, 1))
    for s in range(0, n, block):
        q = np.arange(s, min(s + block, n))
        sim = e[q] @ e.T
        sim[np.arange(len(q)), q] = -np.inf  # not its own neighbour
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < n else np.argsort(-sim, axis=1)[:, :k]
        top_sim = np.take_along_axis(sim, top, axis=1)
        order = np.lexsort((top, -top_sim), axis=1)  # best first, ties to the smaller index
        idx[q] = np.take_along_axis(top, order, axis=1)
        sims[q] = np.take_along_axis(top_sim, order, axis=1)
    return Neighbours(index=idx, similarity=sims)


def label_vote(nb: Neighbours, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, K) similarity-weighted vote of each row's neighbours for each class; a neighbour with
    label −1 (unknown) does not vote. Rows sum to 1; NaN where no neighbour voted."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(nb.index)
    votes = np.zeros((n, n_classes))
    w = np.clip(nb.similarity, 0.0, None) + 1e-6
    lab = labels[nb.index] if nb.index.size else np.zeros((n, 0), np.int64)
    for j in range(nb.index.shape[1]):
        ok = lab[:, j] >= 0
        np.add.at(votes, (np.flatnonzero(ok), lab[ok, j]), w[ok, j])
    total = votes.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, votes / total, np.nan)


def outlier_scores(nb: Neighbours, labels: np.ndarray) -> OutlierScores:
    """The outlier score and decision of each row (see the module docstring); ``labels`` −1 rows are
    measured against every row's distances."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if nb.index.shape[1] == 0:
        nan = np.full(n, np.nan)
        return OutlierScores(nan, np.zeros(n, bool), nan, nan)
    dist = np.clip(1.0 - nb.similarity, 0.0, 2.0).mean(axis=1)
    median = np.full(n, np.median(dist))
    fence = np.full(n, _fence(dist))
    for c in np.unique(labels[labels >= 0]):
        m = labels == c
        median[m] = np.median(dist[m])
        fence[m] = _fence(dist[m])
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(median > 0, dist / median, np.where(dist > 0, np.inf, 1.0))
    score = np.exp(-ratio)
    return OutlierScores(score, dist > fence, dist, fence)


def _fence(d: np.ndarray) -> float:
    """Tukey's far-out fence of distances ``d``, on their logarithm (distances are skewed: a fence
    on the raw values cuts into the long right tail of ordinary samples); NaN with fewer than 4
    distances (too few to call anything odd)."""
    if len(d) < 4:
        return np.nan
    q1, q3 = np.percentile(np.log(np.maximum(d, 1e-12)), [25, 75])  # exact copies sit at distance 0
    return float(np.exp(q3 + FENCE_IQR * (q3 - q1)))

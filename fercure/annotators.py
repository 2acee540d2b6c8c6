"""Several annotators per image: consensus labels, agreement and annotator quality (pure numpy).

Annotations come as parallel arrays (``Annotations``): the item (image) each label is about, the
annotator who gave it, the class index, and a weight (1 per label; a class's vote count for a wide
vote-count file such as FER+ or RAF-DB). A wide file names no annotators: its votes are one pooled
anonymous annotator (``fercure.votes``), for which Dawid–Skene learns a single class-confusion matrix.

Methods:

* ``majority_vote``: the most voted class; a tie goes to the class with more votes over the whole
  dataset, then to the lower class index, so the same votes always give the same label.
* ``dawid_skene``: the EM estimate of Dawid & Skene (1979): a confusion matrix per annotator and a
  class prior, alternating with each item's posterior, started from the vote shares. A spammer (labels
  unrelated to the truth) gets a flat confusion matrix and stops counting.
* ``model_consensus``: CROWDLAB-style (Goh, Tkachenko & Mueller, 2022; cleanlab's
  ``multiannotator`` is the reference, not a dependency): each item's distribution is a weighted mean
  of the model's probabilities and of each annotator's label (as a likelihood that puts the
  annotators' mean agreement on the label and spreads the rest), the weights measured by how much
  better than always answering the most common class the model and each annotator agree with the
  majority vote.
* ``annotator_quality``: per annotator, how often their labels agree with the consensus and with
  the model's most probable class, and the mean consensus probability of the labels they gave.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Confusion-matrix and prior pseudo-counts: an annotator who never saw a class keeps a finite log.
DS_SMOOTHING = 0.01
_EPS = 1e-12


@dataclass(frozen=True)
class Annotations:
    """One entry per annotation: ``item[k]`` got ``label[k]`` from ``annotator[k]`` (int64), counted
    ``weight[k]`` times (default 1: a wide vote-count file gives a class's count as one weighted entry)."""
    item: np.ndarray
    annotator: np.ndarray
    label: np.ndarray
    n_items: int
    n_annotators: int
    n_classes: int
    weight: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("item", "annotator", "label"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.int64))
        w = np.ones(len(self.item)) if self.weight is None else np.asarray(self.weight, dtype=np.float64)
        object.__setattr__(self, "weight", w)
        if not (len(self.item) == len(self.annotator) == len(self.label) == len(w)):
            raise ValueError("item, annotator, label and weight must have one entry per annotation")

    def counts(self) -> np.ndarray:
        """(n_items, n_classes) votes per item and class."""
        return vote_counts(self.item, self.label, self.n_items, self.n_classes, self.weight)


@dataclass(frozen=True)
class Consensus:
    """A consensus label per item and what backs it."""
    label: np.ndarray  # (n,) class index; -1 for an item without annotations
    probs: np.ndarray  # (n, C) the method's distribution over classes (vote shares for majority vote)
    score: np.ndarray  # (n,) probs[label]: low = the consensus is likely wrong (NaN: no annotation)
    agreement: np.ndarray  # (n,) share of the item's annotations that equal the label (NaN: none)
    method: str


@dataclass(frozen=True)
class DawidSkene:
    posterior: np.ndarray  # (n, C)
    confusion: np.ndarray  # (A, C, C): P(annotator says l | truth k), rows k sum to 1
    prior: np.ndarray  # (C,)
    iterations: int
    converged: bool


@dataclass(frozen=True)
class AnnotatorQuality:
    """One annotator's record against the consensus (and the model, when there is one)."""
    annotator: int
    n_annotations: float  # their votes (a weighted entry counts its weight)
    agreement_with_consensus: float  # share of their labels equal to the consensus label
    agreement_with_model: float  # share equal to the model's most probable class (NaN: no model)
    quality: float  # mean consensus probability of the labels they gave (CROWDLAB's annotator quality)


def vote_counts(item: np.ndarray, label: np.ndarray, n_items: int, n_classes: int,
                weight: np.ndarray | None = None) -> np.ndarray:
    out = np.zeros((n_items, n_classes), dtype=np.float64)
    np.add.at(out, (np.asarray(item, np.int64), np.asarray(label, np.int64)), 1.0 if weight is None else weight)
    return out


def vote_shares(counts: np.ndarray) -> np.ndarray:
    """Each row's votes as a distribution (a row without votes stays all zero)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def majority_vote(counts: np.ndarray) -> np.ndarray:
    """The most voted class per row; ties to the class with more votes overall, then the lower index.
    -1 for a row without votes."""
    counts = np.asarray(counts, dtype=np.float64)
    n, c = counts.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    overall = counts.sum(axis=0)
    # rank classes by overall votes (more first), then index: a strictly smaller bonus than one vote
    rank = np.lexsort((np.arange(c), -overall))
    bonus = np.empty(c)
    bonus[rank] = (c - np.arange(c)) / (c + 1.0)  # in (0, 1): breaks ties, never outweighs a vote
    label = np.argmax(counts + bonus[None, :], axis=1).astype(np.int64)
    label[counts.sum(axis=1) == 0] = -1
    return label


def agreement(counts: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Share of each row's votes that equal ``label`` (NaN without votes or label)."""
    counts = np.asarray(counts, dtype=np.float64)
    label = np.asarray(label, dtype=np.int64)
    total = counts.sum(axis=1)
    ok = (total > 0) & (label >= 0)
    out = np.full(len(counts), np.nan)
    out[ok] = counts[np.flatnonzero(ok), label[ok]] / total[ok]
    return out


def _consensus(probs: np.ndarray, counts: np.ndarray, label: np.ndarray, method: str) -> Consensus:
    has = label >= 0
    score = np.full(len(label), np.nan)
    score[has] = probs[np.flatnonzero(has), label[has]]
    return Consensus(label=label, probs=probs, score=score, agreement=agreement(counts, label), method=method)


def majority_consensus(ann: Annotations) -> Consensus:
    counts = ann.counts()
    return _consensus(vote_shares(counts), counts, majority_vote(counts), "majority")


def dawid_skene(ann: Annotations, *, max_iter: int = 200, tol: float = 1e-7,
                smoothing: float = DS_SMOOTHING) -> DawidSkene:
    """Dawid–Skene EM. Starts from the vote shares (the majority's view), then alternates the
    M-step (class prior and each annotator's confusion matrix from the posteriors) and the E-step
    (each item's posterior from the prior and the confusion rows of the labels it got), until the
    log-likelihood gains less than ``tol`` of itself (posteriors of near-tied items can drift for
    hundreds of steps after the labels have settled)."""
    n, a, c = ann.n_items, ann.n_annotators, ann.n_classes
    counts = ann.counts()
    post = vote_shares(counts)
    none = counts.sum(axis=1) == 0
    post[none] = 1.0 / c
    confusion = np.full((a, c, c), 1.0 / c)
    prior = np.full(c, 1.0 / c)
    converged, it, last_ll = False, 0, -np.inf
    for it in range(1, max_iter + 1):
        prior = (post.sum(axis=0) + smoothing) / (n + c * smoothing)
        conf = np.full((a, c, c), smoothing)
        # conf[j, k, l] += post[i, k] for each annotation (i, j, l)
        np.add.at(conf, (ann.annotator, slice(None), ann.label), post[ann.item] * ann.weight[:, None])
        confusion = conf / conf.sum(axis=2, keepdims=True)
        logp = np.tile(np.log(prior), (n, 1))
        np.add.at(logp, ann.item, np.log(confusion[ann.annotator, :, ann.label]) * ann.weight[:, None])
        top = logp.max(axis=1, keepdims=True)
        post = np.exp(logp - top)
        z = post.sum(axis=1, keepdims=True)
        post /= z
        ll = float((top + np.log(z)).sum())
        if abs(ll - last_ll) <= tol * max(abs(ll), 1.0):
            converged = True
            break
        last_ll = ll
    return DawidSkene(posterior=post, confusion=confusion, prior=prior, iterations=it, converged=converged)


def dawid_skene_consensus(ann: Annotations, **kw) -> Consensus:
    ds = dawid_skene(ann, **kw)
    counts = ann.counts()
    label = np.argmax(ds.posterior, axis=1).astype(np.int64)
    label[counts.sum(axis=1) == 0] = -1
    return _consensus(ds.posterior, counts, label, "dawid_skene")


def _annotator_agreement(ann: Annotations, reference: np.ndarray) -> np.ndarray:
    """(A,) share of each annotator's labels equal to ``reference[item]`` (NaN: no labels)."""
    hit = (ann.label == reference[ann.item]).astype(np.float64) * ann.weight
    n = np.bincount(ann.annotator, weights=ann.weight, minlength=ann.n_annotators)
    s = np.bincount(ann.annotator, weights=hit, minlength=ann.n_annotators)
    return np.divide(s, n, out=np.full(ann.n_annotators, np.nan), where=n > 0)


def model_consensus(ann: Annotations, model_probs: np.ndarray | None = None) -> Consensus:
    """CROWDLAB-style consensus of the annotators and (optionally) a model's out-of-sample
    probabilities (module doc). Without a model it is the annotators' weighted vote."""
    counts = ann.counts()
    n, c = ann.n_items, ann.n_classes
    mv = majority_vote(counts)
    has = mv >= 0
    prior = counts.sum(axis=0) / max(counts.sum(), 1.0)
    # error of always answering the most common majority class: what a weight is measured against
    mv_share = np.bincount(mv[has], minlength=c) / max(has.sum(), 1)
    baseline_error = max(1.0 - float(mv_share.max()) if has.any() else 1.0, _EPS)
    annot_agree = np.nan_to_num(_annotator_agreement(ann, np.where(has, mv, -2)), nan=0.0)
    annot_w = np.clip(1.0 - (1.0 - annot_agree) / baseline_error, _EPS, None)
    likelihood = float(np.clip(np.mean(annot_agree) if len(annot_agree) else 1.0, 1.0 / c, 1.0 - _EPS))
    spread = (1.0 - likelihood) / max(c - 1, 1)
    # Σ_j w_j · onehot-smoothed(label_j) per item, and Σ_j w_j
    num = np.zeros((n, c))
    w_ann = annot_w[ann.annotator] * ann.weight
    np.add.at(num, ann.item, np.outer(w_ann, np.full(c, spread)))
    np.add.at(num, (ann.item, ann.label), w_ann * (likelihood - spread))
    den = np.bincount(ann.item, weights=w_ann, minlength=n).astype(np.float64)
    if model_probs is not None:
        p = np.asarray(model_probs, dtype=np.float64)
        if p.shape != (n, c):
            raise ValueError(f"model probabilities have shape {p.shape}, expected {(n, c)}")
        model_error = float(np.mean(np.argmax(p[has], axis=1) != mv[has])) if has.any() else 1.0
        mean_votes = float(np.mean(counts.sum(axis=1)[has])) if has.any() else 1.0
        model_w = max(1.0 - model_error / baseline_error, _EPS) * np.sqrt(mean_votes)
        num += model_w * p
        den += model_w
    probs = np.where(den[:, None] > 0, num / np.maximum(den, _EPS)[:, None], prior[None, :])
    label = np.argmax(probs, axis=1).astype(np.int64)
    label[~has] = -1 if model_probs is None else label[~has]
    method = "model_consensus" if model_probs is not None else "weighted_vote"
    return _consensus(probs, counts, label, method)


def annotator_quality(ann: Annotations, consensus: Consensus,
                      model_probs: np.ndarray | None = None) -> list[AnnotatorQuality]:
    """Per annotator: agreement with the consensus, with the model's argmax, and the mean consensus
    probability of the labels they gave."""
    with_consensus = _annotator_agreement(ann, consensus.label)
    with_model = (np.full(ann.n_annotators, np.nan) if model_probs is None
                  else _annotator_agreement(ann, np.argmax(np.asarray(model_probs), axis=1)))
    label_q = consensus.probs[ann.item, ann.label] * ann.weight
    n = np.bincount(ann.annotator, weights=ann.weight, minlength=ann.n_annotators)
    q = np.divide(np.bincount(ann.annotator, weights=label_q, minlength=ann.n_annotators), n,
                  out=np.full(ann.n_annotators, np.nan), where=n > 0)
    return [AnnotatorQuality(j, float(n[j]), float(with_consensus[j]), float(with_model[j]), float(q[j]))
            for j in range(ann.n_annotators)]

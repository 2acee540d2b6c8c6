"""Consensus of several annotators (fercure.annotators): majority vote, Dawid–Skene, the model-weighted consensus."""

from __future__ import annotations

import numpy as np

from fercure.annotators import (Annotations, annotator_quality, agreement, dawid_skene, dawid_skene_consensus,
                                majority_consensus, majority_vote, model_consensus)


SPAMMER = 3


def _crowd(n=400, c=4, seed=0):
    """One careful annotator (90 % right), two sloppy ones (65 %) and a spammer (uniform random
    labels, annotator 3) on every item."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, c, n)
    item, annot, label = [], [], []
    for i in range(n):
        for j, acc in ((0, 0.9), (1, 0.65), (2, 0.65), (SPAMMER, None)):
            if acc is not None and rng.random() < acc:
                lab = truth[i]
            elif acc is not None:
                lab = (truth[i] + rng.integers(1, c)) % c
            else:
                lab = rng.integers(0, c)
            item.append(i), annot.append(j), label.append(lab)
    return truth, Annotations(np.array(item), np.array(annot), np.array(label), n, 4, c)


def test_majority_vote_breaks_ties_by_overall_votes_then_index():
    counts = np.array([[2, 2, 0], [0, 1, 1], [1, 1, 1], [0, 0, 0], [3, 0, 0], [0, 0, 4]], dtype=float)
    # overall: class 2 has 6 votes, class 0 has 6, class 1 has 4: a 0/2 tie goes to the lower index 0
    assert majority_vote(counts).tolist() == [0, 2, 0, -1, 0, 2]
    counts[4, 0] = 1  # class 0 now has fewer overall votes than 2: [0, 1, 1] still goes to 2, [1, 1, 1] to 2
    assert majority_vote(counts).tolist() == [0, 2, 2, -1, 0, 2]


def test_agreement_is_the_share_of_votes_for_the_label():
    counts = np.array([[7, 2, 1], [0, 0, 0], [1, 1, 0]], dtype=float)
    a = agreement(counts, np.array([0, -1, 1]))
    assert np.allclose(a[[0, 2]], [0.7, 0.5]) and np.isnan(a[1])


def test_dawid_skene_recovers_truth_where_a_spammer_ties_the_vote():
    truth, ann = _crowd()
    ds = dawid_skene(ann)
    assert ds.converged
    # the spammer's confusion rows are near uniform (1/4), the careful annotator mostly right
    assert np.all(np.abs(ds.confusion[SPAMMER] - 0.25) < 0.2)
    assert np.diag(ds.confusion[0]).mean() > 0.75 > 0.45 > np.diag(ds.confusion[SPAMMER]).mean()
    mv = majority_consensus(ann).label
    dsl = dawid_skene_consensus(ann).label
    assert (dsl == truth).mean() > (mv == truth).mean() + 0.03
    assert (dsl == truth).mean() > 0.85


def test_annotator_quality_ranks_the_spammer_last():
    truth, ann = _crowd(seed=1)
    cons = dawid_skene_consensus(ann)
    q = annotator_quality(ann, cons)
    assert [r.n_annotations for r in q] == [400] * 4
    others = [r for r in q if r.annotator != SPAMMER]
    assert q[SPAMMER].agreement_with_consensus < 0.4 < min(r.agreement_with_consensus for r in others)
    assert q[SPAMMER].quality < 0.4 < min(r.quality for r in others)
    assert q[0].quality == max(r.quality for r in q)
    assert np.isnan(q[0].agreement_with_model)


def test_model_consensus_with_a_strong_model_beats_the_annotators_alone():
    truth, ann = _crowd(seed=2)
    c = ann.n_classes
    rng = np.random.default_rng(5)
    model = np.full((ann.n_items, c), 0.1 / (c - 1))
    right = rng.random(ann.n_items) < 0.97  # a strong model: better than the best annotator
    guess = np.where(right, truth, (truth + 1) % c)
    model[np.arange(ann.n_items), guess] = 0.9
    with_model = model_consensus(ann, model)
    alone = model_consensus(ann)
    assert with_model.method == "model_consensus" and alone.method == "weighted_vote"
    assert (with_model.label == truth).mean() > (alone.label == truth).mean()
    assert np.allclose(with_model.probs.sum(axis=1), 1.0)
    q = annotator_quality(ann, with_model, model)
    assert q[SPAMMER].agreement_with_model < 0.4 < q[0].agreement_with_model

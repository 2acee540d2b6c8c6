"""Detection signals, the planted-flip machinery and the model-strength verdict (pure functions,
hand-checked values)."""

from __future__ import annotations

import numpy as np
import pytest

from fercure.audit import planted_counts
from fercure.metrics import auroc
from fercure.train import signals as sg
from fercure.train.detection import model_strength, verdict_of


def test_holdout_is_stratified_and_reproducible():
    y = np.repeat([0, 1, 2], [100, 40, 3])
    m = sg.holdout_mask(y, 0.1, seed=0)
    assert [int(m[y == c].sum()) for c in range(3)] == [10, 4, 0]  # round(0.3) = 0 and fewer than 4
    assert np.array_equal(m, sg.holdout_mask(y, 0.1, seed=0))
    assert not sg.holdout_mask(y, 0.0).any()


def test_plant_flips_rate_targets_and_exclusion():
    y = np.repeat([0, 1, 2, 3], [400, 200, 100, 100])
    exclude = np.zeros(len(y), bool)
    exclude[:50] = True
    new, planted = sg.plant_flips(y, 0.05, 4, exclude=exclude, seed=1)
    assert [int(planted[y == c].sum()) for c in range(4)] == [18, 10, 5, 5]  # 5% of the allowed
    assert (new[planted] != y[planted]).all() and (new[~planted] == y[~planted]).all()
    assert not planted[:50].any()
    # targets favour frequent classes: class 0 (400) receives more flips than class 3 (100)
    assert (new[planted] == 0).sum() > (new[planted] == 3).sum()


def test_forgetting_events():
    labels = np.array([1, 1, 0])
    pred = np.array([[1, 0, 1],
                     [0, 1, 1],
                     [1, 0, 1],
                     [0, 1, 1]])  # sample 0: right, wrong, right, wrong → 2; 1: 1; 2: never right → E
    assert sg.forgetting_events(pred, labels).tolist() == [2.0, 1.0, 4.0]


def test_knn_vote_follows_the_neighbourhood():
    rng = np.random.default_rng(0)
    centres = np.array([[5.0, 0, 0], [0, 5.0, 0]])
    emb = np.vstack([centres[0] + rng.normal(0, 0.3, (20, 3)), centres[1] + rng.normal(0, 0.3, (20, 3))])
    labels = np.array([0] * 20 + [1] * 20)
    labels[3] = 1  # a wrong label inside cluster 0
    dist = sg.knn_label_distribution(emb, labels, 2, k=5, chunk=7)
    assert np.allclose(dist.sum(1), 1)
    assert dist[3, 1] < 0.1 and dist[3, 0] > 0.9  # its neighbours say 0
    assert dist[25, 1] > 0.9


def test_logistic_fit_finds_the_informative_feature():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 2))
    y = (x[:, 0] + 0.3 * rng.normal(size=400) < -1.0).astype(float)
    w, b, mu, sd = sg.fit_logistic(x, y, l2=0.1)
    assert w[0] < -1.0 and abs(w[1]) < 0.5 * abs(w[0])
    logit = sg.predict_logit(x, w, b, mu, sd)
    assert auroc(y.astype(bool), logit) > 0.95


def test_error_share_estimate_on_a_separable_mixture():
    rng = np.random.default_rng(2)
    clean = rng.uniform(0.6, 1.0, 800)
    wrong = rng.uniform(0.0, 0.3, 200)  # 20% wrong labels
    planted = rng.uniform(0.0, 0.3, 40)
    score = np.concatenate([clean, wrong, planted])
    mask = np.r_[np.zeros(1000, bool), np.ones(40, bool)]
    assert sg.estimate_error_share(score, mask) == pytest.approx(0.2, abs=0.04)
    assert np.isnan(sg.estimate_error_share(score, np.zeros(1040, bool)))


def test_auroc_by_hand():
    assert auroc(np.array([1, 0, 1, 0], bool), np.array([0.9, 0.1, 0.4, 0.4])) == pytest.approx(0.875)
    assert np.isnan(auroc(np.ones(3, bool), np.arange(3.0)))


def test_planted_counts_spread_the_total():
    out = planted_counts(0.2, 100, np.array([6, 2, 0]), np.array([50, 30, 20]))
    assert out.sum() == 20 and out.tolist() == [15, 5, 0]
    assert planted_counts(0.1, 100, np.zeros(3), np.array([50, 30, 20])).tolist() == [5, 3, 2]
    assert planted_counts(float("nan"), 100, np.ones(3), np.ones(3) * 30).sum() == 0


def test_model_strength_verdicts():
    probs = np.eye(3)[[0, 1, 2, 0, 1, 2, 0, 1, 2, 0]]
    s = model_strength(probs, np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 1]), 3)
    assert s["holdout_accuracy"] == pytest.approx(0.9) and s["chance_accuracy"] == pytest.approx(0.4)
    sc = {"n_planted": 60, "n_scored": 2000}  # the flips' AUROC interval needs its counts
    assert verdict_of({**s, "planted_auroc": 0.95}, sc)["verdict"] == "ok"
    assert verdict_of({**s, "planted_auroc": 0.7}, sc)["verdict"] == "weak"
    assert verdict_of({**s, "planted_auroc": 0.55}, sc)["verdict"] == "too_weak"  # interval reaches 0.5
    # a probe at chance no longer makes a clearly useful ranking "noise": review it, suggestions weak
    chance = {"n_holdout": 20, "holdout_accuracy": 0.3, "chance_accuracy": 0.28, "standard_error": 0.1}
    v = verdict_of({**chance, "planted_auroc": 0.9}, sc)
    assert v["verdict"] == "weak" and "noise" not in v["message"] and "Review in this order" in v["message"]
    # without planted flips the probe decides, as before
    assert verdict_of(chance)["verdict"] == "too_weak"
    assert verdict_of({"holdout_accuracy": None})["verdict"] == "unknown"

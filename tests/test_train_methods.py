"""Pure-function tests of the training methods (no model, no files)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fercure.train import reliability as rel
from fercure.train import selfcure
from fercure.train.config import TrainConfig
from fercure.train.ensemble import (ensemble_uncertainty, fit_temperature, nll, plan_jobs,
                                    stratified_folds)
from fercure.train.loop import batch_bounds, lr_at


# ---- SCN -------------------------------------------------------------------------------------

def test_rank_regularization_hand_made_alpha():
    # β=0.7 on 10 samples → top 7 vs bottom 3.
    spread = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    assert selfcure.rank_regularization(spread, 0.7, 0.15).item() == pytest.approx(0.0)
    flat = torch.tensor([0.55] * 7 + [0.5] * 3, requires_grad=True)
    loss = selfcure.rank_regularization(flat[torch.randperm(10)], 0.7, 0.15)
    assert loss.item() == pytest.approx(0.15 - 0.05, abs=1e-6)
    loss.backward()  # raises the high group, lowers the low group
    assert (flat.grad[:7] < 0).all() and (flat.grad[7:] > 0).all()


def test_rank_regularization_tiny_batches():
    assert selfcure.rank_regularization(torch.tensor([0.3])).item() == 0.0
    # two samples: one per group
    assert selfcure.rank_regularization(torch.tensor([0.5, 0.5]), 0.7, 0.15).item() == pytest.approx(0.15)


def test_weighted_logits_scales_rows():
    z = torch.ones(2, 3)
    out = selfcure.weighted_logits(z, torch.tensor([0.5, 2.0]))
    assert torch.allclose(out, torch.tensor([[0.5] * 3, [2.0] * 3]))


def _planted():
    # 8 samples, 3 classes. Samples 0-3 clean (label = confident prediction);
    # 4-6 planted wrong (the model is sure of another class); 7 borderline (gap 0.1 < δ2).
    probs = torch.tensor([
        [0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.7, 0.2, 0.1],
        [0.85, 0.1, 0.05], [0.1, 0.1, 0.8], [0.05, 0.9, 0.05], [0.45, 0.35, 0.2],
    ])
    labels = torch.tensor([0, 1, 2, 0, 2, 0, 2, 1])
    alpha = torch.tensor([0.9, 0.9, 0.9, 0.8, 0.2, 0.1, 0.3, 0.25])  # wrong ones have low α
    return probs, labels, alpha


def test_relabel_changes_planted_wrong_labels_only():
    probs, labels, alpha = _planted()
    for scope in ("all", "low"):
        new, mask = selfcure.relabel(probs, labels, alpha, beta=0.5, margin2=0.2, scope=scope)
        assert mask.tolist() == [False] * 4 + [True, True, True, False]
        assert new.tolist() == [0, 1, 2, 0, 0, 2, 1, 1]


def test_relabel_low_scope_spares_high_importance_samples():
    probs, labels, alpha = _planted()
    alpha = alpha.clone()
    alpha[4] = 0.95  # a confident-looking wrong label in the high group: paper rule leaves it
    _, low = selfcure.relabel(probs, labels, alpha, beta=0.5, margin2=0.2, scope="low")
    _, every = selfcure.relabel(probs, labels, alpha, beta=0.5, margin2=0.2, scope="all")
    assert not low[4] and every[4]
    assert selfcure.low_importance_mask(alpha, 0.5).sum().item() == 4
    with pytest.raises(ValueError):
        selfcure.relabel(probs, labels, None, scope="low")


# ---- ARBEx -----------------------------------------------------------------------------------

def test_anchor_loss_pushes_anchors_apart():
    torch.manual_seed(0)
    anchors = torch.nn.Parameter(torch.randn(4, 3, 16) / 4)
    z = torch.randn(32, 16)
    y = torch.arange(32) % 4
    before = rel.anchor_separation(anchors.detach()).item()
    opt = torch.optim.Adam([anchors], lr=0.05)
    for _ in range(50):
        opt.zero_grad()
        rel.anchor_loss(z, y, anchors).backward()
        opt.step()
    after = rel.anchor_separation(anchors.detach()).item()
    assert after < before - 0.1
    assert after >= -1 / 3 - 0.05  # no further apart than a simplex of 4 classes allows


def test_balance_trusts_the_confident_predictor():
    sure = torch.tensor([[0.97, 0.01, 0.01, 0.01]])
    flat = torch.full((1, 4), 0.25)
    corrected, reliability = rel.balance([sure, flat, flat])
    assert corrected.argmax().item() == 0 and corrected[0, 0] > 0.9
    assert torch.allclose(corrected.sum(1), torch.ones(1))
    _, r_flat = rel.balance([flat, flat, flat])
    assert 0.0 <= r_flat.item() <= reliability.item() <= 1.0
    assert rel.confidence(flat).item() == pytest.approx(0.0, abs=1e-6)


def test_anchor_distribution_prefers_nearest_class():
    anchors = torch.eye(3).view(3, 1, 3)
    z = torch.tensor([[1.0, 0.1, 0.0], [0.0, 0.0, 2.0]])
    p = rel.anchor_distribution(rel.anchor_similarity(z, anchors))
    assert p.argmax(1).tolist() == [0, 2]


# ---- ensembles and calibration -----------------------------------------------------------------

def test_temperature_scaling_reduces_nll_of_overconfident_logits():
    rng = np.random.default_rng(0)
    n, c = 2000, 5
    y = rng.integers(0, c, n)
    logits = rng.normal(0, 1, (n, c))
    logits[np.arange(n), y] += 2.0
    wrong = rng.random(n) < 0.3  # 30% of held-out labels disagree with the model
    y_eval = np.where(wrong, (y + 1) % c, y)
    over = logits * 4.0  # overconfident
    t = fit_temperature(over, y_eval)
    assert t > 1.5
    assert nll(over, y_eval, t) < nll(over, y_eval) - 0.1
    # labels drawn from softmax(logits): calibrated by construction, T stays near 1
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y_cal = np.array([rng.choice(c, p=row) for row in p])
    assert 0.8 < fit_temperature(logits, y_cal) < 1.25


def test_mutual_information_zero_for_agreeing_members():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    same = ensemble_uncertainty(np.stack([p, p, p]))
    assert np.allclose(same["mutual_info"], 0.0)
    assert np.allclose(same["mean"], p)
    disagree = ensemble_uncertainty(np.stack([np.eye(3)[[0, 2]], np.eye(3)[[1, 2]]]))
    assert disagree["mutual_info"][0] == pytest.approx(np.log(2), abs=1e-6)
    assert disagree["mutual_info"][1] == pytest.approx(0.0, abs=1e-6)


def test_stratified_folds_and_job_plan():
    labels = np.array([0] * 10 + [1] * 7 + [2] * 3)
    f = stratified_folds(labels, 3, seed=1)
    for c in range(3):
        counts = np.bincount(f[labels == c], minlength=3)
        assert counts.max() - counts.min() <= 1
    jobs = plan_jobs(TrainConfig(ensemble=2, distill_generations=1, folds=3))
    assert [j.key for j in jobs] == ["g0m0", "g0m1", "g1m0", "g1m1", "fold0", "fold1", "fold2", "retrain"]
    assert [j.member for j in jobs if j.kind == "member"] == [0, 1, 2, 3]
    assert len({j.seed for j in jobs}) == len(jobs)
    assert [j.key for j in plan_jobs(TrainConfig(retrain=False))] == ["g0m0"]


# ---- config and schedule -----------------------------------------------------------------------

def test_config_roundtrip_and_validation():
    cfg = TrainConfig(backbone="resnet10t", epochs=30, relabel_epoch=0.5, relabel_scope="all")
    again = TrainConfig.from_dict({**cfg.to_dict(), "unknown_key": 1})
    assert again == cfg and again.relabel_start == 15
    assert TrainConfig().relabel_start == 10
    # a fraction never rounds to epoch 0 (a random model's "confident" predictions)
    assert TrainConfig(epochs=1, relabel_epoch=0.5).relabel_start == 1
    assert TrainConfig(epochs=3, relabel_epoch=0.1).relabel_start == 1
    for bad in ({"relabel_scope": "some"}, {"beta": 1.5}, {"device": "tpu"}, {"folds": 1},
                {"batch_size": 1}, {"amp": "fp8"}, {"holdout": 0.9}, {"plant_rate": -0.1},
                {"knn": -1}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_batch_bounds_and_lr():
    assert batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(9, 4) == [(0, 4), (4, 9)]  # no batch of one
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(99, 100, 10, 1.0) < 0.05

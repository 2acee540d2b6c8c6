"""The method parts and the core loop's contracts: batch independence, the SCN rule on α-weighted
logits, relabelling never at epoch 0, bf16 autocast on CPU with fp32 heads, and exact resume of
per-sample part state (synthetic data, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fercure.train import augment
from fercure.train.config import TrainConfig
from fercure.train.loop import fit, predict
from fercure.train.model import build_model
from fercure.train.parts import build_parts
from fercure.train.parts import section
from fercure.train.parts.scn import ScnPart, ScnSettings
from fercure.train.parts import Step

from test_train_loop import CLASSES, synthetic, tiny_config


def test_arbex_outputs_do_not_depend_on_the_batch():
    cfg = tiny_config(selfcure=True, reliability=True)
    parts = build_parts(cfg, 16, 3, torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(cfg, 3, parts).eval()
    x = torch.randn(16, 3, 32, 32)
    perm = torch.randperm(16)
    with torch.no_grad():
        a = model(x)
        b = model(x[perm])
        alone = model(x[:3])  # a smaller batch: same outputs for the same samples
    for key in ("logits", "alpha", "anchor_z", "attn_logits"):
        assert torch.allclose(a[key][perm], b[key], atol=1e-5), key
        assert torch.allclose(a[key][:3], alone[key], atol=1e-5), key
    rel_a = parts[1].predict(a)["reliability"]
    rel_b = parts[1].predict(b)["reliability"]
    assert torch.allclose(rel_a[perm], rel_b, atol=1e-6)


def test_scn_relabels_on_alpha_weighted_probabilities():
    cfg = TrainConfig(selfcure=True, relabel_epoch=1, relabel_scope="all", margin2=0.2)
    part = ScnPart(section(ScnSettings, cfg))
    logits = torch.tensor([[4.0, 0.0, 0.0], [4.0, 0.0, 0.0]])
    labels = torch.tensor([1, 1])
    # raw softmax: p_max − p_label ≈ 0.96 → relabel both; with α = 0.1 the weighted logits are
    # nearly flat (0.4 vs 0): p_max − p_label ≈ 0.12 < δ2, so the official rule keeps sample 0.
    out = {"alpha": torch.tensor([0.1, 1.0])}
    new, mask = part.relabel(out, logits, Step(idx=torch.arange(2), labels=labels, epoch=1))
    assert mask.tolist() == [False, True] and new.tolist() == [1, 0]
    assert part.relabel(out, logits, Step(idx=torch.arange(2), labels=labels, epoch=0)) is None


def test_one_epoch_run_never_relabels():
    imgs, given, _ = synthetic(n=48, seed=1)
    res = fit(imgs, given, CLASSES, tiny_config(epochs=1, selfcure=True, relabel_epoch=0.5,
                                                relabel_scope="all"))
    assert res.relabel_count.sum() == 0 and (res.labels == given).all()


def test_bf16_autocast_on_cpu_keeps_heads_in_fp32():
    imgs, given, _ = synthetic(n=32, seed=2)
    cfg = tiny_config(epochs=1, amp="bf16", selfcure=True, reliability=True)
    res = fit(imgs, given, CLASSES, cfg)
    x = augment.eval_batch(torch.from_numpy(imgs[:8]), 32)
    res.model.eval()
    with torch.no_grad():
        out = res.model(x)
        res.model.amp = None
        ref = res.model(x)
    for key in ("embedding", "logits", "alpha", "attn_logits"):
        assert out[key].dtype == torch.float32, key
    p, p_ref = torch.softmax(out["logits"], 1), torch.softmax(ref["logits"], 1)
    assert (p - p_ref).abs().max() < 0.05  # only the backbone's bf16 rounding differs
    assert np.isfinite(res.dynamics["p_given"]).all()


def test_normalisation_constants_are_made_once_per_device():
    a = augment._mean_std(torch.device("cpu"), torch.float32)
    b = augment._mean_std(torch.device("cpu"), torch.float32)
    assert a[0] is b[0] and a[1] is b[1]


@pytest.mark.parametrize("kw", [dict(elr=True), dict(selfcure=True, reliability=True, relabel_epoch=1)],
                         ids=["elr", "scn+arbex"])
def test_resume_restores_part_state_exactly(kw):
    imgs, given, _ = synthetic(n=48, seed=4)
    cfg = tiny_config(epochs=3, **kw)
    states = []
    full = fit(imgs, given, CLASSES, cfg, on_epoch_end=states.append)
    resumed = fit(imgs, given, CLASSES, cfg, resume_state=states[0])
    for k in ("p_given", "margin", "predicted", "current_index"):
        assert np.array_equal(full.dynamics[k], resumed.dynamics[k]), k
    if kw.get("elr"):
        assert torch.equal(full.parts[0].targets, resumed.parts[0].targets)
        assert full.parts[0].targets.sum() > 0


def test_elr_targets_follow_the_predictions():
    imgs, given, _ = synthetic(n=48, seed=5)
    res = fit(imgs, given, CLASSES, tiny_config(epochs=2, elr=True))
    t = res.parts[0].targets.numpy()
    assert np.allclose(t.sum(axis=1), 1 - 0.7 ** 2, atol=1e-4)  # two EMA updates from zero, β = 0.7
    agree = (t.argmax(1) == res.mean_probs.argmax(1)).mean()
    assert agree > 0.8


def test_epoch_eval_records_mirror_averaged_p_given():
    imgs, given, _ = synthetic(n=48, seed=6)
    cfg = tiny_config(epochs=2, epoch_eval=True)
    res = fit(imgs, given, CLASSES, cfg)
    pe = res.dynamics["p_given_eval"]
    assert pe.shape == (2, 48)
    last = predict(res.model, imgs, cfg, flip=True)["probs"][np.arange(48), given]
    assert np.allclose(pe[-1], last, atol=1e-5)


def test_a_diverged_run_stops_with_a_clear_error():
    from fercure.train.loop import TrainingDivergedError

    imgs, given, _ = synthetic(n=48, seed=7)
    with pytest.raises(TrainingDivergedError, match="Lower the learning rate"):
        fit(imgs, given, CLASSES, tiny_config(epochs=2, lr=1e8))

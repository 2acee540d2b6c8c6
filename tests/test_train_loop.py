"""The training engine on tiny synthetic data (CPU, timm's test_resnet, 32 px)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fercure.train.config import TrainConfig
from fercure.train.ensemble import ensemble_uncertainty
from fercure.train.loop import fit, predict
from fercure.train.model import PretrainedWeightsError, build_model, load_pretrained
from fercure.train.parts import build_parts
from fercure.train.reliability import anchor_separation

CLASSES = ["a", "b", "c"]


def _pattern(k: int, size: int) -> np.ndarray:
    h = size // 2
    m = np.zeros((size, size, 3))
    if k == 0:
        m[:h] = 90
    elif k == 1:
        m[h:] = 90
    else:
        m[:, :h] = 90
    m[..., k] += 40
    return m


def synthetic(n: int = 150, size: int = 32, noise: float = 0.2, seed: int = 0):
    """Separable 3-class images. Planted label noise sits on ambiguous images (half one class's
    pattern, half another's, labelled with the other), as noisy labels do in real FER data:
    SCN's α is a function of the image, so it can only flag noise that the image betrays."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    rng.shuffle(y)
    noisy = rng.random(n) < noise
    imgs = rng.normal(110, 25, (n, size, size, 3))
    given = y.copy()
    for i, k in enumerate(y):
        if noisy[i]:
            other = (k + rng.integers(1, 3)) % 3
            imgs[i] += 0.5 * _pattern(k, size) + 0.5 * _pattern(other, size)
            given[i] = other
        else:
            imgs[i] += _pattern(k, size)
    return np.clip(imgs, 0, 255).astype(np.uint8), given, noisy


def tiny_config(**kw) -> TrainConfig:
    base = dict(backbone="test_resnet", image_size=32, epochs=6, batch_size=32, lr=3e-3,
                device="cpu", relabel_epoch=100)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained():
    imgs, given, noisy = synthetic()
    cfg = tiny_config(selfcure=True, reliability=True)
    torch.manual_seed(cfg.seed)
    parts = build_parts(cfg, len(imgs), 3, torch.device("cpu"))
    init_sep = anchor_separation(build_model(cfg, 3, parts).heads["arbex"].anchors.detach()).item()  # same init as fit
    res = fit(imgs, given, CLASSES, cfg)
    return imgs, given, noisy, cfg, res, init_sep


def test_fit_learns_and_records_dynamics(trained):
    imgs, given, noisy, cfg, res, _ = trained
    assert res.final_train_accuracy > 0.7
    assert set(res.dynamics) >= {"p_given", "margin", "alpha", "predicted", "current_index", "relabeled"}
    assert res.dynamics["p_given"].shape == (cfg.epochs, len(imgs))
    assert res.mean_probs.shape == (len(imgs), 3)
    # cartography signal already separates planted noise
    mean_p = res.dynamics["p_given"].mean(0)
    assert mean_p[~noisy].mean() > mean_p[noisy].mean() + 0.1


def test_alpha_separates_noisy_from_clean(trained):
    _, _, noisy, _, res, _ = trained
    alpha = res.dynamics["alpha"][-1]
    assert alpha[~noisy].mean() > alpha[noisy].mean() + 0.05


def test_anchors_of_different_classes_move_apart(trained):
    *_, res, init_sep = trained
    final = res.history[-1]["anchor_separation"]
    assert final < init_sep - 0.05


def test_predict_outputs(trained):
    imgs, _, _, cfg, res, _ = trained
    out = predict(res.model, imgs[:40], cfg, batch_size=16, parts=res.parts)
    assert out["probs"].shape == (40, 3) and np.allclose(out["probs"].sum(1), 1, atol=1e-5)
    assert out["rel_probs"].shape == (40, 3) and out["embedding"].shape[0] == 40
    assert ((out["reliability"] >= 0) & (out["reliability"] <= 1)).all()
    assert ((out["alpha"] > 0) & (out["alpha"] < 1)).all()
    # the mirror-averaged pass is a different, still normalised, prediction
    flip = predict(res.model, imgs[:40], cfg, batch_size=16, flip=True)
    assert np.allclose(flip["probs"].sum(1), 1, atol=1e-5) and not np.allclose(flip["probs"], out["probs"])


def test_relabelling_follows_the_rule_during_fit():
    imgs, given, noisy = synthetic(n=96, seed=3)
    cfg = tiny_config(epochs=4, relabel_epoch=2, relabel_scope="all", reliability=False)
    res = fit(imgs, given, CLASSES, cfg)
    d = res.dynamics
    assert not d["relabeled"][:2].any()  # nothing before the relabel epoch
    changed = res.labels != given
    assert (res.relabel_count > 0).sum() >= changed.sum()
    assert np.array_equal(d["current_index"][-1], res.labels)


def test_resume_is_identical_on_cpu():
    imgs, given, _ = synthetic(n=64, seed=1)
    cfg = tiny_config(epochs=2, batch_size=16, relabel_epoch=1, dropout=0.1)
    states = []
    full = fit(imgs, given, CLASSES, cfg, on_epoch_end=lambda s: states.append(s))
    # "crash" after the first epoch, restart from its checkpoint state
    resumed = fit(imgs, given, CLASSES, cfg, resume_state=states[0])
    for k in ("loss", "train_accuracy", "relabeled"):
        assert resumed.history[0][k] == full.history[0][k]
        assert resumed.history[1][k] == full.history[1][k]
    for k in full.dynamics:
        assert np.array_equal(full.dynamics[k], resumed.dynamics[k]), k
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_ensemble_mutual_information_higher_off_distribution():
    imgs, given, _ = synthetic(n=90, noise=0.0, seed=2)
    cfg = tiny_config(epochs=3, reliability=False, selfcure=False)
    rng = np.random.default_rng(9)
    noise_imgs = rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8)  # nothing like a training image
    ind, off = [], []
    for seed in range(3):
        res = fit(imgs, given, CLASSES, cfg, seed=seed)
        ind.append(predict(res.model, imgs[:60], cfg)["probs"])
        off.append(predict(res.model, noise_imgs, cfg)["probs"])
    mi_in = ensemble_uncertainty(np.stack(ind))["mutual_info"].mean()
    mi_off = ensemble_uncertainty(np.stack(off))["mutual_info"].mean()
    assert mi_off > mi_in


def test_pretrained_weights_load_and_mismatch(tmp_path):
    cfg = tiny_config()
    src = build_model(cfg, 3)
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.backbone.state_dict().items()}}, good)
    dst = build_model(cfg, 3)
    load_pretrained(dst.backbone, good)
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(v, dst.backbone.state_dict()[k])
    other = build_model(tiny_config(backbone="resnet10t"), 3)
    bad = tmp_path / "bad.pt"
    torch.save(other.backbone.state_dict(), bad)
    with pytest.raises(PretrainedWeightsError, match="shape mismatch"):
        build_model(tiny_config(pretrained=str(bad)), 3)
    with pytest.raises(PretrainedWeightsError, match="do not exist"):
        build_model(tiny_config(pretrained=str(tmp_path / "none.pt")), 3)

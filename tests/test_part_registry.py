"""Parts are registered with a decorator, built from their own config section, ordered by what they
declare, and reach the loop only through hooks: a new part needs no change to the loop or model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from fercure.train.config import TrainConfig
from fercure.train.loop import fit
from fercure.train.parts import REGISTRY, Part, build_parts, ordered, part_names, register, section
from fercure.train.parts.arbex import ArbexSettings


def test_bundled_parts_are_registered_in_their_default_order():
    assert list(REGISTRY)[:6] == ["scn", "arbex", "elr", "jigsaw", "inpaint", "distill"]


def test_each_section_names_only_train_config_values():
    names = {f.name for f in dataclasses.fields(TrainConfig)} | {"relabel_start"}
    for entry in REGISTRY.values():
        assert {f.name for f in dataclasses.fields(entry.settings)} <= names, entry.name


def test_section_reads_the_parts_own_fields():
    s = section(ArbexSettings, TrainConfig(anchor_dim=16, anchors_per_class=2))
    assert (s.anchor_dim, s.anchors_per_class) == (16, 2) and not hasattr(s, "beta")


def test_declared_after_moves_a_part_behind_what_it_needs():
    assert ordered(["arbex", "scn"]) == ["scn", "arbex"]  # ARBEx weights its loss by SCN's α
    assert ordered(["elr", "scn"]) == ["elr", "scn"]  # no declared dependency: given order kept


def test_build_parts_follows_the_config():
    config = TrainConfig(reliability=True, selfcure=True, elr=True)
    assert [p.name for p in build_parts(config, 8, 3, torch.device("cpu"))] == ["scn", "arbex", "elr"]
    # distillation is on for the run, built only for a student (a fit given soft targets)
    config = TrainConfig(distill_generations=1)
    assert part_names(config) == ["distill"]
    assert build_parts(config, 8, 3, torch.device("cpu")) == []
    assert [p.name for p in build_parts(config, 8, 3, torch.device("cpu"), torch.ones(8, 3) / 3)] == ["distill"]


@dataclass(frozen=True)
class _HalfSettings:
    seed: int


class _Half(Part):
    """Weights every sample by 0.5 and reports a number each epoch."""

    def __init__(self, config: _HalfSettings, ctx) -> None:
        self.epochs = 0

    def sample_weight(self, out):
        return torch.full_like(out["logits"][:, 0], 0.5)

    def epoch_record(self):
        self.epochs += 1
        return {"half_epochs": float(self.epochs)}


@pytest.fixture
def half_part():
    register("half", settings=_HalfSettings, enabled=lambda c: c.extra.get("half", False))(_Half)
    yield
    del REGISTRY["half"]


def test_a_new_part_reaches_the_loop_through_its_hooks(half_part):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (12, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(12) % 3
    config = TrainConfig(backbone="test_resnet", image_size=16, epochs=2, batch_size=6, device="cpu",
                         extra={"half": True})
    res = fit(images, labels, ["a", "b", "c"], config)
    assert [p.name for p in res.parts] == ["half"]
    assert np.all(res.dynamics["alpha"] == 0.5)  # recorded as the sample weight, not by a part's name
    assert [h["half_epochs"] for h in res.history] == [1.0, 2.0]
    plain = fit(images, labels, ["a", "b", "c"], dataclasses.replace(config, extra={}))
    assert np.all(plain.dynamics["alpha"] == 1.0) and "half_epochs" not in plain.history[-1]

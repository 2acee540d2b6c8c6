"""The Part interface and the Step a part sees (the hooks are described in the package docstring)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.nn as nn


@dataclass
class Step:
    """What a part may know about the batch being trained."""
    idx: torch.Tensor  # (B,) positions of the batch's samples among the fit's samples
    labels: torch.Tensor  # (B,) current training labels (after any relabelling so far)
    epoch: int
    # (B,) detached per-sample weights a part gave this batch (``sample_weight``: SCN's α), or None
    weight: torch.Tensor | None = None
    # the first ``fresh`` rows are new this epoch; the rest fill a fixed-shape step (``--compile``)
    # with samples already trained: per-sample state is updated for the fresh rows only. None: all.
    fresh: int | None = None


@dataclass(frozen=True)
class Context:
    """What a part is built for besides its config section: the fit's size and device."""
    n: int  # samples in the fit
    num_classes: int
    device: torch.device
    soft_targets: torch.Tensor | None = None  # (n, C) a distillation student's teacher probabilities
    vote_targets: torch.Tensor | None = None  # (n, C) the annotators' vote distribution (--soft-labels)


S = TypeVar("S")


def section(settings: type[S], config: Any) -> S:
    """A part's own config section: the fields of the ``settings`` dataclass, read from the flat
    TrainConfig (a property such as ``relabel_start`` counts as a field)."""
    return settings(**{f.name: getattr(config, f.name) for f in dataclasses.fields(settings)})


class Part:
    name = "part"
    # The head from ``make_head`` runs on the part's own rows, called by the part (a pretext head),
    # not by the model on every row.
    head_on_demand = False
    # The model adds the backbone's spatial feature map (B,D,h,w) to its outputs as "feature_map".
    needs_feature_map = False

    def make_head(self, embed_dim: int, num_classes: int) -> nn.Module | None:
        return None

    def transform_logits(self, out: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        return logits

    ce_weight: float = 1.0

    def loss(self, out: dict[str, torch.Tensor], logits: torch.Tensor, step: Step) -> torch.Tensor | None:
        return None

    def relabel(self, out: dict[str, torch.Tensor], logits: torch.Tensor, step: Step
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None

    def sample_weight(self, out: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """(B,) weights the part gives the batch's samples (SCN's importance α); the loop records
        them in the dynamics ("alpha", 1 without such a part) and passes them on in ``Step.weight``."""
        return None

    def predict(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {}

    def epoch_record(self) -> dict[str, float]:
        """Numbers for the epoch's history record (ARBEx: how far apart the class anchors are)."""
        return {}

    def check_model(self, model: nn.Module, backbone_name: str) -> None:
        """Refuse a model the part cannot work with (a WorkspaceError saying what to use)."""
        return None

    def aux_inputs(self, x: torch.Tensor, gen: torch.Generator
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        """A pretext task's inputs made from the batch, and the targets its ``aux_loss`` needs
        (handed back in the output dict of its rows); None: no pretext task."""
        return None

    def aux_loss(self, out: dict[str, torch.Tensor], step: Step) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} made auxiliary inputs but has no aux_loss")

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        return None

    def per_sample_state(self) -> dict[str, torch.Tensor]:
        return {}


@dataclass(frozen=True)
class Entry:
    name: str
    cls: type
    settings: type  # the part's config section (a dataclass)
    enabled: Callable[[Any], bool]  # does this TrainConfig switch the part on?
    after: tuple[str, ...] = ()  # parts that must come before it when both run


REGISTRY: dict[str, Entry] = {}


def register(name: str, *, settings: type, enabled: Callable[[Any], bool], after: tuple[str, ...] = ()):
    """Class decorator: make a Part buildable by name. ``cls(settings, context)`` builds it; a
    ``build`` classmethod may return None instead (a part with nothing to do in this fit)."""
    def wrap(cls: type) -> type:
        if name in REGISTRY:
            raise ValueError(f"part {name!r} is registered twice")
        cls.name = name
        REGISTRY[name] = Entry(name, cls, settings, enabled, tuple(after))
        return cls
    return wrap


def ordered(names: list[str]) -> list[str]:
    """``names`` in registration order, moved only where a declared ``after`` needs it."""
    done: list[str] = []
    pending = list(names)
    while pending:
        ready = next((n for n in pending if all(a in done or a not in pending for a in REGISTRY[n].after)), None)
        if ready is None:
            raise ValueError(f"parts {pending} depend on each other in a circle")
        done.append(ready)
        pending.remove(ready)
    return done

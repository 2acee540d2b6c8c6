"""Self-distillation (EMENet-style generations) as a part: the student's core cross-entropy on the
given labels is mixed with cross-entropy against the teacher ensemble's soft labels:
(1 − w) · CE(labels) + w · CE(soft labels)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fercure.train.parts.base import Context, Part, Step, register


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample CE against soft targets (B,C)."""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1)


@dataclass(frozen=True)
class DistillSettings:
    distill_weight: float


# On in a run with distillation generations; built only for the students (a fit given soft targets).
@register("distill", settings=DistillSettings, enabled=lambda c: c.distill_generations > 0)
class DistillPart(Part):
    def __init__(self, config: DistillSettings, soft_targets: torch.Tensor) -> None:
        self.w = float(config.distill_weight)
        self.ce_weight = 1.0 - self.w
        self.soft = soft_targets

    @classmethod
    def build(cls, config: DistillSettings, ctx: Context) -> "DistillPart | None":
        return None if ctx.soft_targets is None else cls(config, ctx.soft_targets)

    def loss(self, out, logits, step: Step):
        return self.w * soft_cross_entropy(logits, self.soft[step.idx]).mean()

"""Self-distillation (EMENet-style generations) as a part: the student's core cross-entropy on the
given labels is mixed with cross-entropy against the teacher ensemble's soft labels:
(1 − w) · CE(labels) + w · CE(soft labels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fercure.train.parts import Part, Step


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample CE against soft targets (B,C)."""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1)


class DistillPart(Part):
    name = "distill"

    def __init__(self, config, soft_targets: torch.Tensor) -> None:
        self.w = float(config.distill_weight)
        self.ce_weight = 1.0 - self.w
        self.soft = soft_targets

    def loss(self, out, logits, step: Step):
        return self.w * soft_cross_entropy(logits, self.soft[step.idx]).mean()

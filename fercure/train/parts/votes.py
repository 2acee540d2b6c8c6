"""Soft targets from several annotators' votes (``train --soft-labels``): the core cross-entropy on
the one label is replaced by cross-entropy against each image's vote distribution (the FER+ paper's
"cross-entropy" scheme). Samples whose training label is not their votes' (a planted flip of the
self-check, a reviewer's decision) get their training label as a one-hot target (stages.train)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fercure.train.parts.base import Context, Part, Step, register
from fercure.train.parts.distill import soft_cross_entropy


@dataclass(frozen=True)
class VoteSettings:
    soft_labels: bool


@register("votes", settings=VoteSettings, enabled=lambda c: bool(getattr(c, "soft_labels", False)))
class VotesPart(Part):
    ce_weight = 0.0  # the vote distribution replaces the one-label cross-entropy

    def __init__(self, targets: torch.Tensor) -> None:
        self.targets = targets

    @classmethod
    def build(cls, config: VoteSettings, ctx: Context) -> "VotesPart | None":
        return None if ctx.vote_targets is None else cls(ctx.vote_targets)

    def loss(self, out, logits, step: Step):
        return soft_cross_entropy(logits, self.targets[step.idx]).mean()

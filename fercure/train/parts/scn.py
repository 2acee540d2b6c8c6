"""SCN (Self-Cure Network, Wang et al., CVPR 2020) as a part: importance weight head α, α-weighted
logits for the core cross-entropy, rank regularisation, and relabelling from ``relabel_start``.
The math lives in ``fercure.train.selfcure``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from fercure.train import selfcure
from fercure.train.parts.base import Context, Part, Step, register


@dataclass(frozen=True)
class ScnSettings:
    beta: float
    margin1: float
    margin2: float
    relabel_start: int
    relabel_scope: str


class _AlphaHead(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, 1)

    def forward(self, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"alpha": torch.sigmoid(self.fc(emb)).squeeze(1)}


@register("scn", settings=ScnSettings, enabled=lambda c: c.selfcure)
class ScnPart(Part):
    def __init__(self, config: ScnSettings, ctx: Context | None = None) -> None:
        self.config = config

    def make_head(self, embed_dim: int, num_classes: int) -> nn.Module:
        return _AlphaHead(embed_dim)

    def transform_logits(self, out, logits):
        return selfcure.weighted_logits(logits, out["alpha"])

    def sample_weight(self, out):
        return out["alpha"]

    def loss(self, out, logits, step: Step):
        return selfcure.rank_regularization(out["alpha"], self.config.beta, self.config.margin1)

    def relabel(self, out, logits, step: Step):
        if step.epoch < self.config.relabel_start:
            return None
        # The official code compares probabilities of the α-weighted logits (the ones it trains on).
        probs = torch.softmax(selfcure.weighted_logits(logits.detach(), out["alpha"].detach()), dim=1)
        return selfcure.relabel(probs, step.labels, out["alpha"].detach(), self.config.beta,
                                self.config.margin2, self.config.relabel_scope)

    def predict(self, out):
        return {"alpha": out["alpha"]}

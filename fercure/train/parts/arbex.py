"""ARBEx-style reliability balancing (Wasi et al., 2023) as a part.

Three predictors vote: the classifier, the nearest class anchor in a projected space, and a
classifier on multi-head attention. Departure from the paper: the paper's attention runs over the
batch's embeddings, which makes a sample's reliability depend on which batch it lands in (and on
the eval batch size). Here each sample attends over a learned memory of C·K tokens instead, so its
outputs are a property of the sample alone (tested by permuting a batch). The math lives in
``fercure.train.reliability``.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from fercure.train import reliability as rel
from fercure.train.parts.base import Context, Part, Step, register


class ArbexHead(nn.Module):
    def __init__(self, d: int, num_classes: int, anchors_per_class: int, anchor_dim: int,
                 attention_heads: int) -> None:
        super().__init__()
        self.anchor_proj = nn.Linear(d, anchor_dim)
        # Unit-scale anchors (std 1/sqrt(A)): compared by cosine, so their norm sets how fast Adam
        # can turn them; N(0,1) in 128-d would make them ~11x slower to move.
        self.anchors = nn.Parameter(
            torch.randn(num_classes, anchors_per_class, anchor_dim) / math.sqrt(anchor_dim))
        self.memory = nn.Parameter(torch.randn(num_classes * anchors_per_class, d) / math.sqrt(d))
        heads = math.gcd(d, max(1, attention_heads))  # MHA needs D divisible by heads
        self.attention = nn.MultiheadAttention(d, heads, batch_first=True)
        self.attn_classifier = nn.Linear(d, num_classes)

    def forward(self, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        q = emb.unsqueeze(1)  # (B,1,D): each sample is its own query
        mem = self.memory.unsqueeze(0).expand(emb.shape[0], -1, -1)
        att, _ = self.attention(q, mem, mem, need_weights=False)
        return {"anchor_z": self.anchor_proj(emb), "attn_logits": self.attn_classifier(att.squeeze(1))}


def corrected_distribution(out: dict[str, torch.Tensor], anchors: torch.Tensor,
                           detach_classifier: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """ARBEx corrected distribution and reliability from a model output dict."""
    p = torch.softmax(out["logits"], dim=1)
    if detach_classifier:
        p = p.detach()
    pa = rel.anchor_distribution(rel.anchor_similarity(out["anchor_z"], anchors))
    pt = torch.softmax(out["attn_logits"], dim=1)
    return rel.balance([p, pa, pt])


@dataclass(frozen=True)
class ArbexSettings:
    anchors_per_class: int
    anchor_dim: int
    anchor_weight: float
    attention_heads: int
    reliability_weight: float


# After SCN: when both run, ARBEx weights its loss by SCN's α (``Step.weight``).
@register("arbex", settings=ArbexSettings, enabled=lambda c: c.reliability, after=("scn",))
class ArbexPart(Part):
    def __init__(self, config: ArbexSettings, ctx: Context | None = None) -> None:
        self.config = config
        self.head: ArbexHead | None = None

    def make_head(self, embed_dim: int, num_classes: int) -> nn.Module:
        c = self.config
        self.head = ArbexHead(embed_dim, num_classes, c.anchors_per_class, c.anchor_dim, c.attention_heads)
        return self.head

    def loss(self, out, logits, step: Step):
        # The classifier enters detached: the core CE trains it, so ARBEx cannot undo SCN's
        # down-weighting of suspect samples; this term trains the anchor and attention heads.
        corrected, _ = corrected_distribution(out, self.head.anchors, detach_classifier=True)
        w = step.weight
        nll = F.nll_loss(torch.log(corrected.clamp_min(1e-8)), step.labels, reduction="none")
        rel_ce = (nll * w).sum() / w.sum().clamp_min(1e-8) if w is not None else nll.mean()
        anc = rel.anchor_loss(out["anchor_z"], step.labels, self.head.anchors, sample_weight=w)
        return self.config.reliability_weight * rel_ce + self.config.anchor_weight * anc

    def predict(self, out):
        corrected, relia = corrected_distribution(out, self.head.anchors)
        return {"rel_probs": corrected, "reliability": relia}

    def anchor_separation(self) -> float:
        return float(rel.anchor_separation(self.head.anchors.detach()))

    def epoch_record(self):
        return {"anchor_separation": self.anchor_separation()}

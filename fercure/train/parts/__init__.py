"""Method parts: what a noise-handling method adds to the plain cross-entropy core.

The loop (``fercure.train.loop``) trains a backbone + linear classifier with cross-entropy and
records per-sample dynamics every step; each part plugs into it through a few hooks and nothing
else, so methods compose without flags threaded through the loop:

- ``make_head(d, C)``: an ``nn.Module`` run on the fp32 embedding; its outputs join the model's
  output dict (SCN's ``alpha``, ARBEx's ``anchor_z`` / ``attn_logits``).
- ``transform_logits(out, logits)``: the logits the core cross-entropy sees (SCN: α · logits).
- ``ce_weight``: scale of the core cross-entropy (a distillation student mixes it with soft labels).
- ``loss(out, logits, step)``: extra loss terms for the batch.
- ``relabel(out, logits, step)``: a label change for the batch's samples, or None.
- ``predict(out)``: extra per-sample eval outputs (prediction columns).
- ``aux_inputs(x, gen)`` / ``aux_loss(out, step)``: a pretext task's own inputs, made on the device
  from the augmented batch and concatenated to it (one forward pass per step), and its loss on
  its rows of the output (HMTL's jigsaw and in-painting). Those rows never reach the label
  statistics.
- ``state()`` / ``load_state()``: per-sample tensors the part keeps (ELR's targets), saved in
  every checkpoint so a resumed run continues exactly.
- ``per_sample_state()``: the tensors indexed by the fit's sample position that the part updates
  during training (ELR's targets); under data parallelism the loop merges each rank's rows of them
  after every epoch, so every rank holds all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn


@dataclass
class Step:
    """What a part may know about the batch being trained."""
    idx: torch.Tensor  # (B,) positions of the batch's samples among the fit's samples
    labels: torch.Tensor  # (B,) current training labels (after any relabelling so far)
    epoch: int


class Part:
    name = "part"

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

    def predict(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {}

    def aux_inputs(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor | None:
        return None

    def aux_loss(self, out: dict[str, torch.Tensor], step: Step) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} made auxiliary inputs but has no aux_loss")

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        return None

    def per_sample_state(self) -> dict[str, torch.Tensor]:
        return {}


def build_parts(config: Any, n: int, num_classes: int, device: torch.device,
                soft_targets: torch.Tensor | None = None) -> list[Part]:
    """The parts a TrainConfig switches on, in a fixed order (SCN before ARBEx: ARBEx weights its
    loss by SCN's α when both run)."""
    from fercure.train.parts.arbex import ArbexPart
    from fercure.train.parts.distill import DistillPart
    from fercure.train.parts.elr import ElrPart
    from fercure.train.parts.hmtl import InpaintPart, JigsawPart
    from fercure.train.parts.scn import ScnPart

    parts: list[Part] = []
    if config.selfcure:
        parts.append(ScnPart(config))
    if config.reliability:
        parts.append(ArbexPart(config))
    if config.elr:
        parts.append(ElrPart(config, n, num_classes, device))
    if config.jigsaw:
        parts.append(JigsawPart(config))
    if config.inpaint:
        parts.append(InpaintPart(config))
    if soft_targets is not None:
        parts.append(DistillPart(config, soft_targets))
    return parts


def part_names(config: Any) -> list[str]:
    """Names of the parts a config switches on (for config.json and summaries)."""
    names = [name for name, on in (("scn", config.selfcure), ("arbex", config.reliability),
                                   ("elr", config.elr), ("jigsaw", config.jigsaw),
                                   ("inpaint", config.inpaint)) if on]
    names += [] if config.pool == "avg" else [config.pool]
    return names + (["distill"] if config.distill_generations else [])

"""HMTL-style self-supervised tasks trained beside the labels (hybrid multi-task learning for FER,
trained from scratch), as two parts: jigsaw and in-painting.

Each takes the first ``aux_share`` of the batch's augmented crops (the batch order is already a
random permutation), turns them into its pretext inputs on the device and hands them to the loop,
which concatenates them to the batch: the backbone makes one forward pass per step and its
batch-norm statistics see both. The part's head runs only on its own rows, and those rows never
reach the label statistics (dynamics, p(given), relabelling). The pretext math lives in
``fercure.train.pretext``.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from fercure.train import pretext
from fercure.train.parts.base import Context, Part, Step, register
from fercure.errors import WorkspaceError
from fercure.train import pooling


def aux_rows(batch: int, share: float) -> int:
    """Rows of a batch a pretext task takes (at least 2: batch norm)."""
    return min(batch, max(2, math.ceil(share * batch)))


class JigsawHead(nn.Module):

    def __init__(self, d: int, n_perms: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(d, d // 2), nn.ReLU(inplace=True), nn.Linear(d // 2, n_perms))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.fc(emb)


@dataclass(frozen=True)
class JigsawSettings:
    jigsaw_weight: float
    jigsaw_grid: int
    jigsaw_perms: int
    aux_share: float


@register("jigsaw", settings=JigsawSettings, enabled=lambda c: c.jigsaw)
class JigsawPart(Part):
    head_on_demand = True  # the part runs its head on its own rows

    def __init__(self, config: JigsawSettings, ctx: Context | None = None) -> None:
        self.weight, self.share, self.grid = float(config.jigsaw_weight), float(config.aux_share), int(config.jigsaw_grid)
        self.perms = pretext.permutation_set(self.grid, int(config.jigsaw_perms), seed=0)
        self.head: JigsawHead | None = None

    def make_head(self, embed_dim: int, num_classes: int) -> nn.Module:
        self.head = JigsawHead(embed_dim, len(self.perms))
        return self.head

    def aux_inputs(self, x, gen):
        k = aux_rows(x.shape[0], self.share)
        if self.perms.device != x.device:  # once: a host→device copy every step would block it
            self.perms = self.perms.to(x.device)
        which = torch.randint(len(self.perms), (k,), generator=gen, device=x.device)
        return pretext.shuffle_tiles(x[:k], self.perms, which, self.grid), {"jigsaw_permutation": which}

    def aux_loss(self, out, step: Step):
        return self.weight * F.cross_entropy(self.head(out["embedding"]), out["jigsaw_permutation"])


class InpaintDecoder(nn.Module):
    """Feature map (B,D,h,w) → image (B,3,r,r): a 1×1 reduction, bilinear upsampling, two 3×3
    convolutions. Small on purpose: the backbone should carry the work."""

    def __init__(self, d: int, out_size: int, width: int = 64) -> None:
        super().__init__()
        self.out_size = out_size
        self.reduce = nn.Conv2d(d, width, 1)
        self.body = nn.Sequential(nn.Conv2d(width, width // 2, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(width // 2, 3, 3, padding=1))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        z = F.interpolate(self.reduce(feat), size=(self.out_size, self.out_size), mode="bilinear",
                          align_corners=False)
        return self.body(F.relu(z))


@dataclass(frozen=True)
class InpaintSettings:
    inpaint_weight: float
    inpaint_frac: tuple
    aux_share: float
    image_size: int


@register("inpaint", settings=InpaintSettings, enabled=lambda c: c.inpaint)
class InpaintPart(Part):
    head_on_demand = True
    needs_feature_map = True

    def __init__(self, config: InpaintSettings, ctx: Context | None = None) -> None:
        self.weight, self.share = float(config.inpaint_weight), float(config.aux_share)
        self.frac = tuple(float(v) for v in config.inpaint_frac)
        # The reconstruction resolution: half the crop, at most 32 px (the loss is about where the
        # face parts are, not their fine texture, and the decoder's cost grows with its square).
        if config.image_size is None:  # train resolves it from the crop store before building parts
            raise ValueError("InpaintPart needs the training image size: set TrainConfig.image_size.")
        self.out_size = max(8, min(32, int(config.image_size) // 2))
        self.head: InpaintDecoder | None = None

    def make_head(self, embed_dim: int, num_classes: int) -> nn.Module:
        self.head = InpaintDecoder(embed_dim, self.out_size)
        return self.head

    def aux_inputs(self, x, gen):
        k = aux_rows(x.shape[0], self.share)
        mask = pretext.random_square_mask(k, x.shape[-1], self.frac, gen, x.device)
        targets = {"inpaint_target": pretext.downsample(x[:k], self.out_size),
                   "inpaint_mask": pretext.downsample(mask, self.out_size)}
        return x[:k] * (1.0 - mask), targets  # 0 is the normalised mean, as random erasing fills

    def check_model(self, model, backbone_name):
        if pooling.is_vit(model.backbone):
            raise WorkspaceError(f"--inpaint reconstructs from a CNN feature map; {backbone_name!r} returns "
                                 "ViT tokens. Use a CNN backbone (e.g. resnet18) or --jigsaw.")

    def aux_loss(self, out, step: Step):
        if "feature_map" not in out:
            raise ValueError("in-painting needs a CNN feature map; this backbone returns tokens")
        recon = self.head(out["feature_map"])
        return self.weight * pretext.masked_mse(recon, out["inpaint_target"], out["inpaint_mask"])

"""Batched augmentation on the device, straight from the uint8 store.

One ``affine_grid`` + ``grid_sample`` per batch does the resize to the training size, the random
resized crop (scale + aspect + translation), a small rotation and the horizontal flip together, so a
batch costs one gather from the store and one resampling pass, with no host round trip. Random
erasing and normalisation follow. Every random draw comes from an explicit ``torch.Generator`` so a
resumed run draws the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ImageNet statistics: what most timm backbones expect; a backbone declaring others (timm's
# pretrained_cfg, FerNet.mean / .std) is given its own.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugmentConfig:
    flip_p: float = 0.5
    scale: tuple[float, float] = (0.8, 1.0)  # area fraction of the crop (RandomResizedCrop-like)
    ratio: tuple[float, float] = (0.9, 1.1)  # aspect ratio of the crop; faces are near-square
    max_rotate_deg: float = 10.0
    max_translate: float = 0.1  # fraction of the image size, on top of the crop's own freedom
    erase_p: float = 0.0  # the SCN recipe uses RandomErasing(scale=(0.02, 0.25)), p=0.5
    erase_scale: tuple[float, float] = (0.02, 0.25)
    erase_ratio: tuple[float, float] = (0.3, 3.3)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (hi - lo) + lo


def to_float(batch_u8: torch.Tensor) -> torch.Tensor:
    """(B,H,W,3) uint8 → (B,3,H,W) float32 in [0,1]."""
    return batch_u8.permute(0, 3, 1, 2).float().div_(255.0)


@functools.lru_cache(maxsize=None)
def _mean_std(device: torch.device, dtype: torch.dtype, mean: tuple = MEAN, std: tuple = STD
              ) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: building them per batch is a host→device copy, i.e. a sync per step.
    m = torch.tensor(mean, dtype=dtype).view(1, 3, 1, 1).to(device)
    s = torch.tensor(std, dtype=dtype).view(1, 3, 1, 1).to(device)
    return m, s


def normalize(x: torch.Tensor, mean: tuple = MEAN, std: tuple = STD) -> torch.Tensor:
    m, s = _mean_std(x.device, x.dtype, tuple(mean), tuple(std))
    return (x - m) / s


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Deterministic resize for evaluation (antialiased when shrinking)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=x.shape[-1] > size)


def eval_batch(batch_u8: torch.Tensor, size: int, mean: tuple = MEAN, std: tuple = STD) -> torch.Tensor:
    """Store batch → normalised float tensor at ``size`` (no randomness)."""
    return normalize(resize(to_float(batch_u8), size), mean, std)


def random_affine_theta(n: int, cfg: AugmentConfig, gen: torch.Generator,
                        device: torch.device) -> torch.Tensor:
    """(n,2,3) affine matrices mapping output to input coordinates in [-1,1] space."""
    area = _uniform(n, *cfg.scale, gen, device)
    log_r = _uniform(n, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), gen, device)
    ratio = torch.exp(log_r)
    sx = torch.sqrt(area * ratio).clamp(max=1.0)  # crop half-widths as fractions of the image
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    # The crop centre may move as far as the crop stays inside, plus a little translation.
    tx = (torch.rand(n, generator=gen, device=device) * 2 - 1) * ((1 - sx) + cfg.max_translate)
    ty = (torch.rand(n, generator=gen, device=device) * 2 - 1) * ((1 - sy) + cfg.max_translate)
    ang = (torch.rand(n, generator=gen, device=device) * 2 - 1) * math.radians(cfg.max_rotate_deg)
    flip = torch.where(torch.rand(n, generator=gen, device=device) < cfg.flip_p, -1.0, 1.0)
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([
        torch.stack([cos * sx * flip, -sin * sy, tx], dim=1),
        torch.stack([sin * sx * flip, cos * sy, ty], dim=1),
    ], dim=1)
    return theta


def random_erase(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Erase one random rectangle per image (with probability erase_p) to 0 (the normalised mean),
    as torchvision's RandomErasing(value=0) after Normalize does. Built from masks, no loops."""
    n, _, h, w = x.shape
    dev = x.device
    area = _uniform(n, *cfg.erase_scale, gen, dev) * (h * w)
    log_r = _uniform(n, math.log(cfg.erase_ratio[0]), math.log(cfg.erase_ratio[1]), gen, dev)
    r = torch.exp(log_r)
    eh = torch.sqrt(area * r).clamp(1, h)
    ew = torch.sqrt(area / r).clamp(1, w)
    y0 = torch.rand(n, generator=gen, device=dev) * (h - eh)
    x0 = torch.rand(n, generator=gen, device=dev) * (w - ew)
    on = torch.rand(n, generator=gen, device=dev) < cfg.erase_p
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    inside = ((ys >= y0.view(n, 1, 1)) & (ys < (y0 + eh).view(n, 1, 1))
              & (xs >= x0.view(n, 1, 1)) & (xs < (x0 + ew).view(n, 1, 1)) & on.view(n, 1, 1))
    return x.masked_fill(inside.unsqueeze(1), 0.0)


def train_batch(batch_u8: torch.Tensor, size: int, gen: torch.Generator,
                cfg: AugmentConfig = AugmentConfig(), mean: tuple = MEAN, std: tuple = STD) -> torch.Tensor:
    """Store batch (B,H,W,3) uint8 → augmented, normalised (B,3,size,size) float32."""
    x = to_float(batch_u8)
    n = x.shape[0]
    theta = random_affine_theta(n, cfg, gen, x.device)
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    # Border padding: faces are centred crops, replicating the edge looks more natural than black.
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = normalize(x, mean, std)
    if cfg.erase_p > 0:
        x = random_erase(x, cfg, gen)
    return x

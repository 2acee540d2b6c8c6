"""Self-supervised pretext tasks on face crops (the HMTL parts' math), pure tensor functions.

- Jigsaw: cut the image into a g×g grid of tiles, reorder the tiles by one permutation of a fixed
  set, and let the network name which permutation it was (a classification over the set).
- In-painting: blank a random square (to 0, the normalised mean, as random erasing does) and let a
  small decoder reconstruct the image; the loss counts only the blanked pixels.

Everything runs on the batch's device from the fit's random generator, so a resumed run draws the
same tiles and squares as an uninterrupted one.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F


def permutation_set(grid: int, count: int, seed: int = 0) -> torch.Tensor:
    """(count, grid²) long tensor: ``count`` distinct permutations of the tiles, picked greedily to
    be far apart in Hamming distance (Noroozi & Favaro's maximal-Hamming set), so the classes are
    tellable apart; the identity is always first. Deterministic for a (grid, count, seed)."""
    k = grid * grid
    if grid < 2:
        raise ValueError(f"jigsaw grid must be >= 2, not {grid}")
    rng = np.random.default_rng(seed)
    if k <= 8:
        pool = np.array(list(itertools.permutations(range(k))), dtype=np.int64)
    else:  # 9! = 362,880 is too many to compare against; draw a large random pool instead
        pool = np.stack([rng.permutation(k) for _ in range(4000)])
    if count < 2 or count > len(pool):
        raise ValueError(f"jigsaw permutations must be in [2, {len(pool)}] for a {grid}x{grid} grid, not {count}")
    chosen = [np.arange(k)]
    dist = (pool != chosen[0]).sum(axis=1)
    while len(chosen) < count:
        best = np.flatnonzero(dist == dist.max())
        pick = pool[best[rng.integers(len(best))]]
        chosen.append(pick)
        dist = np.minimum(dist, (pool != pick).sum(axis=1))
    return torch.from_numpy(np.stack(chosen))


def shuffle_tiles(x: torch.Tensor, perms: torch.Tensor, which: torch.Tensor, grid: int) -> torch.Tensor:
    """Reorder the tiles of each image: output tile at grid position j is input tile
    ``perms[which[b], j]``. x: (B,C,H,W); the top-left grid·⌊H/grid⌋ square is tiled, a remainder
    border (when H is not a multiple of grid) stays in place."""
    b, c, h, w = x.shape
    t = min(h, w) // grid
    if t < 1:
        raise ValueError(f"a {h}x{w} image is too small for a {grid}x{grid} jigsaw")
    s = t * grid
    tiles = (x[:, :, :s, :s].reshape(b, c, grid, t, grid, t).permute(0, 2, 4, 1, 3, 5)
             .reshape(b, grid * grid, c, t, t))
    if perms.device != x.device:
        raise ValueError(f"perms are on {perms.device}, the images on {x.device}: move the set once, not per call")
    order = perms[which]  # (B, g²)
    moved = tiles.gather(1, order.view(b, -1, 1, 1, 1).expand_as(tiles))
    out = x.clone()
    out[:, :, :s, :s] = (moved.view(b, grid, grid, c, t, t).permute(0, 3, 1, 4, 2, 5).reshape(b, c, s, s))
    return out


def random_square_mask(n: int, size: int, frac: tuple[float, float], gen: torch.Generator,
                       device: torch.device) -> torch.Tensor:
    """(n,1,size,size) float mask, 1 inside one random square per image whose side is a random
    fraction in ``frac`` of the image side."""
    side = (torch.rand(n, generator=gen, device=device) * (frac[1] - frac[0]) + frac[0]) * size
    side = side.clamp(1, size)
    y0 = torch.rand(n, generator=gen, device=device) * (size - side)
    x0 = torch.rand(n, generator=gen, device=device) * (size - side)
    r = torch.arange(size, device=device, dtype=torch.float32)
    inside_y = (r.view(1, -1) >= y0.view(-1, 1)) & (r.view(1, -1) < (y0 + side).view(-1, 1))
    inside_x = (r.view(1, -1) >= x0.view(-1, 1)) & (r.view(1, -1) < (x0 + side).view(-1, 1))
    return (inside_y.unsqueeze(2) & inside_x.unsqueeze(1)).unsqueeze(1).float()


def masked_mse(recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked pixels only (every channel); 0 for a perfect
    reconstruction of the masked region whatever the rest holds. recon/target: (B,C,H,W),
    mask: (B,1,H,W) in [0,1]."""
    err = (recon - target).pow(2) * mask
    return err.sum() / (mask.sum() * recon.shape[1]).clamp_min(1.0)


def downsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Area-average resize (the reconstruction target and its mask at the decoder's resolution)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.adaptive_avg_pool2d(x, size)

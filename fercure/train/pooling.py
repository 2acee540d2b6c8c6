"""APViT's parameter-free attentive pooling (Xue et al., "Vision Transformer with Attentive
Pooling for Robust Facial Expression Recognition", IEEE TAC 2022), as pure functions.

- APP (attentive patch pooling) on a CNN feature map: a position's attention is the L1 norm of its
  feature vector across channels; only the top-k positions are averaged. With k = all positions
  it is global average pooling.
- ATP (attentive token pooling) inside a timm ViT: before one block (the middle one by default)
  only the top-k patch tokens by the attention the class token pays them in that block are kept;
  prefix tokens (class, registers) always stay. With k = all tokens it is the plain forward.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def keep_count(positions: int, keep: float) -> int:
    """How many of ``positions`` a keep fraction in (0, 1] keeps (at least 1)."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"pool keep fraction must be in (0, 1], not {keep}")
    return max(1, min(positions, int(round(keep * positions))))


def attentive_patch_pool(feat: torch.Tensor, k: int) -> torch.Tensor:
    """(B,C,H,W) → (B,C): mean of the k positions with the largest L1 feature norm."""
    b, c, h, w = feat.shape
    flat = feat.flatten(2)  # (B,C,HW)
    if k >= h * w:
        return flat.mean(dim=2)
    score = flat.abs().sum(dim=1)  # (B,HW)
    top = score.topk(k, dim=1).indices
    kept = flat.gather(2, top.unsqueeze(1).expand(b, c, k))
    return kept.mean(dim=2)


def class_attention(block: nn.Module, x: torch.Tensor, n_prefix: int) -> torch.Tensor:
    """(B,N,D) tokens entering a timm ViT ``Block`` → (B, N − n_prefix): the attention the first
    prefix token (the class token; with none, the mean query) pays each patch token in that block,
    averaged over heads. Recomputed from the block's own q/k weights, so nothing is learned here."""
    attn_mod = block.attn
    b, n, _ = x.shape
    h = block.norm1(x)
    qkv = attn_mod.qkv(h).reshape(b, n, 3, attn_mod.num_heads, attn_mod.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn_mod.q_norm(qkv[0]), attn_mod.k_norm(qkv[1])
    query = q[:, :, :1] if n_prefix > 0 else q.mean(dim=2, keepdim=True)
    att = ((query * attn_mod.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B,heads,1,N)
    return att.mean(dim=1).squeeze(1)[:, n_prefix:]


def keep_top_tokens(x: torch.Tensor, score: torch.Tensor, k: int, n_prefix: int) -> torch.Tensor:
    """Keep the prefix tokens and the k patch tokens with the highest score, in their original
    order (order does not matter to attention; keeping it makes k = all exactly the identity)."""
    n_patch = x.shape[1] - n_prefix
    if k >= n_patch:
        return x
    top = score.topk(k, dim=1).indices.sort(dim=1).values + n_prefix
    patches = x.gather(1, top.unsqueeze(2).expand(-1, -1, x.shape[2]))
    return torch.cat([x[:, :n_prefix], patches], dim=1)


def vit_features_with_atp(vit: nn.Module, x: torch.Tensor, keep: float, layer: int | None = None) -> torch.Tensor:
    """A timm VisionTransformer's ``forward_features`` with ATP before block ``layer`` (default:
    the middle block)."""
    n_prefix = int(getattr(vit, "num_prefix_tokens", 1))
    blocks = list(vit.blocks)
    at = len(blocks) // 2 if layer is None else layer
    x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
    for i, blk in enumerate(blocks):
        if i == at:
            score = class_attention(blk, x, n_prefix)
            x = keep_top_tokens(x, score, keep_count(x.shape[1] - n_prefix, keep), n_prefix)
        x = blk(x)
    return vit.norm(x)


def is_vit(backbone: nn.Module) -> bool:
    """ATP needs timm's VisionTransformer layout (patch_embed, _pos_embed, blocks of Block)."""
    return all(hasattr(backbone, a) for a in ("patch_embed", "_pos_embed", "blocks", "norm_pre")) and \
        all(hasattr(b, "attn") and hasattr(b.attn, "qkv") for b in backbone.blocks)

"""The network: a timm backbone (any name, created with pretrained=False), a pooling step, a linear
classifier, and the heads the method parts add (SCN's importance weight, ARBEx's anchors and
attention, the HMTL pretext heads).

Pooling (``pool``): ``avg`` is the backbone's own (timm's ``forward_head``); ``app`` averages only
the most active positions of a CNN feature map and ``atp`` keeps only the most attended tokens
inside a ViT (APViT, ``fercure.train.pooling``). ViT-style backbones are built at the crop size
(timm's ``img_size``), so they work at the store's resolution.

Precision: on CUDA the backbone runs under bf16 autocast; the classifier and every head run in
fp32 outside autocast, on the fp32 embedding, so probabilities (and every statistic derived from
them) match the CPU path up to the backbone's rounding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

from fercure.train import pooling
from fercure.train.config import POOLS
from fercure.errors import PretrainedWeightsError, WorkspaceError  # noqa: F401  (re-exported)


class FerNet(nn.Module):
    def __init__(self, backbone: str, num_classes: int, *, dropout: float = 0.0,
                 heads: dict[str, nn.Module] | None = None, pool: str = "avg", pool_keep: float = 1.0,
                 image_size: int | None = None, backbone_args: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.backbone = create_backbone(backbone, image_size, backbone_args)
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
        if pool == "atp" and not pooling.is_vit(self.backbone):
            raise WorkspaceError(f"--pool atp keeps ViT tokens; {backbone!r} is not a timm VisionTransformer "
                                 "(try vit_tiny_patch16_224, or --pool app for a CNN).")
        if pool == "app" and pooling.is_vit(self.backbone):
            raise WorkspaceError(f"--pool app pools a CNN feature map; {backbone!r} is a ViT (use --pool atp).")
        pooling.keep_count(1, pool_keep)  # validates the fraction
        self.pool, self.pool_keep = pool, float(pool_keep)
        self.embed_dim = int(self.backbone.num_features)
        self.num_classes = num_classes
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.embed_dim, num_classes)
        self.heads = nn.ModuleDict(heads or {})
        self.on_demand: set[str] = set()  # heads their parts run on their own rows (pretext tasks)
        self.feature_map = False  # add the backbone's spatial map to the outputs (in-painting)
        self.amp: torch.dtype | None = None  # the backbone's autocast dtype (None: off), set by the loop

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        bb = self.backbone
        # torch.autocast entered here (not a stored functools.partial): torch.compile traces it
        with torch.autocast(device_type=x.device.type, dtype=self.amp or torch.bfloat16,
                            enabled=self.amp is not None):
            if self.pool == "atp":
                feat = pooling.vit_features_with_atp(bb, x, self.pool_keep)
            else:
                feat = bb.forward_features(x)
            if self.pool == "app" and feat.ndim == 4:
                emb = pooling.attentive_patch_pool(feat, pooling.keep_count(feat.shape[2] * feat.shape[3],
                                                                            self.pool_keep))
            else:  # timm's own pooling (and fc_norm for ViTs): identical to backbone(x) with num_classes=0
                emb = bb.forward_head(feat, pre_logits=True)
        emb = emb.float()
        device_type = emb.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            out = {"embedding": emb, "logits": self.classifier(self.dropout(emb))}
            if self.feature_map and feat.ndim == 4:
                out["feature_map"] = feat.float()
            for name, head in self.heads.items():
                if name not in self.on_demand:
                    out.update(head(emb))
        return out



def create_backbone(name: str, image_size: int | None, args: dict[str, Any] | None = None) -> nn.Module:
    """timm model without its classifier; ViT-style models (those taking ``img_size``) are built
    for the crop size, other models ignore it. ``args`` go to the model's constructor."""
    kw = dict(args or {}, pretrained=False, num_classes=0, in_chans=3)
    try:
        if image_size is not None:
            try:
                return timm.create_model(name, img_size=image_size, **kw)
            except TypeError:  # a CNN: its constructor has no img_size
                pass
        return timm.create_model(name, **kw)
    except RuntimeError as exc:  # timm raises RuntimeError("Unknown model ...")
        raise WorkspaceError(f"Unknown backbone {name!r}: {exc}. Use a timm model name, "
                             "e.g. resnet18.") from exc
    except TypeError as exc:  # an argument this model's constructor does not take
        raise WorkspaceError(f"Backbone {name!r} does not take the arguments {sorted(args or {})}: {exc}") from exc


def build_model(config, num_classes: int, parts: list | None = None) -> FerNet:
    """Model for a TrainConfig and its method parts; loads ``config.pretrained`` into the backbone
    when set."""
    model = FerNet(config.backbone, num_classes, dropout=config.dropout, pool=config.pool,
                   pool_keep=config.pool_keep, image_size=config.image_size,
                   backbone_args=config.backbone_args)
    for part in parts or []:
        head = part.make_head(model.embed_dim, num_classes)
        if head is not None:
            model.heads[part.name] = head
            if part.head_on_demand:
                model.on_demand.add(part.name)
        model.feature_map |= part.needs_feature_map
    for part in parts or []:
        part.check_model(model, config.backbone)
    if config.pretrained:
        load_pretrained(model.backbone, config.pretrained)
    return model


_HEAD_PREFIXES = ("fc.", "head.", "head.fc.", "classifier.", "last_linear.")
_WRAP_PREFIXES = ("module.", "backbone.", "model.", "_orig_mod.")


def load_pretrained(backbone: nn.Module, path: str | Path) -> list[str]:
    """Load a local state_dict into ``backbone`` (never downloads). Classifier weights of the
    source model are skipped (fercure has its own heads). Returns the missing keys.

    Raises PretrainedWeightsError with the offending keys when shapes do not match or nothing
    matches at all (wrong architecture)."""
    path = Path(path)
    if not path.exists():
        raise PretrainedWeightsError(f"Pretrained weights {path} do not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files ...
        raise PretrainedWeightsError(
            f"Cannot read {path} as a PyTorch state_dict (torch.load weights_only=True): {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{path} holds a {type(state).__name__}, not a state_dict.")
    clean: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        for p in _WRAP_PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        if k.startswith(_HEAD_PREFIXES) or not torch.is_tensor(v):
            continue
        clean[k] = v
    own = backbone.state_dict()
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in clean.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise PretrainedWeightsError(
            f"{path} does not fit this backbone; shape mismatch in {len(bad)} tensors, e.g. "
            + "; ".join(bad[:5]) + ". Check that --backbone names the architecture the weights are for.")
    matched = [k for k in clean if k in own]
    if not matched:
        raise PretrainedWeightsError(
            f"{path} has no tensor whose name matches this backbone (first keys: "
            f"{list(state)[:5]}). Check --backbone.")
    result = backbone.load_state_dict({k: clean[k] for k in matched}, strict=False)
    return list(result.missing_keys)


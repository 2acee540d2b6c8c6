"""The network: a timm backbone (any name), a pooling step, a linear
classifier, and the heads the method parts add (SCN's importance weight, ARBEx's anchors and
attention, the HMTL pretext heads).

Pooling (``pool``): ``avg`` is the backbone's own (timm's ``forward_head``); ``app`` averages only
the most active positions of a CNN feature map and ``atp`` keeps only the most attended tokens
inside a ViT (APViT, ``fercure.train.pooling``). ViT-style backbones are built at the crop size
(timm's ``img_size``), so they work at the store's resolution.

Pretrained weights (``--pretrained``): a local file (a state dict or a timm checkpoint, never
downloaded), or a timm / Hugging Face hub name that timm downloads and caches when the machine is
online; offline a PretrainedWeightsError says how to pass a file instead. Pretrained, the backbone
keeps its own input normalisation (timm's ``pretrained_cfg`` mean and std, ``FerNet.mean`` /
``.std``; from scratch ImageNet's, as before); the crops
are RGB (grey faces repeated over three channels by prepare), and a one-channel first convolution in
a local file is spread over the three channels so a grey face gives the response it was trained on.

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
from fercure.train.augment import MEAN, STD
from fercure.train.config import POOLS
from fercure.errors import PretrainedWeightsError, WorkspaceError  # noqa: F401  (re-exported)


class FerNet(nn.Module):
    def __init__(self, backbone: str, num_classes: int, *, dropout: float = 0.0,
                 heads: dict[str, nn.Module] | None = None, pool: str = "avg", pool_keep: float = 1.0,
                 image_size: int | None = None, backbone_args: dict[str, Any] | None = None,
                 hub_weights: bool = False) -> None:
        super().__init__()
        self.backbone = create_backbone(backbone, image_size, backbone_args, pretrained=hub_weights)
        # From scratch any fixed normalisation serves (ImageNet's, as ever); pretrained weights get
        # the one they were trained with (build_model sets it for a local file too).
        self.mean, self.std = input_normalisation(self.backbone) if hub_weights else (MEAN, STD)
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



def input_normalisation(backbone: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the backbone's weights expect (timm's ``pretrained_cfg``; ImageNet's when the
    model declares none)."""
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    mean, std = tuple(cfg.get("mean") or MEAN), tuple(cfg.get("std") or STD)
    if len(mean) != 3 or len(std) != 3:  # a one-channel model's statistics: the same for R, G and B
        mean, std = (mean[0],) * 3, (std[0],) * 3
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


# A --pretrained value with one of these endings, or a path that exists, is a local file.
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".tar")


def is_hub_name(value: str | Path | None) -> bool:
    """True when ``--pretrained`` names weights for timm to fetch (``resnet18.a1_in1k``,
    ``hf-hub:timm/resnet18.a1_in1k``) rather than a local file."""
    if value is None:
        return False
    text = str(value)
    if text.startswith("hf-hub:"):
        return True
    if Path(text).expanduser().exists() or text.lower().endswith(WEIGHT_SUFFIXES):
        return False
    return not text.startswith((".", "/", "~")) and "\\" not in text and text.count("/") <= 1


def offline_hint(name: str) -> str:
    """How to use hub weights on a machine that cannot download them."""
    return (f"On a machine that is online, save them to a file: python -c \"import timm, torch; torch.save("
            f"timm.create_model('{name}', pretrained=True).state_dict(), 'weights.pth')\"; then pass "
            f"--pretrained weights.pth --backbone {name.removeprefix('hf-hub:')}")


def create_backbone(name: str, image_size: int | None, args: dict[str, Any] | None = None,
                    pretrained: bool = False) -> nn.Module:
    """timm model without its classifier; ViT-style models (those taking ``img_size``) are built
    for the crop size, other models ignore it. ``args`` go to the model's constructor. With
    ``pretrained`` timm loads the name's weights (from its cache, or downloaded)."""
    kw = dict(args or {}, pretrained=pretrained, num_classes=0, in_chans=3)
    try:
        return _create(name, image_size, kw)
    except (WorkspaceError, PretrainedWeightsError):
        raise
    except Exception as exc:  # no network, hub errors, a file timm cannot read
        if not pretrained:
            raise
        err = PretrainedWeightsError(
            f"Cannot get the pretrained weights {name!r} ({type(exc).__name__}: {str(exc)[:300]}). timm downloads "
            "hub weights once and caches them; this machine could not (offline, or the name is not on the hub). "
            + offline_hint(name) + ".")
        err.hint = offline_hint(name)  # --json's error object
        raise err from exc


def _create(name: str, image_size: int | None, kw: dict[str, Any]) -> nn.Module:
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
        given = sorted(k for k in kw if k not in ("pretrained", "num_classes", "in_chans"))
        raise WorkspaceError(f"Backbone {name!r} does not take the arguments {given}: {exc}") from exc


def build_model(config, num_classes: int, parts: list | None = None) -> FerNet:
    """Model for a TrainConfig and its method parts; loads ``config.pretrained`` into the backbone
    when set."""
    hub = is_hub_name(config.pretrained)
    # Hub weights: the name says the architecture too (resnet18.a1_in1k, hf-hub:timm/...).
    model = FerNet(config.pretrained if hub else config.backbone, num_classes, dropout=config.dropout,
                   pool=config.pool, pool_keep=config.pool_keep, image_size=config.image_size,
                   backbone_args=config.backbone_args, hub_weights=hub)
    for part in parts or []:
        head = part.make_head(model.embed_dim, num_classes)
        if head is not None:
            model.heads[part.name] = head
            if part.head_on_demand:
                model.on_demand.add(part.name)
        model.feature_map |= part.needs_feature_map
    for part in parts or []:
        part.check_model(model, config.backbone)
    if config.pretrained and not hub:
        load_pretrained(model.backbone, config.pretrained)
        model.mean, model.std = input_normalisation(model.backbone)
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
    clean = _grey_first_conv(backbone, clean, own)
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



def _grey_first_conv(backbone: nn.Module, state: dict[str, torch.Tensor],
                     own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights of a one-channel (grey) first convolution spread over the RGB model's three inputs,
    a third each: a grey crop (R = G = B) then gives exactly the response the weights were trained
    to give (timm's in_chans adaptation goes the other way only)."""
    first = (getattr(backbone, "pretrained_cfg", None) or {}).get("first_conv")
    names = [first] if isinstance(first, str) else list(first or [])
    out = dict(state)
    for key in (f"{n}.weight" for n in names):
        w, mine = state.get(key), own.get(key)
        if w is not None and mine is not None and w.ndim == 4 and w.shape[1] == 1 and mine.shape[1] == 3 \
                and w.shape[0] == mine.shape[0] and w.shape[2:] == mine.shape[2:]:
            out[key] = w.repeat(1, 3, 1, 1) / 3.0
    return out

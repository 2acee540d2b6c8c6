"""Training configuration: one flat dataclass, saved as config.json in every run.

The core is plain cross-entropy training that records per-sample dynamics; the methods (SCN,
ARBEx, ELR, distillation) are parts switched on here. Defaults are chosen by measurement
(benchmarks/RESULTS.md): a method that did not beat the plain core on real label noise is off by
default. A method's own hyper-parameters follow its paper; where fercure departs, the comment says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


POOLS = ("avg", "app", "atp")  # the backbone's own | APViT patch pooling (CNNs) | token pooling (ViTs)
DEVICES = ("auto", "cpu", "cuda")  # also cuda:N
STORE_MODES = ("auto", "resident", "stream")
AMP_MODES = ("auto", "bf16", "off")
RELABEL_SCOPES = ("low", "all")  # SCN: the low-importance group (paper) | all samples (official code)


@dataclass
class TrainConfig:
    # --- model and optimisation -------------------------------------------------------------
    backbone: str = "resnet18"  # any timm model name; created with pretrained=False (no network)
    # Keyword arguments for timm.create_model (e.g. {"patch_size": 8, "depth": 6} for a small ViT);
    # ViT-style models also get img_size = image_size.
    backbone_args: dict[str, Any] = field(default_factory=dict)
    # Crops are resized on the device to this size; None: the crop store's own size (train at the
    # size prepare cut, with no resampling: a 48 px store trained at 112 px cost ~6× the time).
    image_size: int | None = None
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3  # AdamW peak learning rate; 1-epoch linear warm-up then cosine decay per step
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # The backbone's starting weights: a local file (a state dict or timm checkpoint, loaded with
    # torch.load weights_only), or a timm / Hugging Face hub name timm downloads and caches.
    pretrained: str | None = None
    dropout: float = 0.0  # dropout on the embedding before the classifier
    label_smoothing: float = 0.1  # on the core cross-entropy
    erase_p: float = 0.0  # random erasing probability (the SCN recipe uses 0.5)
    amp: str = "auto"  # auto: bf16 autocast on CUDA only | bf16: also on CPU | off
    # Per-epoch eval pass (no augmentation, image + mirror averaged) recording p(given) beside the
    # training-pass dynamics; two extra forward passes over the data per epoch.
    epoch_eval: bool = False

    # --- SCN (Self-Cure Network, Wang et al., CVPR 2020) --------------------------------------
    selfcure: bool = False  # α-weighted logits + rank regularisation + relabelling
    beta: float = 0.7  # fraction of a batch in the high-importance group
    margin1: float = 0.15  # δ1: required gap mean(α_high) − mean(α_low)
    margin2: float = 0.2  # δ2: relabel when p_max − p_label > δ2
    # Epoch (0-based) from which relabelling starts; a value in (0, 1) is a fraction of `epochs`.
    # Default: halfway. The official SCN code starts at epoch 10 of its schedule; an absolute 10
    # would silently switch relabelling off for runs of 10 epochs or fewer. >= epochs disables it.
    relabel_epoch: float = 0.5
    relabel_scope: str = "low"  # low: paper (only the low-importance group); all: official code

    # --- ARBEx reliability balancing (Wasi et al., 2023) --------------------------------------
    reliability: bool = False
    anchors_per_class: int = 3
    anchor_dim: int = 128  # anchors live in a projected, L2-normalised space
    anchor_weight: float = 1.0  # weight of the anchor loss (pull to own class, push classes apart)
    attention_heads: int = 4  # heads of the self-attention over the batch's embeddings
    reliability_weight: float = 1.0  # weight of the CE on the corrected distribution

    # --- ELR (early-learning regularisation, Liu et al., NeurIPS 2020) -------------------------
    elr: bool = False
    elr_lambda: float = 3.0  # weight of log(1 − <p, t>), t = per-sample EMA of predictions
    elr_beta: float = 0.7  # EMA momentum of the targets

    # --- HMTL self-supervised pretext tasks (hybrid multi-task learning for FER) ---------------
    # Each runs on a share of the batch's augmented crops, concatenated to the batch so the
    # backbone makes one forward pass per step; its rows never enter the label statistics.
    jigsaw: bool = False  # name the permutation of a grid of shuffled tiles
    jigsaw_weight: float = 0.5
    jigsaw_grid: int = 3  # tiles per side
    jigsaw_perms: int = 30  # size of the fixed, maximal-Hamming permutation set (the classes)
    inpaint: bool = False  # reconstruct a blanked square from the feature map (CNN backbones)
    inpaint_weight: float = 1.0
    inpaint_frac: tuple = (0.25, 0.5)  # side of the blanked square, as a fraction of the crop side
    aux_share: float = 0.25  # share of each batch every pretext task takes (its cost scales with it)

    # --- APViT attentive pooling (Xue et al., 2022) ---------------------------------------------
    pool: str = "avg"  # avg (the backbone's own) | app (CNN feature map) | atp (ViT tokens)
    pool_keep: float = 0.5  # share of positions (app) or patch tokens (atp) kept

    # --- detection pipeline (fercure.stages.train) ----------------------------------------------
    holdout: float = 0.05  # stratified share held out of the first model: model-strength probe
    plant_rate: float = 0.03  # share of labels flipped on purpose in the first model (self-check)
    retrain: bool = True  # drop the most suspect share, train a second model, re-score
    retrain_drop: float = 0.3  # share of samples the second model does not train on
    knn: int = 10  # neighbours for embedding label agreement (0 = off)

    # --- EMENet-style ensembles, distillation, cross-fitting ----------------------------------
    ensemble: int = 1  # M independent members (seeds seed, seed+1, ...)
    distill_generations: int = 0  # G generations of students trained on the ensemble's soft labels
    distill_weight: float = 0.5  # student loss: (1-w)·CE(labels) + w·CE(soft labels)
    folds: int = 0  # K-fold cross-fitting for out-of-fold p(given); 0 = off

    # --- several annotators per image (a vote file) -----------------------------------------------
    soft_labels: bool = False  # train on each image's vote distribution instead of its majority label

    # --- engineering ---------------------------------------------------------------------------
    eval_batch_size: int = 512
    # torch.compile the training steps (CUDA or CPU; CPU needs a C compiler). Every step then has
    # one shape: a short last batch is filled with the epoch's first samples (not recorded twice).
    compile: bool = False
    # Crops resident on the device (uploaded once) or streamed from the memory-mapped store per
    # batch; auto streams when the store (a rank's share of it) would take more than half the
    # device's free memory (host memory on a CPU). Same batches either way.
    store: str = "auto"  # auto | resident | stream
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried into config.json
    # --trusted files (a reviewer's decisions, verified labels), in the order given: the later wins
    trusted: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.inpaint_frac = tuple(float(v) for v in self.inpaint_frac)  # config.json gives a list
        self.validate()

    def validate(self) -> None:
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda, not {self.device!r}")
        if self.relabel_scope not in RELABEL_SCOPES:
            raise ValueError(f"relabel_scope must be 'low' or 'all', not {self.relabel_scope!r}")
        if not 0.0 < self.beta < 1.0:
            raise ValueError(f"beta must be in (0, 1), not {self.beta}")
        for name in ("epochs", "batch_size", "image_size", "ensemble"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (batch norm and rank regularisation need it)")
        if self.folds == 1 or self.folds < 0:
            raise ValueError(f"folds must be 0 (off) or >= 2, not {self.folds}")
        if self.distill_generations < 0:
            raise ValueError("distill_generations must be >= 0")
        if self.store not in STORE_MODES:
            raise ValueError(f"store must be auto, resident or stream, not {self.store!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be auto, bf16 or off, not {self.amp!r}")
        for name, hi in (("holdout", 0.5), ("plant_rate", 0.2), ("retrain_drop", 0.9),
                         ("label_smoothing", 0.5), ("erase_p", 1.0)):
            v = float(getattr(self, name))
            if not 0.0 <= v <= hi:
                raise ValueError(f"{name} must be in [0, {hi}], not {v}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {self.pool!r}")
        if not 0.0 < float(self.pool_keep) <= 1.0:
            raise ValueError(f"pool_keep must be in (0, 1], not {self.pool_keep}")
        if not 0.0 < float(self.aux_share) <= 1.0:
            raise ValueError(f"aux_share must be in (0, 1], not {self.aux_share}")
        lo, hi = (float(v) for v in self.inpaint_frac)
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"inpaint_frac must be 0 < low <= high <= 1, not {self.inpaint_frac}")
        if self.knn < 0:
            raise ValueError("knn must be >= 0")
        if self.anchors_per_class < 1:
            raise ValueError("anchors_per_class must be >= 1")

    @property
    def relabel_start(self) -> int:
        """First 0-based epoch at which SCN relabels (resolves the fraction form). Never 0: at
        epoch 0 the model is random and its "confident" predictions are noise."""
        r = float(self.relabel_epoch)
        start = int(round(r * self.epochs)) if 0.0 < r < 1.0 else int(r)
        return max(1, start)

    def at_size(self, store_side: int) -> "TrainConfig":
        """This config with ``image_size`` resolved: the crop store's side when it is None."""
        if self.image_size is not None:
            return self
        return dataclasses.replace(self, image_size=int(store_side))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a dict (e.g. config.json); unknown keys are ignored so old runs still load."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# What a machine decides, not the recipe: never carried from one run to the next.
NOT_CARRIED = ("trusted", "extra", "device", "store", "compile", "eval_batch_size")


def continue_settings(config: TrainConfig, given: set[str], previous: dict[str, Any]
                      ) -> tuple[TrainConfig, list[str]]:
    """``config`` with every setting the user did not give (``given``: field names set on the
    command line) taken from ``previous`` (the run a ``--trusted`` round continues), and the
    settings that differ from it, as "name value (was old)". Pure."""
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in NOT_CARRIED]
    carried = {n: previous[n] for n in names if n in previous and n not in given}
    out = TrainConfig.from_dict({**config.to_dict(), **carried})
    changed = [f"{n} {getattr(out, n)!r} (was {previous[n]!r})" for n in names
               if n in previous and n in given and _comparable(getattr(out, n)) != _comparable(previous[n])]
    return out, changed


def _comparable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value

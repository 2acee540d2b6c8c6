"""Method parts: what a noise-handling method adds to the plain cross-entropy core.

The loop (``fercure.train.loop``) trains a backbone + linear classifier with cross-entropy and
records per-sample dynamics every step; each part plugs into it through a few hooks and nothing
else, so methods compose without flags threaded through the loop:

- ``make_head(d, C)``: an ``nn.Module`` run on the fp32 embedding; its outputs join the model's
  output dict (SCN's ``alpha``, ARBEx's ``anchor_z`` / ``attn_logits``). A part with
  ``head_on_demand`` runs its head itself on its own rows; ``needs_feature_map`` asks the model for
  the backbone's spatial map; ``check_model`` refuses a backbone the part cannot use.
- ``sample_weight(out)``: per-sample weights (SCN's α): recorded in the dynamics and handed to the
  other parts' hooks as ``Step.weight`` (ARBEx weights its loss by them).
- ``transform_logits(out, logits)``: the logits the core cross-entropy sees (SCN: α · logits).
- ``ce_weight``: scale of the core cross-entropy (a distillation student mixes it with soft labels).
- ``loss(out, logits, step)``: extra loss terms for the batch.
- ``relabel(out, logits, step)``: a label change for the batch's samples, or None.
- ``predict(out)``: extra per-sample eval outputs (prediction columns).
- ``epoch_record()``: numbers for the epoch's history (ARBEx's anchor separation).
- ``aux_inputs(x, gen)`` / ``aux_loss(out, step)``: a pretext task's own inputs (and the targets
  its loss needs), made on the device from the augmented batch and concatenated to it (one forward
  pass per step), and its loss on its rows of the output, where the targets come back (HMTL's
  jigsaw and in-painting). Those rows never reach the label statistics.
- ``state()`` / ``load_state()``: per-sample tensors the part keeps (ELR's targets), saved in
  every checkpoint so a resumed run continues exactly.
- ``per_sample_state()``: the tensors indexed by the fit's sample position that the part updates
  during training (ELR's targets); under data parallelism the loop merges each rank's rows of them
  after every epoch, so every rank holds all of them.

Parts register themselves with ``@register``: a name, when a config switches them on, and the parts
they must come after (their losses are summed and their hooks called in that order). Each is built
from its own small settings dataclass (``section``), read from the flat TrainConfig, and a
``Context`` (the fit's size, classes, device, a student's soft targets, the votes' distribution). Known inconsistency, kept
so results stay the same: ``loss`` sees the logits after every ``transform_logits`` (α-scaled with
SCN), ``relabel`` the raw ones.
"""

from __future__ import annotations

from typing import Any

import torch

from fercure.train.parts.base import REGISTRY, Context, Part, Step, ordered, register, section  # noqa: F401

# The bundled parts register themselves on import; this order is the default order of their hooks
# (and of their loss terms in the sum), which a part's declared ``after`` can only move later.
from fercure.train.parts import scn  # noqa: E402,F401  isort: skip
from fercure.train.parts import arbex  # noqa: E402,F401  isort: skip
from fercure.train.parts import elr  # noqa: E402,F401  isort: skip
from fercure.train.parts import hmtl  # noqa: E402,F401  isort: skip
from fercure.train.parts import distill  # noqa: E402,F401  isort: skip
from fercure.train.parts import votes  # noqa: E402,F401  isort: skip


def build_parts(config: Any, n: int, num_classes: int, device: torch.device,
                soft_targets: torch.Tensor | None = None, vote_targets: torch.Tensor | None = None) -> list[Part]:
    """The parts a TrainConfig switches on, each from its own config section, in declared order."""
    ctx = Context(n=n, num_classes=num_classes, device=device, soft_targets=soft_targets,
                  vote_targets=vote_targets)
    parts = []
    for name in ordered([e.name for e in REGISTRY.values() if e.enabled(config)]):
        e = REGISTRY[name]
        build = getattr(e.cls, "build", e.cls)
        part = build(section(e.settings, config), ctx)
        if part is not None:
            parts.append(part)
    return parts


def part_names(config: Any) -> list[str]:
    """Names of the parts a config switches on, and its pooling when not the backbone's own (for
    config.json and summaries)."""
    names = ordered([e.name for e in REGISTRY.values() if e.enabled(config)])
    pool = [] if config.pool == "avg" else [config.pool]
    # the pooling before distillation, where it always stood in config.json
    return [n for n in names if n != "distill"] + pool + (["distill"] if "distill" in names else [])

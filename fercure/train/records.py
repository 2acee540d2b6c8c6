"""A finished fit of a training run as a typed record: what ``fercure.stages.train`` keeps of each
fit (``ensemble.Job``) and ``fercure.train.detection`` reads, with its conversion to and from the
plain dict a checkpoint holds (no file I/O here).

The checkpoint layout is the one runs have always written (runs/<id>/fits/<key>.pt, or inline in
checkpoint.pt's ``done`` for checkpoints written before fits had their own files): a dict of the
record's fields, the fields a fit's kind has none of left out, numpy arrays as tensors (so the file
loads with ``weights_only=True``). ``to_checkpoint`` and ``from_checkpoint`` are the only places
that layout is written or read.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class FitRecord:
    """One finished fit. Positions index the run's trained samples (n of them, C classes).

    Every fit has ``trained``, ``probs``, ``history``, ``seconds`` and ``seen``; a member adds
    ``logits``, ``embedding``, ``rel_probs``, ``reliability``, ``labels``, ``relabel_count``,
    ``mean_probs``, ``dynamics``; a fold ``logits`` and ``held``; the retrain ``mean_probs`` and
    ``dynamics``. What a kind does not have is None."""
    trained: np.ndarray  # positions the fit trained on
    probs: np.ndarray  # (n, C) mirror-averaged predicted distribution (a fold: (len(held), C), its held-out rows)
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: loss, accuracy, throughput
    seconds: float = 0.0  # wall time of the training epochs
    seen: float = 0.0  # images trained on (images/s × seconds)
    logits: np.ndarray | None = None  # member, fold: rows as ``probs``
    embedding: np.ndarray | None = None  # member: (n, D)
    rel_probs: np.ndarray | None = None  # member: (n, C) ARBEx's reliability-balanced distribution (else ``probs``)
    reliability: np.ndarray | None = None  # member: (n,) (the top probability without ARBEx)
    labels: np.ndarray | None = None  # member: the trained positions' labels after SCN relabelling
    relabel_count: np.ndarray | None = None  # member: per trained position
    mean_probs: np.ndarray | None = None  # member, retrain: (len(trained), C) epoch mean of the training-time probs
    dynamics: dict[str, np.ndarray] | None = None  # member, retrain: each (epochs, len(trained))
    held: np.ndarray | None = None  # fold: positions of its held-out fold

    def to_checkpoint(self) -> dict[str, Any]:
        """The dict a checkpoint holds: the fields that are set, numpy arrays as tensors."""
        names = [*_FIRST, *(f.name for f in fields(self) if f.name not in _FIRST)]
        return _to_tensors({k: getattr(self, k) for k in names if getattr(self, k) is not None})

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> FitRecord:
        """The record a checkpoint's dict holds (tensors back to numpy). ValueError when it is not one."""
        if not isinstance(saved, dict) or not {"trained", "probs"} <= saved.keys():
            raise ValueError("not a finished fit's record")
        values = _to_numpy(saved)
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


_FIRST = ("history", "seconds", "seen")  # the checkpoint dict's first keys, in the order runs have written them


def _to_tensors(d: dict[str, Any]) -> dict[str, Any]:
    """numpy → torch (nested dicts too) so checkpoints load with weights_only=True."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, np.ndarray):
            out[k] = torch.from_numpy(np.ascontiguousarray(v))
        elif isinstance(v, dict):
            out[k] = _to_tensors(v)
        else:
            out[k] = v
    return out


def _to_numpy(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if torch.is_tensor(v):
            out[k] = v.numpy()
        elif isinstance(v, dict):
            out[k] = _to_numpy(v)
        else:
            out[k] = v
    return out

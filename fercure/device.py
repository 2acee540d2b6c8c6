"""Which torch device a stage runs on: one rule for every stage."""

from __future__ import annotations

import torch

from fercure.errors import DeviceError  # noqa: F401  (re-exported)


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' → CUDA when torch sees a GPU, else CPU. Asking for CUDA without one is a clear error
    rather than a crash deep inside the first kernel."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"--device {name} was asked for, but torch sees no CUDA device. Use --device cpu or auto.")
    return torch.device(name)

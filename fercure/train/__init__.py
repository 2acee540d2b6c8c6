"""Training engine: arrays in, model + per-sample dynamics out (no file I/O here).

fit(images_uint8, labels, classes, config) trains one model (loop.py: a plain cross-entropy core
that records dynamics); the methods plug in as parts (parts/: SCN, ARBEx, ELR, distillation) over
pure math (selfcure.py, reliability.py); signals.py turns a run into per-sample detection signals;
ensemble.py plans ensembles, distillation generations and folds. stages/train.py writes files.
"""

from importlib import import_module

# Imported on first use: fercure.train.config is plain values (the CLI reads its defaults), and
# importing it must not import torch.
_EXPORTS = {
    "TrainConfig": "config", "FitResult": "loop", "fit": "loop", "predict": "loop", "FerNet": "model",
    "build_model": "model", "ensemble_uncertainty": "ensemble", "fit_temperature": "ensemble",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fercure.train' has no attribute {name!r}")
    return getattr(import_module(f"fercure.train.{_EXPORTS[name]}"), name)

"""Training engine: arrays in, model + per-sample dynamics out (no file I/O here).

fit(images_uint8, labels, classes, config) trains one model (loop.py: a plain cross-entropy core
that records dynamics); the methods plug in as parts (parts/: SCN, ARBEx, ELR, distillation) over
pure math (selfcure.py, reliability.py); signals.py turns a run into per-sample detection signals;
ensemble.py plans ensembles, distillation generations and folds. stages/train.py writes files.
"""

from fercure.train.config import TrainConfig
from fercure.train.ensemble import ensemble_uncertainty, fit_temperature
from fercure.train.loop import FitResult, fit, predict
from fercure.train.model import FerNet, build_model

__all__ = ["TrainConfig", "FitResult", "fit", "predict", "FerNet", "build_model",
           "ensemble_uncertainty", "fit_temperature"]

"""Ensembles, self-distillation, cross-fitting and calibration (EMENet-style; Lakshminarayanan et
al. 2017 for deep ensembles, Guo et al. 2017 for temperature scaling).

- ``ensemble=M``: M members that differ only in seed (init, order, augmentation); their mean
  probabilities are the prediction, the entropy of the mean is the total uncertainty and the mutual
  information H(mean) − mean(H(member)) the epistemic part (high where members disagree, e.g. on
  inputs unlike the training data).
- ``distill_generations=G``: generation g (1..G) trains M fresh students on
  (1−w)·CE(given labels) + w·CE(soft labels of generation g−1's ensemble mean).
- ``folds=K``: K models, each trained without one stratified fold and scored on it, give
  out-of-fold probabilities (what confident learning wants).
- ``fit_temperature``: one scalar T minimising held-out NLL (applied to the out-of-fold
  probabilities when ``folds`` > 0). MC dropout was removed in 0.2: no command could reach it, and
  a deep ensemble or the folds give the same uncertainty with a measured use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-12


# ---------------------------------------------------------------------------------------------
# Uncertainty


def entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of (...,C) distributions."""
    p = np.asarray(p, dtype=np.float64)
    return -(p * np.log(np.clip(p, EPS, 1.0))).sum(axis=-1)


def ensemble_uncertainty(member_probs: np.ndarray) -> dict[str, np.ndarray]:
    """(M,N,C) member probabilities → mean (N,C), entropy of the mean (N,), mutual information
    (N,) = H(mean) − mean_m H(p_m) ≥ 0 (0 for one member)."""
    mp = np.asarray(member_probs, dtype=np.float64)
    mean = mp.mean(axis=0)
    h = entropy(mean)
    mi = np.clip(h - entropy(mp).mean(axis=0), 0.0, None)
    return {"mean": mean, "entropy": h, "mutual_info": mi}


# ---------------------------------------------------------------------------------------------
# Calibration


def nll(logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, temperature: float = 1.0) -> float:
    lg = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    return float(F.cross_entropy(lg / temperature, y))


def fit_temperature(logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature T > 0 minimising the NLL of softmax(logits / T) on held-out data.

    The NLL is convex in 1/T, so a bounded golden-section search on log T finds the optimum
    without tuning an optimiser."""
    lg = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)

    def f(log_t: float) -> float:
        return float(F.cross_entropy(lg / float(np.exp(log_t)), y))

    a, b = np.log(bounds[0]), np.log(bounds[1])
    gr = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - gr * (b - a), a + gr * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - gr * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + gr * (b - a)
            fd = f(d)
    return float(np.exp((a + b) / 2.0))


# ---------------------------------------------------------------------------------------------
# Planning the fits of one run


@dataclass(frozen=True)
class Job:
    """One fit of a run. key (``member_key``, ``fold_key``, ``RETRAIN_KEY``) is stable so checkpoints
    can say which jobs are done."""
    key: str
    kind: str  # member | fold | retrain
    generation: int = 0
    member: int = 0
    fold: int = -1
    seed: int = 0

    @property
    def dynamics_member(self) -> int:
        """The ``member`` value written in dynamics.parquet: generation·M + member."""
        return self.member if self.kind == "member" else -1


def member_key(generation: int, member: int) -> str:
    """The key of generation ``generation``'s ensemble member ``member`` (0..M-1): ``g1m0``."""
    return f"g{generation}m{member}"


def fold_key(fold: int) -> str:
    """The key of the cross-fitting model trained without fold ``fold``: ``fold2``."""
    return f"fold{fold}"


RETRAIN_KEY = "retrain"  # the key of the second model (trained without the most suspect share)


def plan_jobs(config: Any) -> list[Job]:
    """Members of generation 0, then students of generations 1..G, then the K folds, then the
    retrain (a second model without the most suspect share, which scores that share held out)."""
    jobs: list[Job] = []
    m = config.ensemble
    for g in range(config.distill_generations + 1):
        for i in range(m):
            jobs.append(Job(key=member_key(g, i), kind="member", generation=g, member=g * m + i,
                            seed=config.seed + 1000 * g + i))
    for k in range(config.folds):
        jobs.append(Job(key=fold_key(k), kind="fold", fold=k, seed=config.seed + 100_000 + k))
    if getattr(config, "retrain", False):
        jobs.append(Job(key=RETRAIN_KEY, kind="retrain", seed=config.seed + 200_000))
    return jobs


def stratified_folds(labels: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Fold id (0..k-1) per sample, classes spread evenly over folds."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        fold[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)  # continue the round-robin so small classes do not all land in fold 0
    return fold

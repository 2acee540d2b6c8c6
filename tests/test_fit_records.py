"""A finished fit travels as a typed record (fercure.train.records.FitRecord); checkpoints keep the
plain dict layout runs have always written, so a run interrupted under an earlier version resumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fercure.train.config import TrainConfig
from fercure.train.ensemble import RETRAIN_KEY, fold_key, member_key, plan_jobs
from fercure.train.records import FitRecord


def saved_member(n: int = 6, c: int = 3, e: int = 2) -> dict:
    """A member's record as fits/<key>.pt holds it (the layout of fercure 0.2's checkpoints)."""
    rng = np.random.default_rng(0)
    probs = torch.from_numpy(rng.dirichlet(np.ones(c), n))
    return {"history": [{"epoch": 0, "loss": 1.0, "train_accuracy": 0.5}], "seconds": 2.0, "seen": 12.0,
            "trained": torch.arange(n), "probs": probs, "logits": probs.log(), "embedding": torch.ones(n, 4),
            "rel_probs": probs, "reliability": probs.max(dim=1).values, "labels": torch.zeros(n, dtype=torch.long),
            "relabel_count": torch.zeros(n, dtype=torch.long), "mean_probs": probs,
            "dynamics": {"p_given": torch.full((e, n), 0.5), "predicted": torch.zeros((e, n), dtype=torch.long)}}


def test_a_saved_record_reads_as_numpy_and_writes_back_the_same_dict():
    saved = saved_member()
    record = FitRecord.from_checkpoint(saved)
    assert isinstance(record.probs, np.ndarray) and isinstance(record.dynamics["p_given"], np.ndarray)
    assert record.held is None and record.seen == 12.0 and record.history == saved["history"]
    again = record.to_checkpoint()
    assert list(again) == list(saved)  # same keys, same order
    for k, v in saved.items():
        if torch.is_tensor(v):
            assert torch.equal(again[k], v) and again[k].dtype == v.dtype, k
    assert all(torch.equal(again["dynamics"][k], v) for k, v in saved["dynamics"].items())


def test_a_fold_record_keeps_only_its_own_fields():
    record = FitRecord(trained=np.arange(4), probs=np.full((2, 3), 1 / 3), held=np.array([4, 5]),
                       logits=np.zeros((2, 3)), history=[], seconds=1.0, seen=4.0)
    assert set(record.to_checkpoint()) == {"history", "seconds", "seen", "trained", "probs", "held", "logits"}


@pytest.mark.parametrize("value", ["fits/", {"probs": torch.zeros(1, 2)}, None])
def test_what_is_not_a_record_is_refused(value):
    with pytest.raises(ValueError):
        FitRecord.from_checkpoint(value)


def test_job_keys_are_built_in_one_place():
    jobs = plan_jobs(TrainConfig(ensemble=2, distill_generations=1, folds=2))
    assert [j.key for j in jobs] == [member_key(0, 0), member_key(0, 1), member_key(1, 0), member_key(1, 1),
                                     fold_key(0), fold_key(1), RETRAIN_KEY]
    assert member_key(1, 0) == "g1m0" and fold_key(1) == "fold1"  # the names checkpoints and members/ files carry

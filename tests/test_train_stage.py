"""run_train on a tiny synthetic workspace: files, columns, resume."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_small_workspace
from fercure.stages.train import TrainSummary, run_train
from fercure.train.config import TrainConfig
from fercure.train.dynamics import DYNAMICS_COLUMNS
from fercure.train.model import build_model
from fercure.workspace import Workspace, WorkspaceError, read_metadata, write_table

CLASSES = ["happy", "neutral", "sad"]


def make_workspace(root, n: int = 40, size: int = 24, seed: int = 0) -> Workspace:
    """Colour-coded classes; row 1 a duplicate, 2 unreadable, 3 without a crop, 4 no_face (kept)."""
    return make_small_workspace(root, n, size, CLASSES, sd=20, shift=80, seed=seed, no_crop=(3,),
                                statuses={1: "duplicate", 2: "unreadable", 4: "no_face"})[0]


def cfg(**kw) -> TrainConfig:
    base = dict(backbone="test_resnet", image_size=24, epochs=2, batch_size=16, device="cpu",
                relabel_epoch=1)
    base.update(kw)
    return TrainConfig(**base)


def test_run_train_writes_the_run(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    s = run_train(ws, cfg())
    assert isinstance(s, TrainSummary)
    assert s.n_samples == 37 and s.n_excluded == 3 and s.classes == CLASSES
    assert ws.latest_run() == s.run_id and s.run_dir == ws.run_dir(s.run_id)
    for f in ("config.json", "model.pt", "dynamics.parquet", "predictions.parquet", "metrics.json"):
        assert (s.run_dir / f).exists(), f
    assert not (s.run_dir / "checkpoint.pt").exists()  # only kept while a run is unfinished
    conf = json.loads((s.run_dir / "config.json").read_text())
    assert conf["classes"] == CLASSES and TrainConfig.from_dict(conf) == cfg()

    pred = pd.read_parquet(s.run_dir / "predictions.parquet")
    expected = (["sample_id", "given_label", "given_index"] + [f"p_{c}" for c in CLASSES]
                + [f"mean_p_{c}" for c in CLASSES]
                + ["mean_p_given", "var_p_given", "aum", "last_p_given", "importance_weight",
                   "relabel_count", "scn_label", "reliability"] + [f"rel_p_{c}" for c in CLASSES]
                + ["uncertainty_entropy", "uncertainty_mutual_info", "oof_p_given", "forgetting",
                   "knn_agreement", "fusion_quality", "retrain_p_given", "mean_p_given_eval", "fine_alignment"]
                + [f"knn_p_{c}" for c in CLASSES] + [f"retrain_p_{c}" for c in CLASSES]
                + ["retrain_held_out", "retrain_suspect", "planted", "probe"])
    assert list(pred.columns) == expected
    assert len(pred) == 37 and pred["sample_id"].is_unique
    assert pred["oof_p_given"].isna().all() and (pred["uncertainty_mutual_info"] == 0).all()
    assert np.allclose(pred[[f"p_{c}" for c in CLASSES]].sum(axis=1), 1, atol=1e-4)
    assert read_metadata(s.run_dir / "predictions.parquet")["classes"] == CLASSES

    # every score is about the given label, and the retrain scored the share it dropped held out
    assert pred["mean_p_given"].between(0, 1).all() and pred["retrain_p_given"].between(0, 1).all()
    special = pred["planted"] | pred["probe"]
    suspects = pred["retrain_held_out"] & ~special
    assert suspects.sum() == round(0.3 * (~special).sum())
    assert pred.loc[special, "retrain_held_out"].all()  # the second model never sees the probe or the planted
    assert pred["retrain_suspect"].sum() >= suspects.sum()
    assert pred["probe"].sum() == 3  # round(5% of 12-13 per class) → at least 1 per class
    dyn = pd.read_parquet(s.run_dir / "dynamics.parquet")
    assert list(dyn.columns) == DYNAMICS_COLUMNS
    real = int((~(pred["planted"] | pred["probe"])).sum())
    assert len(dyn) == real * 2 and set(dyn["epoch"]) == {0, 1} and set(dyn["member"]) == {0}
    assert dyn["relabeled"].dtype == bool

    state = torch.load(s.run_dir / "model.pt", weights_only=True)
    build_model(cfg(), 3).load_state_dict(state)


def test_ensemble_distillation_folds(tmp_path):
    ws = make_workspace(tmp_path / "ws", n=30)
    s = run_train(ws, cfg(epochs=1, ensemble=2, distill_generations=1, folds=2))
    pred = pd.read_parquet(s.run_dir / "predictions.parquet")
    assert pred["oof_p_given"].between(0, 1).all()
    assert (pred["uncertainty_mutual_info"] >= 0).all() and (pred["uncertainty_mutual_info"] > 0).any()
    dyn = pd.read_parquet(s.run_dir / "dynamics.parquet")
    assert sorted(dyn["member"].unique()) == [0, 1, 2, 3]  # generation·M + member
    assert (s.run_dir / "members" / "g1m1.pt").exists() and s.temperature is not None


class _Crash(Exception):
    pass


class _CrashAfter:
    """Reporter whose progress bar raises once `epochs` epochs are reported (i.e. checkpointed)."""

    def __init__(self, epochs: int) -> None:
        self.left = epochs

    def task(self, description, total):
        outer = self

        class H:
            def advance(self, n=1):
                if n:
                    outer.left -= n
                    if outer.left <= 0:
                        raise _Crash()

            def close(self):
                pass

        return H()

    def log(self, message):
        pass


def test_resume_matches_an_uninterrupted_run(tmp_path):
    c = cfg(epochs=3, relabel_epoch=1, dropout=0.1)
    ws_a = make_workspace(tmp_path / "a")
    full = run_train(ws_a, c)
    ws_b = make_workspace(tmp_path / "b")
    with pytest.raises(_Crash):
        run_train(ws_b, c, reporter=_CrashAfter(1))
    with pytest.raises(WorkspaceError):
        ws_b.latest_run()  # nothing finished yet
    resumed = run_train(ws_b, TrainConfig(), resume=True)  # saved config wins
    assert resumed.resumed and resumed.epochs == 3
    pa = pd.read_parquet(full.run_dir / "predictions.parquet")
    pb = pd.read_parquet(resumed.run_dir / "predictions.parquet")
    pd.testing.assert_frame_equal(pa, pb)
    da = pd.read_parquet(full.run_dir / "dynamics.parquet")
    db = pd.read_parquet(resumed.run_dir / "dynamics.parquet")
    pd.testing.assert_frame_equal(da, db)


def test_resume_without_unfinished_run_starts_new(tmp_path):
    ws = make_workspace(tmp_path / "ws", n=20)
    s = run_train(ws, cfg(epochs=1), resume=True)
    assert not s.resumed and ws.latest_run() == s.run_id


def test_errors_the_user_can_fix(tmp_path):
    with pytest.raises(WorkspaceError, match="prepare"):
        run_train(tmp_path / "empty", cfg())
    ws = make_workspace(tmp_path / "ws", n=12)
    df = pd.read_parquet(ws.manifest)
    df["face_status"] = "duplicate"
    write_table(df, ws.manifest, {"classes": CLASSES})
    with pytest.raises(WorkspaceError, match="nothing to train"):
        run_train(ws, cfg())


class _Recorder:
    """A reporter that keeps the lines it is asked to log (and asks for per-epoch lines)."""

    log_epochs = True

    def __init__(self):
        self.lines = []

    def task(self, description, total):
        from fercure.progress import NULL

        return NULL.task(description, total)

    def log(self, message):
        self.lines.append(message)


def test_a_new_run_says_what_happens_to_an_unfinished_one_and_logs_epochs(tmp_path):
    ws = make_workspace(tmp_path / "ws", n=20)
    left = ws.run_dir("20260101-000000-test-dead")
    left.mkdir(parents=True)
    (left / "checkpoint.pt").write_bytes(b"an unfinished run's checkpoint")
    rec = _Recorder()
    s = run_train(ws, cfg(epochs=2, retrain=False), reporter=rec)
    said = [line for line in rec.lines if left.name in line]
    assert len(said) == 1 and "kept as it is" in said[0] and "--resume" in said[0] and str(left) in said[0]
    assert (left / "checkpoint.pt").exists() and s.run_id != left.name  # untouched; a new run
    epochs = [line for line in rec.lines if "epoch" in line and "loss" in line]
    assert [line.split("epoch ")[1].split()[0] for line in epochs] == ["1/2", "2/2"]
    assert all("accuracy" in line for line in epochs)

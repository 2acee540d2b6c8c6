"""Runs that fail before their first checkpoint: marked FAILED, removed by the next new run;
finished and resumable runs are never touched (issue 12)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import fercure.stages.train as train_stage
from conftest import make_small_workspace
from fercure.progress import NullReporter
from fercure.stages.train import run_train
from fercure.train.config import TrainConfig
from fercure.workspace import Workspace, WorkspaceError, write_table

CLASSES = ["happy", "sad"]


def make_workspace(root, n: int = 16, size: int = 24, classes=CLASSES) -> Workspace:
    return make_small_workspace(root, n, size, classes, images="random")[0]


def cfg(**kw) -> TrainConfig:
    base = dict(backbone="test_resnet", image_size=24, epochs=1, batch_size=8, device="cpu",
                relabel_epoch=1)
    base.update(kw)
    return TrainConfig(**base)


class Log(NullReporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


def _runs(ws: Workspace) -> dict[str, set[str]]:
    return {d.name: {p.name for p in d.iterdir()} for d in ws.runs_dir.iterdir() if d.is_dir()}


@pytest.mark.parametrize("error, line", [
    (RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB"), "RuntimeError: CUDA out of memory."),
    (KeyboardInterrupt(), "interrupted (Ctrl-C) before the first checkpoint"),
])
def test_a_run_that_fails_before_a_checkpoint_is_marked_failed(tmp_path, monkeypatch, error, line):
    ws = make_workspace(tmp_path / "ws")

    def fit(*args, **kwargs):
        raise error

    monkeypatch.setattr(train_stage, "fit", fit)
    with pytest.raises(type(error)):
        run_train(ws, cfg())
    (run, files), = _runs(ws).items()
    assert files == {"config.json", "FAILED"}
    assert (ws.run_dir(run) / "FAILED").read_text() == line + "\n"
    assert not (ws.runs_dir / "LATEST").exists()


def test_a_run_that_fails_after_a_checkpoint_stays_resumable(tmp_path, monkeypatch):
    ws = make_workspace(tmp_path / "ws")

    def fit(*args, on_epoch_end, **kwargs):
        on_epoch_end({"epoch": torch.tensor(1)})  # one epoch checkpointed, then it dies
        raise RuntimeError("killed in epoch 2")

    monkeypatch.setattr(train_stage, "fit", fit)
    with pytest.raises(RuntimeError):
        run_train(ws, cfg())
    (run, files), = _runs(ws).items()
    assert files == {"config.json", "checkpoint.pt"}
    assert train_stage._unfinished_run(ws) == run  # what --resume picks


def test_too_few_classes_fails_before_a_run_folder_exists(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    one = pd.read_parquet(ws.manifest)
    one["label"] = "happy"
    write_table(one, ws.manifest, {"classes": ["happy"]})
    with pytest.raises(WorkspaceError, match="at least two classes"):
        run_train(ws, cfg())
    assert not ws.runs_dir.exists()


def test_the_next_run_removes_a_failed_one(tmp_path, monkeypatch):
    ws = make_workspace(tmp_path / "ws")
    real = train_stage.fit

    def fit(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(train_stage, "fit", fit)
    with pytest.raises(MemoryError):
        run_train(ws, cfg())
    (failed, files), = _runs(ws).items()
    assert (ws.run_dir(failed) / "FAILED").read_text() == "MemoryError\n"
    monkeypatch.setattr(train_stage, "fit", real)
    log = Log()
    s = run_train(ws, cfg(), reporter=log)
    assert set(_runs(ws)) == {s.run_id} and ws.latest_run() == s.run_id
    assert any("removed 1 run folder(s)" in m for m in log.lines)


def test_a_new_run_removes_dead_runs_and_nothing_else(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    layout = {
        "dead-config-only": {"config.json"},
        "dead-failed": {"config.json", "FAILED"},
        "dead-failed-only": {"FAILED"},
        "finished": {"config.json", "model.pt", "predictions.parquet", "metrics.json"},
        "finished-marked": {"config.json", "predictions.parquet", "FAILED"},
        "resumable": {"config.json", "checkpoint.pt"},
        "resumable-marked": {"config.json", "checkpoint.pt", "FAILED"},
        "user-notes": {"config.json", "notes.txt"},
        "empty": set(),
    }
    for name, files in layout.items():
        (ws.runs_dir / name).mkdir(parents=True)
        for f in files:
            (ws.runs_dir / name / f).write_text(json.dumps({"run_id": name}))
    ws.set_latest_run("finished")
    log = Log()
    s = run_train(ws, cfg(), reporter=log)
    kept = {k: v for k, v in _runs(ws).items() if k != s.run_id}
    assert kept == {k: v for k, v in layout.items() if not k.startswith("dead-")}
    assert [m for m in log.lines if "removed" in m] == [
        f"train: removed 3 run folder(s) in {ws.runs_dir} that failed before their first checkpoint "
        "(only config.json and/or FAILED; nothing to resume)."]
    assert ws.latest_run() == s.run_id


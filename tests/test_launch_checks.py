"""`train --nproc N` checked before and while it starts: the CPU count, each rank's share of the
samples, the --trusted table read once, and the rank folders a killed launcher leaves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import make_small_workspace

from fercure import launch
from fercure.errors import DistributedError, WorkspaceError
from fercure.train import distributed as dd

REPO = Path(__file__).resolve().parent.parent


def test_nproc_beyond_the_cpu_cores_is_refused():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with pytest.raises(DistributedError, match=f"--nproc {cores + 1} asks for more processes than the {cores} CPU"):
        launch.check_nproc(cores + 1, "cpu")
    launch.check_nproc(cores, "cpu")


def test_nproc_beyond_what_each_rank_can_train_is_refused(tmp_path):
    from fercure.stages.train import _check_trainable, _load_inputs

    ws, _ = make_small_workspace(tmp_path / "ws", 6, classes=("happy", "sad"))
    data = _load_inputs(ws, reporter=type("R", (), {"log": lambda self, m: None})())
    with pytest.raises(WorkspaceError, match="4 processes for 6 samples: .* one would get 1 .* leave --nproc out"):
        _check_trainable(ws, data, False, dd.World(0, 4, 0))
    _check_trainable(ws, data, False, dd.SINGLE)


def test_rank_folders_of_a_dead_launcher_are_removed_at_the_next_start(tmp_path):
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()  # a PID whose process is gone
    dead = tmp_path / f"fercure-ranks-{done.pid}-abc"
    live = tmp_path / f"fercure-ranks-{os.getppid()}-def"
    mine = tmp_path / "fercure-ranks-notapid"
    for d in (dead, live, mine):
        d.mkdir()
        (d / "rank1.txt").write_text("x")
    assert launch.remove_stale_rank_folders(str(tmp_path)) == 1
    assert not dead.exists() and live.exists() and mine.exists()


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="this torch build has no gloo backend")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="--nproc 2 needs two cores")
def test_ranks_train_with_the_trusted_table_rank_0_read(tmp_path):
    ws, _ = make_small_workspace(tmp_path / "ws", 48, classes=("happy", "sad"))
    ids = pd.read_parquet(ws.manifest)["sample_id"].tolist()
    f = tmp_path / "decisions.csv"
    f.write_text(f"sample_id,action,label\n{ids[0]},drop,\n{ids[1]},keep,\n", encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-m", "fercure", "train", "-w", str(ws.root), "--backbone", "test_resnet",
                          "--image-size", "24", "--epochs", "1", "--batch-size", "16", "--device", "cpu",
                          "--trusted", str(f), "--nproc", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    run = ws.run_dir(ws.latest_run())
    preds = pd.read_parquet(run / "predictions.parquet")
    assert ids[0] not in set(preds["sample_id"]) and len(preds) == 47
    assert pd.read_parquet(run / "trusted.parquet")["sample_id"].tolist() == [ids[0], ids[1]]

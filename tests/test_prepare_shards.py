"""prepare --shard I/N: shards by sample_id hash into the workspace's shard files; the last one (or
--merge) combines them into the manifest and store an unsharded run writes, row for row."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fercure.cli import app
from fercure.prepare.shards import shard_of
from fercure.stages import prepare as prep
from fercure.workspace import Workspace, WorkspaceError, read_table

CLASSES = ["angry", "happy", "sad"]


@pytest.fixture(scope="module")
def small_input(tmp_path_factory, sample_data: Path) -> Path:
    """5 real FER crops per class, plus a copy of one under another class (a duplicate that may
    land in another shard than its original: the merge must still find it)."""
    root = tmp_path_factory.mktemp("shards") / "data"
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for img in sorted((sample_data / "images" / cls).glob("*.png"))[:5]:
            shutil.copyfile(img, root / cls / img.name)
    shutil.copyfile(sorted((root / "happy").glob("*.png"))[0], root / "sad" / "copy_of_happy.png")
    return root


@pytest.fixture(scope="module")
def unsharded(small_input: Path, tmp_path_factory) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("one") / "ws")
    prep.run_prepare(small_input, ws, device="cpu", image_size=32)
    return ws


def assert_same_workspace(a: Workspace, b: Workspace) -> None:
    ma, mb = read_table(a.manifest), read_table(b.manifest)
    pd.testing.assert_frame_equal(ma, mb)
    assert np.array_equal(np.load(a.store), np.load(b.store))
    pd.testing.assert_frame_equal(read_table(a.rejects), read_table(b.rejects))
    assert (mb["face_status"] == "duplicate").sum() == 1  # found across shards


def test_shards_merge_on_the_last_into_the_unsharded_rows(small_input, unsharded, tmp_path):
    ws = Workspace(tmp_path / "ws")
    n = 3
    ids = read_table(unsharded.manifest)["sample_id"]
    sizes = np.bincount(shard_of(ids, n), minlength=n)
    assert sizes.sum() == len(ids) and (sizes > 0).all()
    summaries = [prep.run_prepare(small_input, ws, device="cpu", image_size=32, shard=(i, n)) for i in range(n)]
    for i, s in enumerate(summaries[:-1]):
        assert s.n_samples == sizes[i] and "waiting for shard" in " ".join(s.notes)
    assert "Merged 3 shards" in " ".join(summaries[-1].notes) and summaries[-1].n_samples == len(ids)
    assert_same_workspace(unsharded, ws)
    assert not any((ws.faces_dir / "shards").iterdir())  # the merged set is gone


def test_merge_command_combines_a_complete_set(small_input, unsharded, tmp_path):
    ws = Workspace(tmp_path / "ws")
    runner = CliRunner()
    prep.run_prepare(small_input, ws, device="cpu", image_size=32, shard=(1, 2), merge=False)
    res = runner.invoke(app, ["prepare", "--merge", "-w", str(ws.root)])
    assert res.exit_code == 1 and "shard(s) 0 of 2 missing" in res.output
    res = runner.invoke(app, ["prepare", str(small_input), "-w", str(ws.root), "--image-size", "32",
                              "--device", "cpu", "--shard", "0/2"])
    assert res.exit_code == 0, res.output  # the last shard merges by itself, taking the lock
    assert_same_workspace(unsharded, ws)


def test_merge_without_the_automatic_step(small_input, unsharded, tmp_path):
    ws = Workspace(tmp_path / "ws")
    for i in range(2):
        prep.run_prepare(small_input, ws, device="cpu", image_size=32, shard=(i, 2), merge=False)
    assert not ws.manifest.exists()
    res = CliRunner().invoke(app, ["prepare", "--merge", "-w", str(ws.root)])
    assert res.exit_code == 0, res.output
    assert_same_workspace(unsharded, ws)


def test_shard_arguments():
    assert prep.parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "-1/2", "a/b", "3"):
        with pytest.raises(WorkspaceError, match="--shard"):
            prep.parse_shard(bad)
    ids = pd.Series([f"{i:016x}" for i in range(2000)])
    a, b = shard_of(ids, 4), shard_of(ids, 4)
    assert np.array_equal(a, b) and set(a) == {0, 1, 2, 3}
    assert np.bincount(a).min() > 400  # balanced: 500 ± a few dozen each


def test_batch_and_chunk_sizes_do_not_change_a_row(small_input, unsharded, tmp_path):
    """Other detector batches and resumable chunks put every image among other batch-mates (as
    shards, resumes and re-runs with new files do): the manifest and crops stay the same bit for bit."""
    ws = Workspace(tmp_path / "ws")
    prep.run_prepare(small_input, ws, device="cpu", image_size=32, batch_size=3, chunk_size=5)
    assert_same_workspace(unsharded, ws)

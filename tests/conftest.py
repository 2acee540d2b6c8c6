"""Shared fixtures: paths to the bundled sample data and (when present) ../shared."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO / "sample_data"
SHARED = Path(os.environ.get("FERCURE_SHARED", REPO.parent / "shared"))

# Keep torch from oversubscribing the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")


# sample_data/ holds 1,800 images for the demo; tests run on the first 12 of each class in
# labels.csv (the earlier 84-image sample, 2 known errors per class), so they stay fast.
PER_CLASS = 12


def small_sample_rows(per_class: int = PER_CLASS) -> pd.DataFrame:
    """The first ``per_class`` rows of each class in sample_data/labels.csv."""
    labels = pd.read_csv(SAMPLE_DATA / "labels.csv", dtype=str, keep_default_na=False)
    return labels.groupby("label", sort=False).head(per_class).reset_index(drop=True)


def small_sample_paths(per_class: int = PER_CLASS) -> list[Path]:
    """Those rows' image files, sorted (what a glob of the old 84-image folder gave)."""
    return sorted(SAMPLE_DATA / "images" / p for p in small_sample_rows(per_class)["path"])


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    """A copy of sample_data/ cut to the small subset: images/<class>/*.png, labels.csv and
    ferplus_reference.csv with the same rows (wild/ is not copied: tests read it in place)."""
    root = tmp_path_factory.mktemp("sample_data")
    rows = small_sample_rows()
    for rel in rows["path"]:
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SAMPLE_DATA / "images" / rel, root / "images" / rel)
    rows.to_csv(root / "labels.csv", index=False)
    reference = pd.read_csv(SAMPLE_DATA / "ferplus_reference.csv", dtype=str, keep_default_na=False)
    reference[reference["path"].isin(set(rows["path"]))].to_csv(root / "ferplus_reference.csv", index=False)
    return root


@pytest.fixture(scope="session")
def fer_benchmark() -> Path:
    path = SHARED / "benchmarks" / "fer2013-ferplus"
    if not (path / "publictest" / "labels.csv").exists():
        pytest.skip(f"{path} is not available")
    return path


def make_small_workspace(root: Path, n: int, size: int = 24, classes=("happy", "neutral", "sad"), *,
                         images: str = "colour", sd: float = 20.0, shift: float = 80.0, flip_rate: float = 0.0,
                         statuses: dict[int, str] | None = None, no_crop=(), seed: int = 0):
    """A prepared workspace without prepare: a crop store and a manifest of ``n`` samples, labels
    cycling through ``classes``. Returns the workspace and which given labels are wrong.

    images "colour": class = dominant colour channel (N(100, sd) noise, + ``shift`` on channel
    class % 3), learnable in an epoch or two; "random": uniform noise (nothing to learn).
    ``flip_rate`` of the labels are flipped to another class; ``statuses`` sets face_status of
    rows by position; ``no_crop`` rows get store_index -1 (no crop, as prepare leaves them)."""
    from fercure.workspace import Workspace, sample_id, write_table

    ws = Workspace(root)
    rng = np.random.default_rng(seed)
    ws.faces_dir.mkdir(parents=True, exist_ok=True)
    c = len(classes)
    y = np.arange(n) % c
    if images == "random":
        np.save(ws.store, rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8))
    else:
        imgs = rng.normal(100, sd, (n, size, size, 3))
        for i, k in enumerate(y):
            imgs[i, ..., k % 3] += shift
        np.save(ws.store, np.clip(imgs, 0, 255).astype(np.uint8))
    wrong = np.zeros(n, dtype=bool)
    given = y.copy()
    if flip_rate:
        wrong[rng.choice(n, int(flip_rate * n), replace=False)] = True
        given[wrong] = (y[wrong] + rng.integers(1, c, int(wrong.sum()))) % c
    paths = [f"img/{i:03d}.png" for i in range(n)]
    status = ["ok"] * n
    for i, s in (statuses or {}).items():
        status[i] = s
    store_index = np.arange(n)
    store_index[list(no_crop)] = -1
    write_table(pd.DataFrame({
        "sample_id": [sample_id(p) for p in paths], "source_path": paths,
        "label": np.array(list(classes), dtype=object)[given], "split": "train", "face_status": status,
        "store_index": store_index}), ws.manifest, {"classes": list(classes)})
    return ws, wrong


@pytest.fixture
def small_workspace():
    """The factory above, for tests that take it as a fixture."""
    return make_small_workspace

"""Shared fixtures: paths to the bundled sample data and (when present) ../shared."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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

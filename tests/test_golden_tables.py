"""Behaviour unchanged: the small chain (prepare → train → audit → export) on CPU with a fixed seed
writes the same tables as the recorded ones in tests/golden/.

Portable across x86 CPUs, thread counts and package patch versions: ids, strings, integers and
booleans must match exactly; float columns within FLOAT_RTOL / FLOAT_ATOL (relative or absolute). The crop store (uint8)
within STORE_MAX_DIFF per pixel on at most STORE_DIFF_SHARE of the pixels. A refactor that changes
behaviour moves a flag, a suggestion, a count, or a float by far more than these tolerances.

The tolerances were measured by running this chain on one Intel Xeon (AVX-512) under
ATEN_CPU_CAPABILITY=avx2, =default (no SIMD), and with 1 against 2 torch threads: every integer,
string and boolean column was identical and the crops were identical. The largest float difference
in any column was below 1e-6 for AVX2 against AVX-512, 3.2e-5 for 2 threads against 1, and 4.1e-5
for the scalar kernels (out-of-fold p(given) under cross-fitting). The tolerances leave a factor of
about 25 over the worst of these.

When a change is meant to alter the tables, re-record them in the same commit and say why in its
message:

    FERCURE_RECORD_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden_tables.py
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from fercure.stages.audit import run_audit
from fercure.stages.export import run_export
from fercure.stages.prepare import run_prepare
from fercure.stages.train import run_train
from fercure.train.config import TrainConfig
from fercure.workspace import Workspace

GOLDEN = Path(__file__).resolve().parent / "golden"
RECORD = os.environ.get("FERCURE_RECORD_GOLDEN") == "1"
FLOAT_RTOL = 1e-3
FLOAT_ATOL = 1e-3
STORE_MAX_DIFF = 2  # grey levels
STORE_DIFF_SHARE = 0.001
PER_CLASS = 6

# Config "plain": the defaults that shape the tables (retrain, holdout probe, planted labels, kNN).
# Config "parts": every part that is cheap on CPU switched on.
CONFIGS = {
    "plain": dict(),
    "parts": dict(selfcure=True, reliability=True, elr=True, jigsaw=True, jigsaw_grid=2, jigsaw_perms=4,
                  inpaint=True, pool="app", epoch_eval=True, ensemble=2, distill_generations=1,
                  label_smoothing=0.0, erase_p=0.5, anchors_per_class=2, anchor_dim=16),
    # Cross-fitting (out-of-fold p(given), the fitted temperature) with SCN relabelling every sample.
    "folds": dict(folds=2, retrain=False, holdout=0.0, plant_rate=0.0, selfcure=True, relabel_scope="all"),
}
BASE = dict(backbone="test_resnet", image_size=32, epochs=2, batch_size=8, device="cpu", seed=3,
            relabel_epoch=1, knn=3)


def table_differences(actual: pd.DataFrame, expected: pd.DataFrame) -> list[str]:
    """What differs between two tables beyond the tolerances: columns, row count, exact columns,
    float columns. Empty when they match."""
    if list(actual.columns) != list(expected.columns):
        extra = [c for c in actual.columns if c not in expected.columns]
        missing = [c for c in expected.columns if c not in actual.columns]
        return [f"columns differ: extra {extra}, missing {missing}"
                + ("" if extra or missing else " (order)")]
    if len(actual) != len(expected):
        return [f"{len(actual)} rows, expected {len(expected)}"]
    out = []
    for col in expected.columns:
        a, e = actual[col], expected[col]
        if e.dtype.kind == "f" or a.dtype.kind == "f":
            if a.dtype.kind not in "fiu" or e.dtype.kind not in "fiu":
                out.append(f"{col}: dtype {a.dtype}, expected {e.dtype}")
                continue
            av, ev = a.to_numpy(np.float64), e.to_numpy(np.float64)
            close = np.isclose(av, ev, rtol=FLOAT_RTOL, atol=FLOAT_ATOL, equal_nan=True)
            if not close.all():
                i = int(np.flatnonzero(~close)[0])
                out.append(f"{col}: {int((~close).sum())} rows beyond tolerance (row {i}: {av[i]!r} vs {ev[i]!r})")
        else:
            av, ev = a.astype(object).where(a.notna(), None), e.astype(object).where(e.notna(), None)
            diff = [i for i, (x, y) in enumerate(zip(av, ev)) if not _same(x, y)]
            if diff:
                i = diff[0]
                out.append(f"{col}: {len(diff)} rows differ (row {i}: {av.iloc[i]!r} vs {ev.iloc[i]!r})")
    return out


def _same(x, y) -> bool:
    if isinstance(x, (list, tuple, np.ndarray)) or isinstance(y, (list, tuple, np.ndarray)):
        xa, ya = np.asarray(x), np.asarray(y)
        if xa.shape != ya.shape:
            return False
        if xa.dtype.kind == "f" or ya.dtype.kind == "f":
            return bool(np.isclose(xa.astype(float), ya.astype(float), rtol=FLOAT_RTOL, atol=FLOAT_ATOL,
                                   equal_nan=True).all())
        return bool((xa == ya).all())
    return x == y or (x is None and y is None)


def store_differences(actual: np.ndarray, expected: np.ndarray) -> list[str]:
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return [f"store {actual.shape} {actual.dtype}, expected {expected.shape} {expected.dtype}"]
    d = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    share = float((d > 0).mean()) if d.size else 0.0
    if int(d.max(initial=0)) > STORE_MAX_DIFF or share > STORE_DIFF_SHARE:
        return [f"store: {share:.2%} of pixels differ, by up to {int(d.max())} grey levels"]
    return []


def check(name: str, tables: dict[str, Path]) -> list[str]:
    """Compare (or, when recording, write) one config's tables against tests/golden/<name>/."""
    folder = GOLDEN / name
    problems = []
    for table, path in tables.items():
        golden = folder / (f"{table}.npy" if path.suffix == ".npy" else f"{table}.parquet")
        if RECORD:
            folder.mkdir(parents=True, exist_ok=True)
            if path.suffix == ".npy":
                np.save(golden, np.load(path))
            else:  # column data only: key-value metadata holds run ids and times
                pq.write_table(pq.read_table(path).replace_schema_metadata(None), golden)
            continue
        if not golden.exists():
            problems.append(f"{name}/{table}: no golden file (record them: see this module's docstring)")
        elif path.suffix == ".npy":
            problems += [f"{name}/{table}: {p}" for p in store_differences(np.load(path), np.load(golden))]
        else:
            problems += [f"{name}/{table}: {p}" for p in
                         table_differences(pd.read_parquet(path), pd.read_parquet(golden))]
    if not RECORD:
        # A golden table the chain no longer writes is a change too.
        written = {f"{t}{'.npy' if p.suffix == '.npy' else '.parquet'}" for t, p in tables.items()}
        problems += [f"{name}/{f.name}: recorded but no longer written"
                     for f in sorted(folder.glob("*")) if f.name not in written]
    return problems


FIXED_MTIME_NS = 1_700_000_000_000_000_000  # the manifest records each input's mtime: pin it


def copy_inputs(root: Path) -> tuple[Path, Path]:
    """The first PER_CLASS rows of each class of sample_data/, copied with a fixed mtime."""
    from conftest import SAMPLE_DATA, small_sample_rows

    rows = small_sample_rows(PER_CLASS)
    for rel in rows["path"]:
        dst = root / "images" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SAMPLE_DATA / "images" / rel, dst)
        os.utime(dst, ns=(FIXED_MTIME_NS, FIXED_MTIME_NS))
    rows.to_csv(root / "labels.csv", index=False)
    return root / "images", root / "labels.csv"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("golden")
    images, labels = copy_inputs(root / "in")
    ws = Workspace(root / "prep")
    run_prepare(images, ws, labels_file=labels, device="cpu", image_size=32, workers=1)
    return ws.root


def test_prepare_writes_the_recorded_tables(prepared):
    ws = Workspace(prepared)
    tables = {"manifest": ws.manifest, "store": ws.store}
    if ws.rejects.exists():
        tables["rejects"] = ws.rejects
    assert check("prepare", tables) == []


@pytest.mark.parametrize("name", list(CONFIGS))
def test_train_audit_export_write_the_recorded_tables(prepared, tmp_path, name):
    root = tmp_path / name
    shutil.copytree(prepared, root)
    ws = Workspace(root)
    s = run_train(ws, TrainConfig(**{**BASE, **CONFIGS[name]}))
    run_audit(ws, write_report=False)
    run_export(ws, root / "cleaned.parquet")
    tables = {f: s.run_dir / f"{f}.parquet" for f in ("dynamics", "predictions")}
    tables.update(audit=ws.audit, cleaned=root / "cleaned.parquet")
    assert check(name, tables) == []


def test_table_comparison_catches_a_changed_flag_and_tolerates_kernel_noise():
    expected = pd.DataFrame({"sample_id": ["a", "b"], "is_label_issue": [True, False],
                             "label_score": np.array([0.25, 0.75], np.float32)})
    noisy = expected.assign(label_score=expected["label_score"] + np.float32(3e-7))
    assert table_differences(noisy, expected) == []
    flipped = expected.assign(is_label_issue=[True, True])
    assert table_differences(flipped, expected) == ["is_label_issue: 1 rows differ (row 1: True vs False)"]
    moved = expected.assign(label_score=np.array([0.25, 0.74], np.float32))
    assert len(table_differences(moved, expected)) == 1
    assert table_differences(expected.drop(columns="label_score"), expected)[0].startswith("columns differ")


def test_store_comparison_tolerates_rounding_but_not_a_shifted_crop():
    rng = np.random.default_rng(0)
    expected = rng.integers(0, 256, size=(4, 32, 32), dtype=np.uint8)
    off_by_one = expected.copy()
    off_by_one[0, 0, 0] ^= 1
    assert store_differences(off_by_one, expected) == []
    assert store_differences(np.roll(expected, 1, axis=2), expected) != []

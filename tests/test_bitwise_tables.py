"""Behaviour unchanged, bit for bit: the small chain (prepare → train → audit → export) on CPU
with a fixed seed must write the same tables as the code before the issue-21 refactor.

Each table is hashed by content: the Arrow data of every column (metadata stripped: it holds run
ids and times), and the crop store's bytes. The expected hashes were first recorded from commit
abc7066 (before the issue-21 refactor; the refactored tree gave the same tables), then again from
e0d60d4's unchanged code when a fresh install (numpy 2.4.6, pandas 3.1.1, pillow 13.0.0, pyarrow
26.0.1, torch 2.14.1) wrote other floats than the install they were first recorded with: the
hashes hold for one set of package versions. The audit's hashes changed once more when it gained the
column retrain_p_given; without that column the tables hash as before.
Torch's CPU reductions depend on the thread count (1 and 2 threads give different floats, both
repeatable), so the chain runs with torch pinned to one thread.
A change that alters a single float in any table fails this test; if a change is meant to alter
the tables, re-record the hashes in the same commit and say why in its message.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fercure.stages.audit import run_audit
from fercure.stages.export import run_export
from fercure.stages.prepare import run_prepare
from fercure.stages.train import run_train
from fercure.train.config import TrainConfig
from fercure.workspace import Workspace

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

EXPECTED: dict[str, dict[str, str]] = {
    "prepare": {
        "manifest": "b886b2fb69d37f9a",
        "store": "d5e3c82ce63bde93",
        "rejects": "d6d9729b4495987e"
    },
    "plain": {
        "dynamics": "c1974cffda0e922e",
        "predictions": "59dea4873072bdf6",
        "audit": "eac82e8f14e98f13",
        "cleaned": "cb33d5a8d98cc943"
    },
    "parts": {
        "dynamics": "b2c8083144bee4f2",
        "predictions": "6e11e65a0b2ac7a2",
        "audit": "3afc0ad12d1feccb",
        "cleaned": "fdf11be6f6b9f9b2"
    },
    "folds": {
        "dynamics": "4440026fc06b66f8",
        "predictions": "4140e76d1674d7fa",
        "audit": "5a82595cdd301a7d",
        "cleaned": "4a3ad4f59d0011c9"
    }
}  # from e0d60d4's code, CPU, 1 thread


def table_hash(path: Path) -> str:
    """sha256 of a Parquet table's columns and data, without its key-value metadata."""
    table = pq.read_table(path).replace_schema_metadata(None)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue()).hexdigest()[:16]


def array_hash(path: Path) -> str:
    a = np.load(path, mmap_mode="r")
    return hashlib.sha256(str((a.shape, a.dtype)).encode() + np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def prepare(root: Path, images: Path, labels: Path) -> dict[str, str]:
    ws = Workspace(root)
    run_prepare(images, ws, labels_file=labels, device="cpu", image_size=32, workers=1)
    out = {"manifest": table_hash(ws.manifest), "store": array_hash(ws.store)}
    if ws.rejects.exists():
        out["rejects"] = table_hash(ws.rejects)
    return out


def train_audit_export(prepared: Path, root: Path, name: str) -> dict[str, str]:
    """A copy of the prepared workspace, trained with config ``name``, audited and exported."""
    shutil.copytree(prepared, root)
    ws = Workspace(root)
    s = run_train(ws, TrainConfig(**{**BASE, **CONFIGS[name]}))
    run_audit(ws, write_report=False)
    run_export(ws, root / "cleaned.parquet")
    out = {f: table_hash(s.run_dir / f"{f}.parquet") for f in ("dynamics", "predictions")}
    out["audit"] = table_hash(ws.audit)
    out["cleaned"] = table_hash(root / "cleaned.parquet")
    return out


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


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prepared(one_thread, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("bitwise")
    images, labels = copy_inputs(root / "in")
    return root / "prep", prepare(root / "prep", images, labels)


def test_prepare_tables_unchanged(prepared):
    assert prepared[1] == EXPECTED["prepare"]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_train_audit_export_tables_unchanged(prepared, tmp_path, name):
    assert train_audit_export(prepared[0], tmp_path / name, name) == EXPECTED[name]

"""The chain on 210 real faces it has never seen (FER2013 publictest, from ../shared when present)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from fercure.stages.audit import run_audit
from fercure.stages.export import run_export
from fercure.stages.prepare import run_prepare
from fercure.stages.train import run_train
from fercure.train.config import TrainConfig


def test_chain_on_210_publictest_faces(fer_benchmark: Path, tmp_path: Path):
    labels = pd.read_csv(fer_benchmark / "publictest" / "labels.csv")
    picked = labels.groupby("label").head(30)
    root = tmp_path / "input"
    (root / "images").mkdir(parents=True)
    for p in picked["path"]:
        shutil.copyfile(fer_benchmark / "publictest" / p, root / p)
    picked.to_csv(root / "labels.csv", index=False)
    before = (root / "labels.csv").read_bytes()

    ws = tmp_path / "ws"
    run_prepare(root, ws, labels_file=root / "labels.csv", device="cpu", image_size=48)
    run_train(ws, TrainConfig(epochs=1, image_size=48, batch_size=64, device="cpu"))
    run_audit(ws)
    run_export(ws, ws / "cleaned.parquet")

    manifest = pd.read_parquet(ws / "manifest.parquet")
    audit = pd.read_parquet(ws / "audit.parquet")
    cleaned = pd.read_parquet(ws / "cleaned.parquet")
    assert len(picked) == 210
    for table in (manifest, audit, cleaned):
        assert len(table) == 210 and table["sample_id"].is_unique
    by_path = picked.set_index("path")["label"]
    assert (cleaned.set_index("source_path")["given_label"].reindex(by_path.index) == by_path).all()
    assert (manifest.set_index("source_path")["label"].reindex(by_path.index) == by_path).all()
    assert (root / "labels.csv").read_bytes() == before

"""train --soft-labels: each image's vote distribution as its training target (tiny, CPU)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import make_small_workspace
from fercure import schema
from fercure.stages.train import run_train
from fercure.train.config import TrainConfig
from fercure.workspace import WorkspaceError, read_table, write_table

CLASSES = ["happy", "neutral", "sad"]


def cfg(**kw) -> TrainConfig:
    base = dict(backbone="test_resnet", image_size=24, epochs=8, batch_size=16, device="cpu", lr=3e-3,
                holdout=0.0, plant_rate=0.0, retrain=False, knn=0, label_smoothing=0.0)
    base.update(kw)
    return TrainConfig(**base)


def _votes(ws, split: float) -> None:
    """Happy images: ``split`` of their votes neutral, the rest happy; the others one vote for their label."""
    m = read_table(ws.manifest)
    rows = []
    for sid, path, label in zip(m["sample_id"], m["source_path"], m["label"]):
        if label == "happy":
            rows += [(sid, path, "", "happy", 10 * (1 - split), 2), (sid, path, "", "neutral", 10 * split, 2)]
        else:
            rows.append((sid, path, "", label, 1.0, 2))
    write_table(pd.DataFrame(rows, columns=["sample_id", "source_path", "annotator", "label", "votes", "row"]),
                ws.annotations, {"classes": CLASSES}, table=schema.ANNOTATIONS)


def _p_neutral_on_happy(summary) -> float:
    pred = read_table(summary.run_dir / "predictions.parquet")
    return float(pred.loc[pred["given_label"] == "happy", "p_neutral"].mean())


def test_soft_labels_learn_the_vote_distribution(tmp_path):
    ws, _ = make_small_workspace(tmp_path / "ws", 60, 24, CLASSES)
    _votes(ws, 0.4)
    soft = run_train(ws, cfg(soft_labels=True))
    hard = run_train(ws, cfg())
    assert "votes" in soft.parts and "votes" not in hard.parts
    # the happy images' targets put 0.4 on neutral: the soft model learns that share, the hard one does not
    assert _p_neutral_on_happy(soft) > 0.25
    assert _p_neutral_on_happy(hard) < _p_neutral_on_happy(soft) - 0.15


def test_soft_labels_without_votes_say_what_is_missing(tmp_path):
    ws, _ = make_small_workspace(tmp_path / "ws", 12, 24, CLASSES)
    with pytest.raises(WorkspaceError, match="--soft-labels learns from several annotators' votes"):
        run_train(ws, cfg(soft_labels=True, epochs=1))

"""Training dynamics → tables.

Per sample and epoch the loop records, from the training forward pass (augmented, as dataset
cartography does): p(given label), margin p(given) − max other p, SCN α, the argmax, the current
label after that epoch's relabelling, and whether SCN relabelled it in that epoch. This module
turns those (E,N) arrays into dynamics.parquet rows and the per-sample summaries of
predictions.parquet (mean/variance of p(given) over epochs = cartography confidence/variability,
area under the margin = AUM).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

DYNAMICS_COLUMNS = ["sample_id", "member", "epoch", "given_index", "current_index", "p_given",
                    "margin", "importance_weight", "predicted", "relabeled"]


def dynamics_frame(sample_ids: Sequence[str], given_index: np.ndarray, dynamics: dict[str, np.ndarray],
                   member: int) -> pd.DataFrame:
    """Long table: one row per sample per epoch for one ensemble member (epoch-major order)."""
    e, n = dynamics["p_given"].shape
    ids = np.asarray(sample_ids, dtype=object)
    return pd.DataFrame({
        "sample_id": np.tile(ids, e),
        "member": np.full(e * n, member, dtype=np.int32),
        "epoch": np.repeat(np.arange(e, dtype=np.int32), n),
        "given_index": np.tile(np.asarray(given_index, dtype=np.int32), e),
        "current_index": dynamics["current_index"].reshape(-1).astype(np.int32),
        "p_given": dynamics["p_given"].reshape(-1).astype(np.float32),
        "margin": dynamics["margin"].reshape(-1).astype(np.float32),
        "importance_weight": dynamics["alpha"].reshape(-1).astype(np.float32),
        "predicted": dynamics["predicted"].reshape(-1).astype(np.int32),
        "relabeled": dynamics["relabeled"].reshape(-1).astype(bool),
    }, columns=DYNAMICS_COLUMNS)


def summarize(members: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-sample summaries over all epochs of all given members' (E,N) dynamics.

    mean_p_given : mean over epochs (and members) of p(given) — cartography confidence.
    var_p_given : variance over epochs (and members) of p(given) — cartography variability².
    aum : mean over epochs (and members) of p(given) − max other p — area under the margin.
    last_p_given : mean over members of the last epoch's p(given).
    importance_weight : mean over members of the last epoch's α.
    """
    p = np.concatenate([m["p_given"] for m in members], axis=0).astype(np.float64)
    margin = np.concatenate([m["margin"] for m in members], axis=0).astype(np.float64)
    return {
        "mean_p_given": p.mean(axis=0),
        "var_p_given": p.var(axis=0),
        "aum": margin.mean(axis=0),
        "last_p_given": np.mean([m["p_given"][-1] for m in members], axis=0),
        "importance_weight": np.mean([m["alpha"][-1] for m in members], axis=0),
    }


def majority_labels(label_sets: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Per-sample majority over members' final labels (ties → lowest class index)."""
    stacked = np.stack(label_sets)  # (M,N)
    counts = np.zeros((num_classes, stacked.shape[1]), dtype=np.int64)
    for row in stacked:
        np.add.at(counts, (row, np.arange(stacked.shape[1])), 1)
    return counts.argmax(axis=0)


def predictions_frame(sample_ids: Sequence[str], classes: Sequence[str], given_index: np.ndarray, *,
                      probs: np.ndarray, mean_probs: np.ndarray, signals: dict[str, np.ndarray],
                      relabel_count: np.ndarray, scn_index: np.ndarray, reliability: np.ndarray,
                      rel_probs: np.ndarray, entropy: np.ndarray, mutual_info: np.ndarray,
                      oof_p_given: np.ndarray) -> pd.DataFrame:
    """predictions.parquet, columns in the order of docs/ARCHITECTURE.md. ``signals`` are the
    per-sample columns of ``fercure.train.detection.aggregate`` (about the given label)."""
    given_index = np.asarray(given_index, dtype=np.int64)
    cls = np.asarray(classes, dtype=object)
    n = len(given_index)

    def f32(name: str) -> np.ndarray:
        v = signals.get(name)
        return np.full(n, np.nan, np.float32) if v is None else np.asarray(v, dtype=np.float32)

    cols: dict[str, np.ndarray] = {
        "sample_id": np.asarray(sample_ids, dtype=object),
        "given_label": cls[given_index],
        "given_index": given_index,
    }
    for prefix, dist in (("p", probs), ("mean_p", mean_probs)):
        for j, name in enumerate(classes):
            cols[f"{prefix}_{name}"] = dist[:, j].astype(np.float32)
    for name in ("mean_p_given", "var_p_given", "aum", "last_p_given", "importance_weight"):
        cols[name] = f32(name)
    cols.update({
        "relabel_count": np.asarray(relabel_count, dtype=np.int64),
        "scn_label": cls[np.asarray(scn_index, dtype=np.int64)],
        "reliability": np.asarray(reliability, dtype=np.float32),
    })
    for j, name in enumerate(classes):
        cols[f"rel_p_{name}"] = rel_probs[:, j].astype(np.float32)
    cols.update({
        "uncertainty_entropy": np.asarray(entropy, dtype=np.float32),
        "uncertainty_mutual_info": np.asarray(mutual_info, dtype=np.float32),
        "oof_p_given": np.asarray(oof_p_given, dtype=np.float32),
    })
    for name in ("forgetting", "knn_agreement", "fusion_quality", "retrain_p_given", "mean_p_given_eval",
                 "fine_alignment"):
        cols[name] = f32(name)
    for prefix, key in (("knn_p", "knn_probs"), ("retrain_p", "retrain_probs")):
        dist = signals.get(key)
        for j, name in enumerate(classes):
            cols[f"{prefix}_{name}"] = (np.full(n, np.nan, np.float32) if dist is None
                                        else dist[:, j].astype(np.float32))
    for name in ("retrain_held_out", "retrain_suspect", "planted", "probe"):
        v = signals.get(name)
        cols[name] = np.zeros(n, bool) if v is None else np.asarray(v, dtype=bool)
    return pd.DataFrame(cols)

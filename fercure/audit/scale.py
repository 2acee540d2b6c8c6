"""One scale for every row: the trained rows' in-sample scores, the probe's and the planted rows'
held-out ones, put on the trained rows' scale by rank."""

from __future__ import annotations

import numpy as np
import pandas as pd

# Which estimator scored a row's given label (``fercure.train.detection.GROUPS``): the trained rows'
# in-sample dynamics, the probe's held-out view, the planted rows' second-model held-out view.
GROUPS = ("trained", "probe", "planted")


def estimator_groups(predictions: pd.DataFrame) -> np.ndarray:
    """(n,) index into ``GROUPS`` from the predictions' ``probe`` and ``planted`` columns (all
    ``trained`` when the run has neither)."""
    n = len(predictions)

    def flag(name: str) -> np.ndarray:
        return predictions[name].fillna(False).to_numpy(dtype=bool) if name in predictions.columns else np.zeros(n, bool)

    return np.where(flag("probe"), 1, np.where(flag("planted"), 2, 0)).astype(np.int64)


def align_groups(score: np.ndarray, group: np.ndarray, reference: int = 0) -> np.ndarray:
    """Put every group's scores on the reference group's scale by rank.

    A row of another group gets the reference group's score at the row's quantile within its own
    group (mid-rank (i + 0.5) / m). The probe and the planted rows are drawn at random (the probe
    stratified by class), so each group holds about the same share of wrong labels as the rest;
    their estimators are harsher (held out) than the trained rows' in-sample one, so their raw
    scores would crowd the bottom of the list. The order within each group is unchanged; the
    reference group's scores are returned as they are. NaN stays NaN; a group is left as it is
    when the reference has no finite score.
    """
    score = np.asarray(score, dtype=float)
    group = np.asarray(group)
    out = score.copy()
    ref = np.sort(score[(group == reference) & np.isfinite(score)])
    if len(ref) == 0:
        return out
    for g in np.unique(group):
        if g == reference:
            continue
        idx = np.flatnonzero((group == g) & np.isfinite(score))
        if len(idx) == 0:
            continue
        ranks = pd.Series(score[idx]).rank(method="average").to_numpy() - 0.5
        out[idx] = np.quantile(ref, ranks / len(idx))
    return out

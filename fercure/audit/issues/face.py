"""The face stage's issues, from the manifest alone (no run needed): a near-duplicate, no face found,
a blurry crop, a file that could not be decoded."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from fercure.audit.issues.base import IssueColumns, IssueInputs, RowIssue, RowView, register_issue


def sharpness_rank(sharpness: np.ndarray) -> np.ndarray:
    """``blur_score`` in 0..1, low = blurrier: the share of the dataset's crops that are blurrier
    than this one (ties share their mean rank). The raw measure's scale depends on crop size and
    content, so the score is relative to the dataset, like the blur cut. NaN where no crop."""
    b = np.asarray(sharpness, dtype=float)
    out = np.full(len(b), np.nan)
    ok = np.isfinite(b)
    n = int(ok.sum())
    if n == 1:
        out[ok] = 1.0
    elif n > 1:
        out[ok] = (pd.Series(b[ok]).rank(method="average").to_numpy() - 1.0) / (n - 1)
    return out


def blur_issues(sharpness: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, float]:
    """Flag blurry crops: ``sharpness`` (the manifest's variance of the Laplacian, higher = sharper)
    below ``threshold``.

    Without a threshold, a robust low-outlier cut on log1p(sharpness) is used: median − 3 × 1.4826
    × MAD, i.e. about 3 standard deviations below typical sharpness for this dataset, whatever the
    scale of the measure and the crop size.

    Returns
    -------
    is_issue : ndarray (n,) of bool (False where the score is NaN)
    threshold : float (NaN when there are no scores)
    """
    b = np.asarray(sharpness, dtype=float)
    ok = np.isfinite(b)
    if threshold is None:
        if ok.sum() < 2:
            return np.zeros(len(b), bool), math.nan
        lb = np.log1p(np.clip(b[ok], 0, None))
        med = np.median(lb)
        spread = np.median(np.abs(lb - med)) * 1.4826
        if spread == 0:  # over half the crops share one value: fall back to the standard deviation
            spread = float(np.std(lb))
        threshold = float(np.expm1(med - 3 * spread)) if spread > 0 else -math.inf
    return ok & (b < threshold), float(threshold)


@register_issue
class DuplicateIssue(RowIssue):
    name = "duplicate"
    title = "duplicate"
    about = "a near-duplicate of another sample (prepare's perceptual hash)"

    def columns(self, x: IssueInputs) -> IssueColumns:
        hit = (x.text("face_status", "ok") == "duplicate") | (x.text("duplicate_of") != "")
        return IssueColumns({"is_duplicate_issue": hit, "duplicate_score": np.where(hit, 0.0, 1.0)})


@register_issue
class NoFaceIssue(RowIssue):
    name = "no_face"
    title = "no face"
    about = "the detector found no face"

    def columns(self, x: IssueInputs) -> IssueColumns:
        hit = x.text("face_status", "ok") == "no_face"
        return IssueColumns({"is_no_face_issue": hit,
                             "no_face_score": np.where(hit, 0.0, np.nan_to_num(x.number("face_score"), nan=0.0))})


@register_issue
class BlurIssue(RowIssue):
    name = "blur"
    title = "blurry"
    quality = True
    about = ("sharpness (variance of the Laplacian) below {cut}, about 3 robust standard deviations under this "
             "dataset's typical crop")

    def describe(self, stats: Mapping[str, Any]) -> str:
        cut = stats.get("blur_threshold")
        return self.about.format(cut="–" if cut is None else f"{cut:.1f}")

    def columns(self, x: IssueInputs) -> IssueColumns:
        sharpness = x.number("sharpness")
        hit, cut = blur_issues(sharpness, x.blur_threshold)
        return IssueColumns({"blur_score": sharpness_rank(sharpness), "is_blur_issue": hit},
                            stats={"blur_threshold": None if not np.isfinite(cut) else float(cut)})

    def reason(self, row: RowView, stats: Mapping[str, Any]) -> str | None:
        cut = stats.get("blur_threshold")
        return f"blurry: sharpness {row.values['sharpness']:.1f} < {math.nan if cut is None else cut:.1f}"


@register_issue
class UnreadableIssue(RowIssue):
    name = "unreadable"
    title = "unreadable"
    about = "the file could not be decoded"

    def columns(self, x: IssueInputs) -> IssueColumns:
        hit = x.text("face_status", "ok") == "unreadable"
        return IssueColumns({"unreadable_score": np.where(hit, 0.0, 1.0), "is_unreadable_issue": hit})

"""Outliers in the user's --features embedding (``fercure.outliers``): a row far from its nearest
neighbours, against its class's typical distance. NaN score and no issue without --features."""

from __future__ import annotations

import numpy as np

from fercure.audit.issues.base import IssueColumns, IssueInputs, RowIssue, register_issue


@register_issue
class OutlierIssue(RowIssue):
    name = "outlier"
    title = "outlier"
    section = "features"
    about = ("distance to the nearest neighbours in the --features embedding against the class's typical "
             "distance")

    def columns(self, x: IssueInputs) -> IssueColumns:
        n = len(x.manifest)
        score, hit = np.full(n, np.nan), np.zeros(n, bool)
        fs = x.features
        if fs is not None:
            score[fs.positions], hit[fs.positions] = fs.outliers.score, fs.outliers.is_issue
        return IssueColumns({"outlier_score": score, "is_outlier_issue": hit})

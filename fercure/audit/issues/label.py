"""The run's two issues about a label: it is likely wrong (``label``), or the model cannot tell
between two classes (``ambiguous``). The label issue's reason is its threshold rule's
(``fercure.audit.rules``)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from fercure.audit.issues.base import IssueColumns, IssueInputs, RowIssue, RowView, register_issue


@register_issue
class LabelIssue(RowIssue):
    name = "label"
    title = "label issue"
    section = "label"
    image_problem = False
    about = "the given label is likely wrong (the --threshold-method rule on the --score signal)"

    def columns(self, x: IssueInputs) -> IssueColumns:
        return IssueColumns({"label_score": x.label.score, "is_label_issue": x.label.is_issue})


@register_issue
class AmbiguousIssue(RowIssue):
    name = "ambiguous"
    title = "ambiguous"
    section = "label"
    image_problem = False
    about = "the top two classes of the suggestion distribution are too close to tell"

    @property
    def stats_key(self) -> str:
        return "n_ambiguous"

    def columns(self, x: IssueInputs) -> IssueColumns:
        return IssueColumns({"ambiguous_score": np.clip(x.label.ambiguous_gap, 0, 1),
                             "is_ambiguous_issue": x.label.is_ambiguous})

    def reason(self, row: RowView, stats: Mapping[str, Any]) -> str | None:
        order = np.argsort(-row.probs)
        a, b = order[0], order[1]
        return f"ambiguous: {row.classes[a]} {row.probs[a]:.2f} vs {row.classes[b]} {row.probs[b]:.2f}"

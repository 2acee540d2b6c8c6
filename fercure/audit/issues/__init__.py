"""The per-row issue types of the audit, registered in the order their columns appear (see ``base``).
A new issue: one module here with a ``@register_issue`` class, and its import line below."""

from fercure.audit.issues.base import (ISSUES, IssueColumns, IssueInputs, LabelVerdict, RowIssue, RowView,
                                       issues_in, register_issue)
from fercure.audit.issues import label  # noqa: F401  label, ambiguous
from fercure.audit.issues import face  # noqa: F401  duplicate, no_face, blur, unreadable
from fercure.audit.issues import exposure  # noqa: F401  dark, bright, low_contrast
from fercure.audit.issues import outlier  # noqa: F401  outlier

__all__ = ["ISSUES", "IssueColumns", "IssueInputs", "LabelVerdict", "RowIssue", "RowView", "issues_in",
           "register_issue"]

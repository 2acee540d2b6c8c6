"""Exposure issues of a crop, from prepare's grey mean and spread (the cuts and scores are
``fercure.exposure``'s): too dark, too bright, low contrast."""

from __future__ import annotations

from fercure import exposure
from fercure.audit.issues.base import IssueColumns, IssueInputs, RowIssue, register_issue


class _Exposure(RowIssue):
    quality = True

    def columns(self, x: IssueInputs) -> IssueColumns:
        b, c = x.number("brightness"), x.number("contrast")
        return IssueColumns({self.flag_column: exposure.exposure_issues(b, c)[self.name],
                             self.score_column: exposure.exposure_scores(b, c)[self.name]})


@register_issue
class DarkIssue(_Exposure):
    name = "dark"
    title = "too dark"
    about = f"mean grey level below {exposure.TOO_DARK:g} (0–255)"


@register_issue
class BrightIssue(_Exposure):
    name = "bright"
    title = "too bright"
    about = f"mean grey level above {exposure.TOO_BRIGHT:g} (0–255)"


@register_issue
class LowContrastIssue(_Exposure):
    name = "low_contrast"
    title = "low contrast"
    about = f"grey standard deviation below {exposure.LOW_CONTRAST:g} (0–255)"

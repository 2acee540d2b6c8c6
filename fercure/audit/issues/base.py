"""Per-row issue types, as cleanlab's Datalab issue managers: each one a class that reads what the
audit knows of a row (``IssueInputs``) and yields its ``is_<name>_issue`` / ``<name>_score`` columns
(score in 0..1, low = worse), its count in the audit's stats, the sentence it adds to a flagged row's
reason, and its words in the terminal and on the page.

A new issue is one module with one ``RowIssue`` subclass decorated with ``@register_issue`` and one
import line in ``fercure/audit/issues/__init__.py``; the audit table, its stats, the terminal summary,
the export's issue counts and the page's image-quality table pick it up from ``ISSUES``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping

import numpy as np
import pandas as pd

from fercure.audit.frames import number_column, text_column

# Where an issue's columns sit in the audit table: beside the label score (from the run), after the
# face stage's columns (from the manifest), or after those (from the user's --features).
Section = Literal["label", "image", "features"]


@dataclass(frozen=True)
class LabelVerdict:
    """The run's verdict on each manifest row (manifest order; NaN / False where not scored)."""

    score: np.ndarray  # label_score
    is_issue: np.ndarray  # the threshold rule's flags
    ambiguous_gap: np.ndarray  # p(top) − p(second) of the suggestion distribution
    is_ambiguous: np.ndarray


@dataclass(frozen=True)
class IssueInputs:
    """What an issue may read. ``label`` is None for issues that need no run; ``features`` is the
    user's --features neighbours (``fercure.evidence.FeatureSignals``) or None."""

    manifest: pd.DataFrame
    blur_threshold: float | None = None
    label: LabelVerdict | None = None
    features: Any = None

    def text(self, name: str, fill: str = "") -> np.ndarray:
        """A manifest column as strings (``fill`` where absent or null)."""
        return text_column(self.manifest, name, fill)

    def number(self, name: str, fill: float = np.nan) -> np.ndarray:
        """A manifest column as floats (``fill`` where absent or not a number)."""
        return number_column(self.manifest, name, fill)


@dataclass(frozen=True)
class RowView:
    """One audit row as a reason reads it: its values by column, its class distribution."""

    values: Mapping[str, Any]
    probs: np.ndarray  # (K,) p_<class>
    classes: list[str]


@dataclass
class IssueColumns:
    """An issue's columns in table order, and what its stats record beside the count."""

    columns: dict[str, np.ndarray]
    stats: dict[str, Any] = field(default_factory=dict)


class RowIssue:
    """One per-row issue type. Set the class attributes and ``columns``; ``reason`` is optional."""

    name: ClassVar[str]
    title: ClassVar[str]  # a few words, as a chip or a table row says it ("too dark")
    section: ClassVar[Section] = "image"
    # the image is the problem, not the label: a reviewer's drop of such a row says nothing of its label
    image_problem: ClassVar[bool] = True
    # counted in the page's "image quality" table and filter (the face stage's own problems are not)
    quality: ClassVar[bool] = False
    about: ClassVar[str] = ""  # one sentence on how it is measured (the page prints it)

    @property
    def flag_column(self) -> str:
        return f"is_{self.name}_issue"

    @property
    def score_column(self) -> str:
        return f"{self.name}_score"

    @property
    def stats_key(self) -> str:
        return f"n_{self.name}_issues"

    def columns(self, x: IssueInputs) -> IssueColumns:
        raise NotImplementedError(f"{type(self).__name__} must yield its columns")

    def reason(self, row: RowView, stats: Mapping[str, Any]) -> str | None:
        """The sentence a flagged row's reason adds (None: the flag speaks for itself)."""
        return None

    def describe(self, stats: Mapping[str, Any]) -> str:
        """How it is measured, with the audit's numbers where it has some (the page prints it)."""
        return self.about


ISSUES: dict[str, RowIssue] = {}


def register_issue(cls: type[RowIssue]) -> type[RowIssue]:
    """Add an issue type to every audit (its columns, stats, reasons and words)."""
    ISSUES[cls.name] = cls()
    return cls


def issues_in(section: Section) -> list[RowIssue]:
    """The registered issues whose columns sit in ``section``, in registration order."""
    return [i for i in ISSUES.values() if i.section == section]

"""The threshold rules: which rows' labels are issues, decided from the scores (``Scored``) without
ground truth.

A rule is an object that carries everything the rest of fercure says about it: its name, a one-line
summary (the report's header), what kind of cut it is (``cut``: the charts draw a line only for a cut
on the label score), the rule that decides when this one cannot (``hands_over_to``), and the sentence
a flagged row's reason gives. The report and the table read these; nothing switches on a rule's name.
A new rule is one ``ThresholdRule`` subclass with ``@register_rule``.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar, Literal, Mapping

import numpy as np
import pandas as pd

from fercure.audit import counting as cnt

# The default, chosen by the label-noise benchmark (benchmarks/RESULTS.md); every entry point reads it here.
DEFAULT_THRESHOLD = "retrain"

# What a rule's cut is: per class on the label score (a count, lowest scores first), one cut on the
# label score, per-class thresholds on p(given) (not on the score), or no cut at all (a vote).
CutKind = Literal["class_score", "score", "class_probability", "none"]
SCORE_CUTS = ("class_score", "score")


@dataclass
class Scored:
    """What the threshold rules read: the rows' scores on one scale and the distributions."""

    quality: np.ndarray  # label_score (n,), one scale (``fercure.audit.scale.align_groups``)
    probs: np.ndarray  # the audit distribution (n, K)
    given: np.ndarray  # (n,) class index
    group: np.ndarray  # (n,) estimator group
    predictions: pd.DataFrame
    classes: list[str]
    tiebreak: np.ndarray  # manifest position
    run_meta: Mapping
    error_share: float = math.nan  # the share of wrong labels the run uses (``reviewed.calibration_stats``)

    # The rule and the verdict's provenance both read these: computed once per audit.
    @cached_property
    def cj(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Class thresholds, confident joint (on the trained rows), calibrated per-class counts, class sizes."""
        k = len(self.classes)
        ref = self.reference_rows
        t = cnt.per_class_thresholds(self.probs[ref], self.given[ref], k)
        joint = cnt.confident_joint(self.probs[ref], self.given[ref], t, k)
        sizes = np.bincount(self.given[np.isfinite(self.probs).all(axis=1)], minlength=k)
        return t, joint, cnt.noise_rate_counts(joint, sizes), sizes

    @cached_property
    def mixture(self) -> cnt.MixtureFit:
        return cnt.fit_two_component_mixture(self.quality)

    @property
    def reference_rows(self) -> np.ndarray:
        """Rows the confident joint is counted on: the trained rows (one estimator); all rows when none."""
        ref = self.group == 0
        return ref if ref.any() else np.ones(len(self.group), bool)

    def class_counts(self, is_issue: np.ndarray) -> np.ndarray:
        return np.bincount(self.given[is_issue], minlength=len(self.classes))


@dataclass
class Flags:
    """A threshold rule's decision."""

    is_issue: np.ndarray  # (n,) bool
    rule: str  # the rule that decided (a rule may hand over to another)
    counts: np.ndarray  # (K,) flagged per class
    cut: np.ndarray | None  # (K,) per-class score cut, or None when the rule is not a cut on the score
    global_cut: float | None = None  # one cut for every class (mixture)


@dataclass(frozen=True)
class FlaggedRow:
    """The numbers a flagged row's reason quotes."""

    given: str
    suggested: str
    confidence: float  # the suggestion's
    score: float  # label_score
    p_given: float
    class_threshold: float  # the confident joint's threshold of the given class
    confident_class: str | None  # the confident joint's other class (None: none cleared its threshold)
    p_confident: float
    confident_threshold: float
    class_count: int  # the rule's count of wrong labels in the given class
    class_cut: float  # the rule's score cut in the given class (NaN: none)
    global_cut: float  # the mixture's cut

    def alternative(self) -> str:
        return (f"suggested {self.suggested} ({self.confidence:.2f})" if self.suggested != self.given
                else f"p({self.given}) is still the largest, so no other label is suggested")


class ThresholdRule(abc.ABC):
    """One way to decide ``is_label_issue``. Subclasses set the class attributes and the two methods."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for the report's header; ``{cut}`` stands for the global cut
    cut: ClassVar[CutKind]
    chart_note: ClassVar[str]  # what the score histogram says of the rule
    hands_over_to: ClassVar[str | None] = None
    # "inputs": the run lacks what the rule reads, and the stats record the rule that decided as the
    # method; "fit": the data made the rule's fit unusable, and the method stays as asked
    hand_over: ClassVar[Literal["inputs", "fit"]] = "inputs"
    reads: ClassVar[str] = ""  # what of a run it reads beyond the scores ("a second model")

    @abc.abstractmethod
    def flag(self, s: Scored) -> Flags:
        """The rows this rule flags (or the decision of the rule it hands over to)."""

    @abc.abstractmethod
    def reason(self, r: FlaggedRow) -> str:
        """The sentence a flagged row's reason starts with."""

    @property
    def needs_run(self) -> bool:
        """Hands over when the run lacks what it reads (and always without a run)."""
        return self.hands_over_to is not None and self.hand_over == "inputs"

    @property
    def draws_score_cut(self) -> bool:
        return self.cut in SCORE_CUTS

    def class_cuts(self, flags: Flags, class_thresholds: np.ndarray) -> np.ndarray:
        """The threshold the per-class table shows for each class (NaN: this rule has none per class)."""
        if flags.cut is not None:
            return flags.cut
        if self.cut == "class_probability":
            return class_thresholds
        return np.full(len(class_thresholds), np.nan)

    def table_heading(self) -> str:
        return "confident-joint threshold" if self.cut == "class_probability" else "label score cut"

    def header(self, global_cut: str) -> str:
        return self.summary.format(cut=global_cut)

    def _hand_over(self, s: Scored) -> Flags:
        return RULES[self.hands_over_to].flag(s)


RULES: dict[str, ThresholdRule] = {}


def register_rule(cls: type[ThresholdRule]) -> type[ThresholdRule]:
    """Make a rule choosable by its name (``--threshold-method``, ``build_audit(threshold_method=...)``)."""
    RULES[cls.name] = cls()
    return cls


@register_rule
class Retrain(ThresholdRule):
    name = "retrain"
    summary = "a second model trained without the most suspect share scores that share held out"
    cut = "none"
    chart_note = "a second model's held-out vote, not a cut on this score"
    hands_over_to = "noise_rate"
    reads = "a second model trained without the suspects"

    def flag(self, s: Scored) -> Flags:
        issue = cnt.find_label_issues_retrain(s.predictions, s.classes, s.given)
        if issue is None:
            return self._hand_over(s)  # a run without the retrain: the confident joint counts
        return Flags(issue, self.name, s.class_counts(issue), None)

    def reason(self, r: FlaggedRow) -> str:
        return (f"label issue: among the most suspect of its group (label_score {r.score:.2f}), "
                f"and a second model that never trained on it predicts another class; {r.alternative()}")


@register_rule
class NoiseRate(ThresholdRule):
    name = "noise_rate"
    summary = "per class, the confident joint's count of wrong labels, lowest score first"
    cut = "class_score"
    chart_note = "a per-class count, lowest scores first (cuts per class)"
    estimate = "the confident joint"  # whose count of wrong labels the reason names

    def flag(self, s: Scored) -> Flags:
        return self._flag_counts(s, s.cj[2])

    def _flag_counts(self, s: Scored, counts: np.ndarray) -> Flags:
        issue, cut = cnt.find_label_issues_noise_rate(s.quality, s.given, counts, tiebreak=s.tiebreak)
        return Flags(issue, self.name, counts, cut)

    def reason(self, r: FlaggedRow) -> str:
        return (f"label issue: label_score {r.score:.2f} is among the {r.class_count} lowest of class {r.given} "
                f"({self.estimate}'s estimate of its wrong labels; class cut {r.class_cut:.2f}); {r.alternative()}")


@register_rule
class Planted(NoiseRate):
    """Flag as many rows as the run's error-share estimate says are wrong: the reviewed rows' estimate
    when they reach across the ranks, else the planted flips' (``reviewed.calibration_stats``)."""

    name = "planted"
    summary = "per class, lowest score first, as many as the planted flips say are wrong"
    estimate = "the planted-flip"
    hands_over_to = "noise_rate"
    reads = "the run's planted flips or reviewed rows"

    def flag(self, s: Scored) -> Flags:
        if not np.isfinite(s.error_share):
            return self._hand_over(s)  # a run without planted flips: the confident joint counts
        _, _, nr, sizes = s.cj
        return self._flag_counts(s, cnt.planted_counts(s.error_share, int(np.isfinite(s.quality).sum()), nr, sizes))


@register_rule
class Mixture(ThresholdRule):
    name = "mixture"
    summary = "mixture on the label score, cut at {cut}"
    cut = "score"
    chart_note = "one cut on the score"
    hands_over_to = "confident_joint"
    hand_over = "fit"

    def flag(self, s: Scored) -> Flags:
        mix = s.mixture
        if not (mix.threshold > 0 and mix.weights[0] <= 0.5):
            return self._hand_over(s)  # degenerate, or the "low" component is the bulk of the data
        issue = np.isfinite(s.quality) & (s.quality < mix.threshold)
        return Flags(issue, self.name, s.class_counts(issue), None, global_cut=mix.threshold)

    def reason(self, r: FlaggedRow) -> str:
        return f"label issue: label_score {r.score:.2f} < mixture threshold {r.global_cut:.2f}; {r.alternative()}"


@register_rule
class ConfidentJoint(ThresholdRule):
    name = "confident_joint"
    summary = "confident joint (per-class thresholds on p(given))"
    cut = "class_probability"
    chart_note = "per-class thresholds on p(given), not on this score"

    def flag(self, s: Scored) -> Flags:
        issue, _ = cnt.find_label_issues_confident_joint(s.probs, s.given, s.cj[0])
        return Flags(issue, self.name, s.class_counts(issue), None)

    def reason(self, r: FlaggedRow) -> str:
        return (f"label issue: p({r.given})={r.p_given:.2f} < class threshold {r.class_threshold:.2f}, "
                f"p({r.confident_class})={r.p_confident:.2f} >= its threshold {r.confident_threshold:.2f}; "
                f"{r.alternative()}")


# The bundled rules in their registered order (the CLI's choices).
THRESHOLD_METHODS = tuple(RULES)

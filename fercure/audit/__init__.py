"""The audit: a run's predictions and the manifest → per-sample label scores, issue flags, suggested
labels and the statistics behind them (pure: no file I/O; ``fercure.stages.audit`` reads and writes).

One module per concern, imported in this order (each imports only those above it):

- ``signals``   the label-quality signals and the score (``SIGNAL_FUNCS``; a new signal is one entry)
- ``counting``  the confident joint, noise-rate counts, the mixture fit, the retrain's vote (the math)
- ``scale``     every estimator group's scores on the trained rows' scale
- ``bands``     suggestion confidence bands calibrated on the probe
- ``suggest``   suggested labels, ambiguity, the noise transition
- ``rules``     the threshold rules as registered objects (``RULES``; ``@register_rule``)
- ``issues``    the per-row issue types as registered objects (``ISSUES``; ``@register_issue``)
- ``reviewed``  reviewed rows: never flagged again, the error share, the strength verdicts
- ``table``     ``build_audit``: the steps in order, the table, its reasons and stats

The names below are the package's public surface.
"""

from fercure.audit.bands import (BAND_ACCURACY, BAND_NAMES, MIN_BAND_ROWS, MIN_CALIBRATION_ROWS, band_of,
                                 confidence_bands, isotonic_fit)
from fercure.audit.counting import (MixtureFit, confident_joint, find_label_issues_confident_joint,
                                    find_label_issues_noise_rate, find_label_issues_retrain,
                                    fit_two_component_mixture, noise_rate_counts, per_class_thresholds,
                                    planted_counts)
from fercure.audit.issues import ISSUES, IssueColumns, IssueInputs, RowIssue, register_issue
from fercure.audit.issues.face import blur_issues, sharpness_rank
from fercure.audit.reviewed import combine_reviewed, learnable_verdicts
from fercure.audit.rules import (DEFAULT_THRESHOLD, RULES, THRESHOLD_METHODS, Flags, Scored, ThresholdRule,
                                 register_rule)
from fercure.audit.scale import GROUPS, align_groups, estimator_groups
from fercure.audit.signals import (DEFAULT_SCORE, SIGNAL_FUNCS, SIGNALS, class_distribution, entropy,
                                   label_quality, signals_from_predictions)
from fercure.audit.suggest import (AMBIGUITY_MARGIN, AMBIGUITY_MAX_CONFIDENCE, ambiguity, noise_transition_matrix,
                                   suggest_labels)
from fercure.audit.table import build_audit

__all__ = [
    "AMBIGUITY_MARGIN", "AMBIGUITY_MAX_CONFIDENCE", "BAND_ACCURACY", "BAND_NAMES", "DEFAULT_SCORE",
    "DEFAULT_THRESHOLD", "GROUPS", "ISSUES", "MIN_BAND_ROWS", "MIN_CALIBRATION_ROWS", "RULES", "SIGNALS",
    "SIGNAL_FUNCS", "THRESHOLD_METHODS", "Flags", "IssueColumns", "IssueInputs", "MixtureFit", "RowIssue",
    "Scored", "ThresholdRule", "align_groups", "ambiguity", "band_of", "blur_issues", "build_audit",
    "class_distribution", "combine_reviewed", "confidence_bands", "confident_joint", "entropy",
    "estimator_groups", "find_label_issues_confident_joint", "find_label_issues_noise_rate",
    "find_label_issues_retrain", "fit_two_component_mixture", "isotonic_fit", "label_quality",
    "learnable_verdicts", "noise_rate_counts", "noise_transition_matrix", "per_class_thresholds",
    "planted_counts", "register_issue", "register_rule", "sharpness_rank", "signals_from_predictions",
    "suggest_labels",
]

"""Cleaning policies: the audit table → the cleaned annotation table (pure functions on DataFrames).

Every manifest sample gets exactly one row, and every row keeps its ``given_label``: the cleaned
table says what changed and why; it never silently loses a sample.

Columns
-------
sample_id, source_path, split, given_label, clean_label, action (keep | relabel | drop | review),
reason (why, with the numbers), label_score, is_label_issue, predicted_label, suggested_label,
suggested_label_confidence, ambiguous_score, is_ambiguous_issue, reliability, uncertainty_entropy,
face_status, store_index (row of WS/faces/crops.npy: the aligned crop, -1 without one), and
``p_<class>`` soft-label columns. The names are the audit's (docs/SCHEMA.md).

Rules (first match wins; "confident suggestion" = the sample is a label issue, its suggested label
differs from the given one, it is not ambiguous, and suggested_label_confidence ≥ ``min_confidence``,
default 0.5, i.e. the model puts most of its probability on the suggestion)

==========================================  ========  =====  ======  ======
situation                                   relabel   drop   flag    soft
==========================================  ========  =====  ======  ======
face problem: unreadable, duplicate, or     drop      drop   review  drop
no_face with no crop (prepare dropped it)
label issue with a confident suggestion     relabel   drop   review  review
label issue without one, ambiguous          review    drop   review  review
label issue without one, not ambiguous      drop      drop   review  review
ambiguous (not a label issue)               review    keep   review  keep
model too weak to judge (any label verdict) keep      keep   review  keep
label issue from a weak model               keep      drop   review  keep
anything else                               keep      keep   keep    keep
==========================================  ========  =====  ======  ======

"Model too weak": the audit's model-strength verdict is ``too_weak`` (``fercure.strength.verdict``: its
ranking does not beat chance clearly — the interval of its AUROC on the planted flips, or on the
reviewer's spot checks, reaches 0.5): its flags are noise, so no label is changed or dropped on their
account and the reason says so. When the verdict is ``weak`` the ranking is useful but its suggestions
are weak or unproven (the decided cards show them wrong too often, or before enough decided cards the
probe barely beats chance or the planted flips rank below 0.8): the flags are leads, not evidence, so
under ``relabel`` and ``soft`` a flagged label is kept (with a reason; the audit ranks them for a
person), ``drop`` still drops it and ``flag`` sends it to review. Measured on the CPU benchmark
(benchmarks/RESULTS.md): a weak model's confident relabels matched the annotators less often than not,
and dropping its flagged samples lowered the downstream accuracy below the raw labels'.

``clean_label``: the suggested label for ``relabel``; the given label for ``keep`` and ``review``
(unchanged until a person decides); empty (null) for ``drop``, so a consumer that trains on
clean_label cannot use a dropped row by accident.

Why relabel is this conservative: on FER2013 relabelling the flagged samples to the model's argmax
*lowered* downstream accuracy (0.663 vs 0.670 raw) while correct relabels raised it to 0.801
(benchmarks/fer2013-ferplus): a wrong relabel costs more than a kept wrong label, so a label issue
without a confident suggestion is not guessed. It is dropped (the given label is likely wrong and
no replacement is trusted) unless the sample is ambiguous, and review is kept for the ambiguous
cases a person can settle: sending every unsure flag to review made review a quarter of the
dataset on the benchmark (benchmarks/RESULTS.md), which no one reviews.

``p_<class>``: for ``relabel``, ``drop`` and ``flag`` the audit's distribution (what the model
believed; NaN for samples the run did not train). For ``soft`` they are training targets: the
model's distribution for ambiguous and review rows (ambiguity kept as soft labels), one-hot on
clean_label for the other kept rows, NaN for dropped rows. Samples the run did not train but that
have no face problem (e.g. a split training left out) are kept with a reason that says they were not
audited.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from fercure.handoff import FORMATS as HANDOFF_FORMATS
from fercure.schema import UNUSABLE_STATUSES

POLICIES = ("relabel", "drop", "flag", "soft")
FORMATS = ("parquet", "csv", "imagefolder", "hf", *HANDOFF_FORMATS)  # what export-cleaned writes (fercure.stages.export)
ACTIONS = ("keep", "relabel", "drop", "review")
FACE_DROP_STATUSES = UNUSABLE_STATUSES

BASE_COLUMNS = [
    "sample_id", "source_path", "split", "given_label", "clean_label", "action", "reason",
    "label_score", "is_label_issue", "predicted_label", "suggested_label", "suggested_label_confidence",
    "ambiguous_score", "is_ambiguous_issue", "reliability", "uncertainty_entropy", "face_status",
    "store_index",
]

# Carried from the audit as they are (absent from audits written before them).
CARRIED_COLUMNS = ("evidence", "is_outlier_issue", "is_dark_issue", "is_bright_issue", "is_low_contrast_issue",
                   "outlier_score")

# action per policy for each situation, in the order of the rules table
_RULES = {
    "face": {"relabel": "drop", "drop": "drop", "flag": "review", "soft": "drop"},
    "issue_confident": {"relabel": "relabel", "drop": "drop", "flag": "review", "soft": "review"},
    "issue_unsure": {"relabel": "review", "drop": "drop", "flag": "review", "soft": "review"},
    "issue_unsure_clear": {"relabel": "drop", "drop": "drop", "flag": "review", "soft": "review"},
    "ambiguous": {"relabel": "review", "drop": "keep", "flag": "review", "soft": "keep"},
    "too_weak": {"relabel": "keep", "drop": "keep", "flag": "review", "soft": "keep"},
    "weak_issue": {"relabel": "keep", "drop": "drop", "flag": "review", "soft": "keep"},
    "clean": {"relabel": "keep", "drop": "keep", "flag": "keep", "soft": "keep"},
}


def face_problem(audit: pd.DataFrame) -> np.ndarray:
    """Rows whose image cannot serve as a training sample: unreadable, a duplicate of another
    sample, or no face and no crop (prepare ran with --on-no-face drop)."""
    status = audit["face_status"].astype(str).to_numpy()
    no_crop = audit["store_index"].to_numpy() < 0 if "store_index" in audit.columns else np.zeros(len(audit), bool)
    return np.isin(status, FACE_DROP_STATUSES) | ((status == "no_face") & no_crop)


def situations(audit: pd.DataFrame, min_confidence: float = 0.5, model_verdict: str | None = None) -> np.ndarray:
    """The rules-table situation of each row (first match wins): face, too_weak (every label verdict
    when the model was too weak to judge), weak_issue (a label issue from a weak model),
    issue_confident, issue_unsure (ambiguous), issue_unsure_clear (not ambiguous), ambiguous or clean."""
    face = face_problem(audit)
    issue = audit["is_label_issue"].fillna(False).to_numpy(dtype=bool)
    amb = audit["is_ambiguous_issue"].fillna(False).to_numpy(dtype=bool)
    conf = audit["suggested_label_confidence"].to_numpy(dtype=float)
    differs = (audit["suggested_label"].astype(object).to_numpy() != audit["given_label"].astype(object).to_numpy()) \
        & audit["suggested_label"].notna().to_numpy()
    confident = issue & differs & ~amb & (np.nan_to_num(conf, nan=-1.0) >= min_confidence)
    too_weak = np.full(len(audit), model_verdict == "too_weak") & (issue | amb)
    weak_issue = np.full(len(audit), model_verdict == "weak") & issue
    return np.select(
        [face, too_weak, weak_issue, confident, issue & amb, issue, amb],
        ["face", "too_weak", "weak_issue", "issue_confident", "issue_unsure", "issue_unsure_clear", "ambiguous"],
        default="clean",
    ).astype(object)


def apply_policy(audit: pd.DataFrame, classes: Sequence[str], policy: str = "relabel", *,
                 min_confidence: float = 0.5, model_verdict: str | None = None) -> pd.DataFrame:
    """The cleaned table for ``policy`` (see the module docstring for the rules).

    Parameters
    ----------
    audit : DataFrame
        WS/audit.parquet (``fercure.audit.build_audit``'s table), one row per manifest sample.
    classes : sequence of str
        The audit's classes (for the ``p_<class>`` columns).
    policy : {"relabel", "drop", "flag", "soft"}, default "relabel"
    min_confidence : float, default 0.5
        Least suggested_label_confidence for a relabel.
    model_verdict : {"ok", "weak", "too_weak", None}
        The audit's model-strength verdict: ``too_weak`` label verdicts change nothing; ``weak``
        label issues are kept (dropped under ``drop``, reviewed under ``flag``).

    Returns
    -------
    DataFrame
        One row per audit row, in the same order; the input is not modified.

    Raises
    ------
    ValueError
        Unknown policy.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    sit = situations(audit, min_confidence, model_verdict)
    action = np.array([_RULES[s][policy] for s in sit], dtype=object)
    given = audit["given_label"].astype(str).to_numpy(dtype=object)
    suggested = audit["suggested_label"].astype(object).to_numpy()
    clean = np.where(action == "relabel", suggested, given).astype(object)
    clean[action == "drop"] = None

    out = pd.DataFrame({
        "sample_id": audit["sample_id"].to_numpy(),
        "source_path": audit["source_path"].to_numpy(),
        "split": audit["split"].to_numpy() if "split" in audit.columns else "",
        "given_label": given,
        "clean_label": clean,
        "action": action,
        "reason": _reasons(audit, sit, action, given, suggested, min_confidence),
        "label_score": audit["label_score"].to_numpy(dtype=float),
        "is_label_issue": audit["is_label_issue"].fillna(False).to_numpy(dtype=bool),
        "predicted_label": _optional(audit, "predicted_label", None),
        "suggested_label": suggested,
        "suggested_label_confidence": audit["suggested_label_confidence"].to_numpy(dtype=float),
        "ambiguous_score": _optional(audit, "ambiguous_score", np.nan).astype(float),
        "is_ambiguous_issue": audit["is_ambiguous_issue"].fillna(False).to_numpy(dtype=bool),
        "reliability": audit["reliability"].to_numpy(dtype=float),
        "uncertainty_entropy": audit["uncertainty_entropy"].to_numpy(dtype=float),
        "face_status": audit["face_status"].astype(str).to_numpy(),
        "store_index": _optional(audit, "store_index", -1).astype(np.int64),
    })
    for name in CARRIED_COLUMNS:  # the audit's other issues and evidence, when it has them
        if name in audit.columns:
            out[name] = audit[name].to_numpy()
    probs = np.column_stack([
        audit[f"p_{c}"].to_numpy(dtype=float) if f"p_{c}" in audit.columns else np.full(len(audit), np.nan)
        for c in classes
    ]) if len(classes) else np.zeros((len(audit), 0))
    if policy == "soft":
        probs = _soft_targets(probs, sit, action, clean, list(classes))
    for j, c in enumerate(classes):
        out[f"p_{c}"] = probs[:, j]
    return out


def _optional(audit: pd.DataFrame, name: str, fill) -> np.ndarray:
    """A column the rules do not need (an audit table built by hand may lack it)."""
    return audit[name].to_numpy() if name in audit.columns else np.full(len(audit), fill, dtype=object)


def _soft_targets(probs: np.ndarray, sit: np.ndarray, action: np.ndarray, clean: np.ndarray,
                  classes: list[str]) -> np.ndarray:
    """Training targets: the distribution where the label is uncertain, one-hot where it is not."""
    out = probs.copy()
    cidx = {c: i for i, c in enumerate(classes)}
    keep_hard = (action == "keep") & (sit != "ambiguous")
    for i in np.flatnonzero(keep_hard | ~np.isfinite(out).all(axis=1)):
        out[i] = np.nan
        if action[i] != "drop" and clean[i] in cidx:
            out[i] = 0.0
            out[i, cidx[clean[i]]] = 1.0
    out[action == "drop"] = np.nan
    return out


def _reasons(audit: pd.DataFrame, sit: np.ndarray, action: np.ndarray, given: np.ndarray,
             suggested: np.ndarray, min_confidence: float) -> list[str]:
    """What the policy did, then the audit's own explanation (which carries the numbers)."""
    audit_reason = audit["reason"].fillna("").astype(str).to_numpy() if "reason" in audit.columns else [""] * len(audit)
    trained = audit["trained"].to_numpy(dtype=bool) if "trained" in audit.columns else audit["label_score"].notna().to_numpy()
    conf = audit["suggested_label_confidence"].to_numpy(dtype=float)
    amb = audit["is_ambiguous_issue"].fillna(False).to_numpy(dtype=bool)
    out = []
    for i, s in enumerate(sit):
        a = action[i]
        if s == "face":
            head = f"face problem ({audit['face_status'].iat[i]})"
        elif s == "issue_confident":
            head = f"likely mislabelled: {given[i]} -> {suggested[i]} ({conf[i]:.2f} >= {min_confidence:.2f})"
        elif s in ("issue_unsure", "issue_unsure_clear"):
            if suggested[i] == given[i] or suggested[i] is None:
                why = "no other label is preferred"
            elif amb[i]:
                why = f"the suggestion {suggested[i]} is ambiguous"
            else:
                why = f"the suggestion {suggested[i]} ({conf[i]:.2f}) is below {min_confidence:.2f}"
            head = f"likely mislabelled, but {why}"
        elif s == "ambiguous":
            head = "ambiguous expression"
        elif s == "weak_issue":
            head = (f"flagged as a likely label issue (suggestion {suggested[i]}, {conf[i]:.2f}), but the model "
                    "is weak: its flags are leads, not evidence")
        elif s == "too_weak":
            head = "flagged, but the model was too weak to judge labels (see the audit's warning)"
        elif not trained[i]:
            head = "not audited"
        else:
            head = "label looks right"
        verb = {"keep": "kept", "relabel": "relabelled", "drop": "dropped", "review": "needs review"}[a]
        tail = audit_reason[i]
        out.append(f"{verb}: {head}" + (f" [{tail}]" if tail else ""))
    return out


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` for CSV: every text cell a spreadsheet would run as a formula (a file named
    ``=HYPERLINK(...).png``, a label ``+cmd``) gets a leading ``'``, which spreadsheets show as text.
    Numbers are untouched; the Parquet export keeps the values as they are."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(lambda v: "'" + v if isinstance(v, str) and v.startswith(FORMULA_START) else v)
    return out


def issue_counts(audit: pd.DataFrame) -> dict[str, int]:
    """Rows per ``is_<issue>_issue`` column of the audit, by issue name (every issue it has, zeros included)."""
    return {c[len("is_"):-len("_issue")]: int(audit[c].fillna(False).astype(bool).sum())
            for c in audit.columns if c.startswith("is_") and c.endswith("_issue")}


def evidence_counts(audit: pd.DataFrame) -> dict[str, int]:
    """Rows per value of the audit's ``evidence`` column (empty for an audit written before it)."""
    if "evidence" not in audit.columns:
        return {}
    return {str(k): int(v) for k, v in audit["evidence"].astype(str).value_counts().items()}


def action_counts(cleaned: pd.DataFrame) -> dict[str, int]:
    """How many rows took each action (every action listed, zeros included)."""
    counts = cleaned["action"].value_counts()
    return {a: int(counts.get(a, 0)) for a in ACTIONS}

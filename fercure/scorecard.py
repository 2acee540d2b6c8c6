"""Score an audit against a reference of known label errors (the demo's FER+ votes).

``scorecard`` is a pure function of three inputs: the audit table (WS/audit.parquet), a reference
table and the audit's stats (its Parquet metadata). The reference has one row per image:

  path              relative to the input root, as labels.csv and the audit's ``source_path``
  clear_error       1 when the given label is very likely wrong (FER+: ≤ 1 of 10 votes for it)
  clean             1 when it is very likely right (FER+: ≥ 5 votes)
  ferplus_majority  the label the annotators chose (empty when they did not agree on one class)

Rows that are neither clear errors nor clean are ambiguous: they count in ``n_scored`` only. A
reference without ``clear_error``/``clean`` columns gets them from ``ferplus_votes_for_label``
(≤ 1 and ≥ 5) when it has that column. The references never reach prepare or train.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from fercure.metrics import auroc as _auroc

KEYS = (
    "n_scored", "n_known_errors", "n_clean", "n_flagged", "known_errors_flagged", "recall",
    "flagged_with_verdict", "precision", "precision_if_random", "auroc", "n_auroc",
    "suggestions_scored", "suggestions_correct", "suggestion_accuracy",
    "model_strength", "model_strength_message", "holdout_accuracy", "chance_accuracy",
)


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def auroc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """``fercure.metrics.auroc``, with None (not NaN) when either class is empty, for JSON."""
    value = _auroc(positive, score)
    return None if math.isnan(value) else value


def _flag(series: pd.Series) -> np.ndarray:
    """0/1, True/False or their text forms as booleans; anything else (empty, NaN) is False."""
    text = series.astype(str).str.strip().str.lower()
    return text.isin(("1", "1.0", "true", "yes")).to_numpy()


def _reference_verdicts(reference: pd.DataFrame) -> pd.DataFrame:
    ref = reference.copy()
    if "path" not in ref.columns:
        raise ValueError("the reference has no 'path' column")
    if not {"clear_error", "clean"} <= set(ref.columns):
        if "ferplus_votes_for_label" not in ref.columns:
            raise ValueError("the reference needs clear_error and clean, or ferplus_votes_for_label")
        g = pd.to_numeric(ref["ferplus_votes_for_label"], errors="coerce")
        ref["clear_error"], ref["clean"] = g <= 1, g >= 5
    ref["clear_error"], ref["clean"] = _flag(ref["clear_error"]), _flag(ref["clean"])
    if "ferplus_majority" not in ref.columns:
        ref["ferplus_majority"] = ""
    ref["path"] = ref["path"].astype(str)
    return ref[["path", "clear_error", "clean", "ferplus_majority"]].drop_duplicates("path")


def scorecard(audit: pd.DataFrame, reference: pd.DataFrame, stats: dict | None = None) -> dict[str, Any]:
    """How well the audit found the reference's known label errors.

    Joins ``audit.source_path`` to ``reference.path`` (audit rows without a reference row are not
    scored). Returns a JSON-ready dict (None where a figure has no denominator):

    - n_scored, n_known_errors (clear errors), n_clean, n_flagged (is_label_issue among scored rows);
    - known_errors_flagged and recall = known_errors_flagged / n_known_errors;
    - precision = flagged clear errors / flagged rows that have a verdict (clear error or clean),
      with precision_if_random = n_known_errors / (n_known_errors + n_clean) to compare with;
    - auroc of 1 − label_score, clear errors against clean rows (rows without a finite
      label_score are left out; n_auroc says how many rows it used);
    - suggestion_accuracy = suggestions_correct / suggestions_scored, over flagged clear errors
      whose reference has a majority label: how often suggested_label is that label;
    - model_strength (verdict "ok" | "weak" | "too_weak", or None when the audit does not report
      one), model_strength_message, holdout_accuracy, chance_accuracy: from stats["model_strength"].
    """
    for col in ("source_path", "is_label_issue", "label_score", "suggested_label"):
        if col not in audit.columns:
            raise ValueError(f"the audit has no {col!r} column")
    ref = _reference_verdicts(reference)
    m = audit[["source_path", "is_label_issue", "label_score", "suggested_label"]].assign(
        source_path=audit["source_path"].astype(str)
    ).merge(ref, left_on="source_path", right_on="path", how="inner")

    err = m["clear_error"].to_numpy(bool)
    clean = m["clean"].to_numpy(bool) & ~err
    flagged = m["is_label_issue"].fillna(False).to_numpy(bool)
    verdict = err | clean
    n_err, n_clean = int(err.sum()), int(clean.sum())
    tp = int((flagged & err).sum())
    flagged_verdict = int((flagged & verdict).sum())

    quality = pd.to_numeric(m["label_score"], errors="coerce").to_numpy(np.float64)
    usable = verdict & np.isfinite(quality)
    area = auroc(err[usable], 1.0 - quality[usable])

    majority = m["ferplus_majority"].fillna("").astype(str).str.strip().to_numpy(object)
    suggested = m["suggested_label"].astype(object).to_numpy()
    judged = flagged & err & (majority != "")
    correct = int(sum(str(s) == mj for s, mj in zip(suggested[judged], majority[judged]) if s is not None))

    strength = (stats or {}).get("model_strength") or {}
    if not isinstance(strength, dict):
        strength = {"verdict": str(strength)}

    def num(value: Any) -> float | None:
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None

    return {
        "n_scored": int(len(m)),
        "n_known_errors": n_err,
        "n_clean": n_clean,
        "n_flagged": int(flagged.sum()),
        "known_errors_flagged": tp,
        "recall": _ratio(tp, n_err),
        "flagged_with_verdict": flagged_verdict,
        "precision": _ratio(tp, flagged_verdict),
        "precision_if_random": _ratio(n_err, n_err + n_clean),
        "auroc": area,
        "n_auroc": int(usable.sum()),
        "suggestions_scored": int(judged.sum()),
        "suggestions_correct": correct,
        "suggestion_accuracy": _ratio(correct, int(judged.sum())),
        "model_strength": strength.get("verdict"),
        "model_strength_message": strength.get("message"),
        "holdout_accuracy": num(strength.get("holdout_accuracy")),
        "chance_accuracy": num(strength.get("chance_accuracy")),
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def render_scorecard(card: dict[str, Any]):
    """The scorecard as a rich Table: figure, value, what it means."""
    from rich.table import Table

    t = Table(title="Scorecard against the FER+ votes (evaluation only)", title_justify="left")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_column("meaning")
    t.add_row("images scored", f"{card['n_scored']:,}",
              f"{card['n_known_errors']:,} known errors (≤ 1 of 10 FER+ votes for the label), "
              f"{card['n_clean']:,} clean (≥ 5 votes), the rest ambiguous")
    t.add_row("known errors found", f"{card['known_errors_flagged']:,} / {card['n_known_errors']:,}",
              f"recall {_pct(card['recall'])}; {card['n_flagged']:,} images flagged in all")
    t.add_row("precision", _pct(card["precision"]),
              f"of {card['flagged_with_verdict']:,} flagged images with a verdict, the share that are known "
              f"errors (flagging at random: {_pct(card['precision_if_random'])})")
    area = card["auroc"]
    t.add_row("ranking (AUROC)", "n/a" if area is None else f"{area:.3f}",
              "P(a known error scores as more suspect than a clean image); 0.5 = random")
    t.add_row("suggestion accuracy", _pct(card["suggestion_accuracy"]),
              f"{card['suggestions_correct']:,} of {card['suggestions_scored']:,} flagged known errors "
              "got the FER+ majority label as suggestion")
    verdict = card.get("model_strength")
    if verdict is None:
        t.add_row("model strength", "n/a", "this audit does not report one")
    else:
        detail = card.get("model_strength_message") or ""
        if card.get("holdout_accuracy") is not None:
            acc = f"held-out accuracy {_pct(card['holdout_accuracy'])}"
            if card.get("chance_accuracy") is not None:
                acc += f" vs chance {_pct(card['chance_accuracy'])}"
            detail = f"{acc}. {detail}".strip()
        style = {"ok": "green", "weak": "yellow", "too_weak": "bold red"}.get(str(verdict), "")
        t.add_row("model strength", f"[{style}]{verdict}[/]" if style else str(verdict), detail)
    return t

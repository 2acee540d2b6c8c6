"""Reviewed rows: a reviewer's decisions outrank any score. The rows the run trained with their
reviewed label (``fercure train --trusted``) and the decisions made after it (``audit-labels
--trusted``) are never flagged again; what they say calibrates the share of wrong labels and judges
the ranking's and the suggestions' strength."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from fercure import review_calibration as rc
from fercure import strength as st
from fercure.audit.bands import json_float
from fercure.audit.frames import text_column
from fercure.audit.issues import IssueInputs, issues_in
from fercure.audit.rules import Flags
from fercure.metrics import auroc


def with_reviewed_labels(manifest: pd.DataFrame, reviewed: pd.DataFrame | None) -> pd.DataFrame:
    """The manifest with each relabelled row's label replaced by the reviewed one: the label the run
    trained it with, the one its scores are about."""
    if reviewed is None or not len(reviewed):
        return manifest
    rel = reviewed[reviewed["action"] == "relabel"]
    new = pd.Series(rel["label"].to_numpy(dtype=object), index=rel["sample_id"].astype(str).to_numpy())
    out = manifest.copy()
    ids = out["sample_id"].astype(str)
    hit = ids.isin(new.index).to_numpy()
    out.loc[hit, "label"] = new.loc[ids[hit]].to_numpy()
    return out


def reviewed_mask(sample_ids: Sequence[str], reviewed: pd.DataFrame | None) -> np.ndarray:
    """(n,) bool: the samples a reviewer decided."""
    if reviewed is None or not len(reviewed):
        return np.zeros(len(sample_ids), bool)
    return np.isin(np.asarray(sample_ids, dtype=str), reviewed["sample_id"].astype(str).to_numpy())


def unflag_reviewed(flags: Flags, is_reviewed: np.ndarray, n_classes: int, given: np.ndarray) -> Flags:
    """A person's decision outranks any score: reviewed rows are never flagged."""
    if not is_reviewed.any():
        return flags
    issue = flags.is_issue & ~is_reviewed
    counts = np.bincount(given[issue], minlength=n_classes) if flags.cut is None else flags.counts
    return Flags(issue, flags.rule, counts, flags.cut, flags.global_cut)


def reviewed_step(audit: pd.DataFrame, manifest: pd.DataFrame, reviewed: pd.DataFrame | None) -> pd.DataFrame:
    """The audit with ``is_reviewed``, ``reviewed_label`` and ``decided_by``; ``given_label`` back to the
    label as given (the manifest's); a reviewed row's reason says what the reviewer decided first."""
    audit["given_label"] = text_column(manifest, "label")
    mask = reviewed_mask(audit["sample_id"].tolist(), reviewed)
    audit["is_reviewed"] = mask
    audit["reviewed_label"] = np.full(len(audit), None, object)
    audit["decided_by"] = np.where(mask, "reviewer", "fercure").astype(object)
    if mask.any():
        r = reviewed.set_index(reviewed["sample_id"].astype(str)).loc[audit.loc[mask, "sample_id"]]
        audit.loc[mask, "reviewed_label"] = r["label"].to_numpy(dtype=object)
        verbs = {"keep": "kept", "relabel": "relabelled", "drop": "dropped"}
        said = [f"reviewed: {verbs[a]}" + (f" {g} -> {lab}" if a == "relabel" else "") + f" ({src})"
                for a, g, lab, src in zip(r["action"], r["given_label"], r["label"], r["source"])]
        audit.loc[mask, "reason"] = [f"{w}; {old}" if old else w for w, old in zip(said, audit.loc[mask, "reason"])]
        audit.loc[mask, ["is_label_issue", "is_ambiguous_issue"]] = False
    return audit


def combine_reviewed(reviewed: pd.DataFrame | None, decided: pd.DataFrame | None) -> pd.DataFrame | None:
    """The run's trusted table and the decisions made after it, one row per sample (the later wins)."""
    parts = [t for t in (reviewed, decided) if t is not None and len(t)]
    if not parts:
        return reviewed
    both = pd.concat(parts, ignore_index=True)
    return both[~both["sample_id"].astype(str).duplicated(keep="last")].reset_index(drop=True)


def learnable_verdicts(decided: pd.DataFrame | None, trained_with: pd.DataFrame | None) -> pd.DataFrame | None:
    """The decisions a re-ranker may learn from: those made after the run on rows it trained with their
    given label, so the row's scores are about the label the reviewer judged (a row the run trained with
    another reviewed label is scored about that label instead; one it dropped is not scored)."""
    if decided is None or not len(decided):
        return None
    if trained_with is None or not len(trained_with):
        return decided
    other = trained_with.loc[trained_with["action"] != "keep", "sample_id"].astype(str)
    return decided[~decided["sample_id"].astype(str).isin(other)]


@dataclass
class ReviewedRows:
    """What the reviewed rows say, one entry per row of the run's trusted table (``reviewed``)."""

    is_label: np.ndarray  # (m,) bool: a decision about the label (``review_calibration.label_decisions``)
    is_error: np.ndarray  # (m,) bool: a label decision that found the label wrong
    spot: np.ndarray  # (m,) bool: offered as a spot check (a random row)
    rank: np.ndarray  # (m,) float: the queue rank when reviewed, low = suspect (NaN: unknown)
    round: np.ndarray  # (m,) int: the review round (the --trusted file, 1-based)
    offered: np.ndarray  # (m,) bool: the card offered a suggestion (another class than the given one)
    agreed: np.ndarray  # (m,) bool: the reviewer chose that suggested class
    dropped: np.ndarray  # (m,) bool: the reviewer dropped the sample

    @classmethod
    def of(cls, reviewed: pd.DataFrame | None, image_problem: set[str]) -> "ReviewedRows":
        r = reviewed if reviewed is not None and len(reviewed) else None
        n = 0 if r is None else len(r)

        def col(name: str, fill, dtype) -> np.ndarray:
            return (r[name].fillna(fill).to_numpy(dtype=dtype) if r is not None and name in r.columns
                    else np.full(n, fill, dtype=dtype))

        action = col("action", "", object)
        img = np.isin(col("sample_id", "", object).astype(str), list(image_problem)) if n else np.zeros(0, bool)
        is_label, is_error = rc.label_decisions(action, img)
        sugg = col("suggested_when_reviewed", "", object).astype(str)
        offered = is_label & (sugg != "") & (sugg != col("given_label", "", object).astype(str))
        agreed = offered & (action == "relabel") & (col("label", "", object).astype(str) == sugg)
        return cls(is_label, is_error, col("spot_check", False, bool), col("rank_when_reviewed", np.nan, float),
                   col("review_round", 0, int), offered, agreed, action == "drop")


def image_problem_ids(manifest: pd.DataFrame, blur_threshold: float | None = None) -> set[str]:
    """Samples whose image, not label, is the problem: no usable face (any face status but ``ok``) or
    an issue of the face stage that says so (``RowIssue.image_problem``: a near-duplicate, a blurry,
    too dark, too bright or flat crop). A reviewer's drop of one says nothing about its label."""
    x = IssueInputs(manifest, blur_threshold)
    bad = x.text("face_status", "ok") != "ok"
    for issue in issues_in("image"):
        if issue.image_problem:
            bad = bad | np.asarray(issue.columns(x).columns[issue.flag_column], bool)
    return set(manifest["sample_id"].astype(str).to_numpy()[bad])


def calibration_stats(run_meta: Mapping, rows: ReviewedRows, n_trained: int) -> dict:
    """The share of wrong labels twice, side by side: from the planted flips (the run's self-check) and
    from the reviewed label decisions (``fercure.review_calibration``: exact on the queue's cards, the
    spot checks for the rest, with an interval), and which share the run uses (``share``; None when
    neither exists; ``share_for_flags`` what the ``planted`` rule flags). Also the error rate of the
    latest queue cards (what the next ones hold) and the reviewed rows' AUROC at the ranks they had
    when reviewed: mostly a queue's low ranks, so no match for the planted flips' AUROC."""
    sc = dict(run_meta.get("self_check") or {})
    planted_share = sc.get("estimated_error_share")
    planted_share = float(planted_share) if planted_share is not None and np.isfinite(planted_share) else None
    lab = rows.is_label
    err, rank, spot, rnd = rows.is_error[lab], rows.rank[lab], rows.spot[lab], rows.round[lab]
    # the share is of the scored rows and the label drops (they left the run); image drops are no labels
    rev = rc.error_share(err, spot, n_trained + int((rows.dropped & lab).sum()))
    rev["n_image_drops"] = int((~lab).sum())
    rev["auroc"] = json_float(auroc(err, -rank))  # low rank = suspect
    rev["recent_queue"] = rc.recent_queue_rate(rank, err, spot, latest=rnd == rnd.max() if len(rnd) else None)
    used, share = rc.choose(planted_share, rev["share"])
    return {"planted": {"share": planted_share, "auroc": json_float(sc.get("auroc_mean_p") or np.nan),
                        "n_planted": sc.get("n_planted"),
                        "recall": json_float(np.nan if sc.get("recall_at_estimated_share") is None
                                              else float(sc["recall_at_estimated_share"]))},
            "reviewed": {k: (json_float(v) if isinstance(v, float) else v) for k, v in rev.items()},
            "used": used, "share": share, "share_for_flags": rc.share_for_flags(used, share, rev)}


def strength_stats(run_meta: Mapping, rows: ReviewedRows, group: np.ndarray) -> dict:
    """The run's model-strength record (the probe's numbers as the run wrote them) with its verdict
    judged again from what is known now (``fercure.strength``): the ranking's strength from the
    planted flips, or from the decided spot checks once they hold enough wrong and right labels, and
    the suggestions' from the decided cards that offered one."""
    ms = dict(run_meta.get("model_strength") or {})
    sc = dict(run_meta.get("self_check") or {})
    n_planted = int(sc.get("n_planted") or 0)
    # the self-check ranked the planted flips among the trained rows (``n_scored``; older runs: the
    # rows scored in-sample, group 0, beside the planted ones)
    n_other = int(sc.get("n_scored") or (int((np.asarray(group) == 0).sum()) + n_planted)) - n_planted
    planted_auroc = sc.get("auroc_mean_p", ms.get("planted_auroc"))
    spot = rows.spot & rows.is_label
    ranking = st.ranking_strength(None if planted_auroc is None else float(planted_auroc), n_planted, n_other,
                                  rows.is_error[spot], rows.rank[spot])
    suggestions = st.suggestion_strength(rows.agreed[rows.offered])
    probe = {k: ms.get(k) for k in ("holdout_accuracy", "chance_accuracy", "standard_error", "n_holdout")}
    ms.update(st.verdict(ranking, suggestions, probe), ranking=ranking, suggestions=suggestions)
    return ms


def reviewed_stats(reviewed: pd.DataFrame | None) -> dict:
    counts = reviewed["action"].value_counts() if reviewed is not None else pd.Series(dtype=int)
    return {"n_reviewed": int(counts.sum()), "actions": {a: int(counts.get(a, 0)) for a in ("keep", "relabel", "drop")}}

"""The audit table: one row per manifest row, composed of the steps in order — ``align_predictions`` →
``score_step`` (a signal or blend, every estimator group on one scale) → the threshold rule
(``fercure.audit.rules``) → reviewed rows unflagged → ``suggest_step`` (suggestion, calibrated bands,
ambiguity) → the registered issues' columns (``fercure.audit.issues``) → the reasons and the stats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from fercure import rerank
from fercure.audit import reviewed as rv
from fercure.audit.bands import json_float
from fercure.audit.counting import find_label_issues_confident_joint
from fercure.audit.frames import text_column
from fercure.audit.issues import ISSUES, IssueColumns, IssueInputs, LabelVerdict, RowView, issues_in
from fercure.audit.rules import DEFAULT_THRESHOLD, RULES, FlaggedRow, Flags, Scored
from fercure.audit.scale import GROUPS, align_groups, estimator_groups
from fercure.audit.signals import DEFAULT_SCORE, class_distribution, entropy, label_quality, signals_from_predictions
from fercure.audit.suggest import (AMBIGUITY_MARGIN, AMBIGUITY_MAX_CONFIDENCE, Suggestions, noise_transition_matrix,
                                   suggest_labels, suggest_step)


@dataclass(frozen=True)
class AuditOptions:
    """How the audit scores, flags and suggests (``build_audit``'s keyword arguments)."""

    method: str | Mapping[str, float] = DEFAULT_SCORE
    threshold_method: str = DEFAULT_THRESHOLD
    distribution: Sequence[str] = ("mean_p",)
    suggest_from: Sequence[str] = ("retrain_p", "knn_p", "mean_p")
    ambiguity_margin: float = AMBIGUITY_MARGIN
    ambiguity_max_confidence: float = AMBIGUITY_MAX_CONFIDENCE
    blur_threshold: float | None = None

    def stats(self, rule_used: str, n_unmatched: int) -> dict:
        """The options as the stats record them. A rule asked for but handed over for want of its
        inputs (``hand_over == "inputs"``) is recorded as the rule that decided."""
        asked = RULES[self.threshold_method]
        handed = rule_used != asked.name and asked.hand_over == "inputs"
        return {
            "method": self.method if isinstance(self.method, str) else dict(self.method),
            "threshold_method": rule_used if handed else asked.name,
            "distribution": list(self.distribution),
            "suggest_from": list(self.suggest_from),
            "ambiguity_margin": float(self.ambiguity_margin),
            "ambiguity_max_confidence": float(self.ambiguity_max_confidence),
            "n_predictions_not_in_manifest": int(n_unmatched),
        }


@dataclass(frozen=True)
class Aligned:
    """The predictions of manifest rows, with their manifest positions and given labels."""

    preds: pd.DataFrame
    rows: np.ndarray  # manifest position of each prediction
    given: np.ndarray  # class index of each prediction's given label
    given_str: np.ndarray  # every manifest row's label as text
    n_unmatched: int  # predictions of samples the manifest does not hold


def build_audit(
    manifest: pd.DataFrame,
    predictions: pd.DataFrame,
    classes: list[str],
    *,
    method: str | Mapping[str, float] = DEFAULT_SCORE,
    threshold_method: str = DEFAULT_THRESHOLD,
    distribution: Sequence[str] = ("mean_p",),
    suggest_from: Sequence[str] = ("retrain_p", "knn_p", "mean_p"),
    ambiguity_margin: float = AMBIGUITY_MARGIN,
    ambiguity_max_confidence: float = AMBIGUITY_MAX_CONFIDENCE,
    blur_threshold: float | None = None,
    run_meta: Mapping | None = None,
    reviewed: pd.DataFrame | None = None,
    decided: pd.DataFrame | None = None,
    queue_order: str = "auto",
    features=None,
) -> tuple[pd.DataFrame, dict]:
    """One audit row per manifest row, and the thresholds/statistics behind the flags.

    Parameters
    ----------
    manifest : DataFrame
        WS/manifest.parquet (sample_id, source_path, label, split, face_status, face_score,
        sharpness, duplicate_of, store_index; ``reason`` used when present).
    predictions : DataFrame
        A run's predictions.parquet (one row per trained sample).
    classes : list of str
        The run's classes, in training-index order.
    method : str or mapping
        Label-quality signal or blend; see ``fercure.audit.signals.label_quality``.
    threshold_method : a name of ``fercure.audit.rules.RULES``
        How ``is_label_issue`` is decided. ``stats["threshold_method_used"]`` says which rule decided
        (a rule without its inputs hands over to another).
    distribution : sequence of str, default ("mean_p",)
        Column families averaged into the audit distribution; see ``class_distribution``.
    ambiguity_margin, ambiguity_max_confidence : float
        See ``fercure.audit.suggest.ambiguity``.
    blur_threshold : float, optional
        Fixed blur cut; default is data-driven (``blur_issues``).
    reviewed : DataFrame, optional
        The run's trusted table (``fercure.trusted``): those rows are scored about their reviewed
        label and never flagged (``reviewed_step``).
    decided : DataFrame, optional
        Decisions made after the run (``audit-labels --trusted``; the trusted table's columns): never
        flagged either, but the run trained them with their given label, so their scores are about
        it, and they teach the re-ranker (``fercure.rerank``). A sample in both takes this decision.
    queue_order : one of ``fercure.rerank.QUEUE_ORDERS``
        How ``review_rank`` orders the rows nobody reviewed (``fercure.rerank.order_queue``).
    features : fercure.evidence.FeatureSignals, optional
        The user's --features neighbours (the outlier issue reads them).

    Returns
    -------
    audit : DataFrame
        Manifest order. Samples the run did not train get NaN scores, ``is_label_issue`` False,
        ``trained`` False and a ``reason`` saying why.
    stats : dict
        JSON-ready: options, class thresholds, the rule's counts and per-class score cuts, mixture
        fit, the confidence bands, counts per issue, transition matrix. ``per_class[c]["threshold"]``
        is the threshold that decided class c's flags, None when the rule is not a cut on the score.

    Raises
    ------
    ValueError
        Bad options, duplicate sample ids in predictions, a given label outside ``classes``, or a
        prediction whose given label disagrees with the manifest (the manifest changed after
        training).
    """
    if threshold_method not in RULES:
        raise ValueError(f"threshold_method must be one of {list(RULES)}, not {threshold_method!r}")
    opts = AuditOptions(method, threshold_method, distribution, suggest_from, ambiguity_margin,
                        ambiguity_max_confidence, blur_threshold)
    classes = [str(c) for c in classes]
    as_given, manifest = manifest, rv.with_reviewed_labels(manifest, reviewed)
    al = align_predictions(manifest, predictions, classes)
    trained_with = reviewed  # the decisions the run trained with (their rows are scored about them)
    reviewed = rv.combine_reviewed(reviewed, decided)
    # a decision made after the run to drop a row leaves it among the trained rows, not beside them
    late_drops = 0 if decided is None else int(np.isin(
        decided.loc[decided["action"] == "drop", "sample_id"].astype(str), al.preds["sample_id"].astype(str)).sum())
    reviewed_rows = rv.ReviewedRows.of(reviewed, rv.image_problem_ids(as_given, blur_threshold))
    calibration = rv.calibration_stats(run_meta or {}, reviewed_rows, len(al.preds) - late_drops)
    scored = score_step(al, classes, opts, run_meta or {}, calibration["share_for_flags"])
    is_rev = rv.reviewed_mask(al.preds["sample_id"].tolist(), reviewed)
    flags = rv.unflag_reviewed(RULES[threshold_method].flag(scored), is_rev, len(classes), al.given)
    sg = suggest_step(al.preds, classes, al.given, flags.is_issue, suggest_from, margin=ambiguity_margin,
                      max_confidence=ambiguity_max_confidence)
    sg = Suggestions(sg.probs, sg.suggested, sg.confidence, sg.bands, sg.is_ambiguous & ~is_rev, sg.gap)
    audit, stats = verdict_table(IssueInputs(manifest, blur_threshold, features=features), scored, flags, sg, al)
    audit = rv.reviewed_step(audit, as_given, reviewed)
    stats["reviewed"] = rv.reviewed_stats(reviewed)
    stats["calibration"] = calibration
    # the rule's flags before any review: the hand-made order the re-ranker is measured against
    rule_flags = _spread(RULES[threshold_method].flag(scored).is_issue, False, al.rows, len(audit), bool) \
        if is_rev.any() else None
    queue = rerank.order_queue(audit, classes, rv.learnable_verdicts(decided, trained_with), queue_order,
                               rule_flags=rule_flags)
    audit["review_rank"] = pd.Series(queue.rank, index=audit.index).astype("Int64")
    full = np.full((len(audit), len(classes)), np.nan)
    full[al.rows] = sg.probs
    queue_suggestions(audit, full, classes)
    stats["queue"] = queue.stats()
    stats["model_strength"] = rv.strength_stats(run_meta or {}, reviewed_rows, scored.group)
    stats.update(opts.stats(flags.rule, al.n_unmatched))
    return audit, stats


def queue_suggestions(audit: pd.DataFrame, sugg_probs: np.ndarray, classes: list[str]) -> np.ndarray:
    """Give the queue's unflagged cards a suggestion, in place: a queue re-ranked on decisions
    (``fercure.rerank``) can put rows the rule did not flag among its first cards (as many as there are
    open label issues), and a card that asks "is this label wrong?" should say what it would be instead.
    The suggestion is the most probable other class of the suggestion distribution (``sugg_probs``,
    manifest order); ``is_label_issue`` stays False, so no export policy relabels the row on its own.
    Returns the rows changed."""
    rank = pd.to_numeric(audit["review_rank"], errors="coerce").to_numpy(dtype=float)
    reviewed = audit["is_reviewed"].fillna(False).to_numpy(bool) if "is_reviewed" in audit.columns \
        else np.zeros(len(audit), bool)
    rows = rerank.unflagged_first_cards(rank, audit["is_label_issue"].fillna(False).to_numpy(bool), reviewed)
    rows = rows[np.isfinite(sugg_probs[rows]).all(axis=1)]
    if not len(rows):
        return rows
    cidx = {c: i for i, c in enumerate(classes)}
    given = np.array([cidx.get(str(g), -1) for g in audit["given_label"].to_numpy()[rows]])
    known = given >= 0
    rows, given = rows[known], given[known]
    suggested, conf = suggest_labels(sugg_probs[rows], given, np.ones(len(rows), bool))
    names = np.array(classes, dtype=object)[suggested]
    audit.loc[rows, "suggested_label"] = names
    audit.loc[rows, "suggested_label_confidence"] = conf
    audit.loc[rows, "reason"] = [f"{old}; in the re-ranked queue (review_rank {int(r)}): if the label is wrong, "
                                 f"{name} ({c:.2f})" for old, r, name, c in
                                 zip(audit["reason"].to_numpy()[rows], rank[rows], names, conf)]
    return rows


def score_step(al: Aligned, classes: list[str], opts: AuditOptions, run_meta: Mapping,
               error_share: float | None) -> Scored:
    """signals → label_score, every estimator group on the trained rows' scale."""
    probs = class_distribution(al.preds, classes, tuple(opts.distribution))
    signals = signals_from_predictions(al.preds, probs, al.given)
    group = estimator_groups(al.preds)
    quality = align_groups(label_quality(signals, opts.method), group)
    return Scored(quality, probs, al.given, group, al.preds, classes, al.rows, run_meta,
                  math.nan if error_share is None else float(error_share))


def align_predictions(manifest: pd.DataFrame, predictions: pd.DataFrame, classes: list[str]) -> Aligned:
    """The predictions of manifest rows, their manifest positions and given-label indices."""
    cidx = {c: i for i, c in enumerate(classes)}
    if manifest["sample_id"].duplicated().any():
        dup = manifest.loc[manifest["sample_id"].duplicated(), "sample_id"].iloc[0]
        raise ValueError(f"the manifest lists sample {dup!r} more than once")
    if predictions["sample_id"].duplicated().any():
        dup = predictions.loc[predictions["sample_id"].duplicated(), "sample_id"].iloc[0]
        raise ValueError(f"predictions lists sample {dup!r} more than once")
    pos_of = pd.Series(np.arange(len(manifest)), index=manifest["sample_id"].to_numpy())
    in_manifest = predictions["sample_id"].isin(pos_of.index).to_numpy()
    preds = predictions.loc[in_manifest].reset_index(drop=True)
    rows = pos_of.loc[preds["sample_id"].to_numpy()].to_numpy()  # manifest position of each prediction
    given_str = text_column(manifest, "label")
    if "given_label" in preds.columns:
        mism = preds["given_label"].astype(str).to_numpy() != given_str[rows]
        if mism.any():
            i = int(np.flatnonzero(mism)[0])
            raise ValueError(
                f"sample {preds['sample_id'].iloc[i]!r}: the run trained it as "
                f"{preds['given_label'].iloc[i]!r} but the manifest says {given_str[rows[i]]!r}; "
                "the manifest changed after training")
    unknown = sorted({g for g in given_str[rows] if g not in cidx})
    if unknown:
        raise ValueError(f"trained samples carry labels {unknown[:5]} that are not among the run's classes {classes}")
    given = np.array([cidx[g] for g in given_str[rows]], dtype=int)
    return Aligned(preds, rows, given, given_str, int((~in_manifest).sum()))


def verdict_table(x: IssueInputs, s: Scored, flags: Flags, sg: Suggestions, al: Aligned) -> tuple[pd.DataFrame, dict]:
    """The audit table in manifest order (the run's columns, every registered issue's, the reasons)
    and its stats."""
    n_all = len(x.manifest)
    t = s.cj[0]
    cut = RULES[flags.rule].class_cuts(flags, t)
    x = IssueInputs(x.manifest, x.blur_threshold, features=x.features, label=LabelVerdict(
        score=_spread(s.quality, np.nan, s.tiebreak, n_all, float),
        is_issue=_spread(flags.is_issue, False, s.tiebreak, n_all, bool),
        ambiguous_gap=_spread(sg.gap, np.nan, s.tiebreak, n_all, float),
        is_ambiguous=_spread(sg.is_ambiguous, False, s.tiebreak, n_all, bool)))
    found = {issue.name: issue.columns(x) for issue in ISSUES.values()}
    audit = _run_columns(x, s, sg, al, found)
    issue_stats = {k: v for f in found.values() for k, v in f.stats.items()}
    audit["reason"] = _reasons(audit, s, flags, cut, issue_stats, text_column(x.manifest, "reason"))
    stats = _verdict_stats(s, flags, cut, sg, found, issue_stats, n_all)
    return audit, stats


def _spread(values: np.ndarray, fill, rows: np.ndarray, n_all: int, dtype=None) -> np.ndarray:
    """A per-trained-sample array laid out in manifest order (``rows``), ``fill`` elsewhere."""
    out = np.full(n_all, fill, dtype=dtype if dtype is not None else np.asarray(values).dtype)
    out[rows] = values
    return out


def _run_columns(x: IssueInputs, s: Scored, sg: Suggestions, al: Aligned,
                 found: dict[str, IssueColumns]) -> pd.DataFrame:
    """The table's columns in contract order: the suggestion, the label-section issues, the run's
    signals and p_<class>, the face stage's columns, the image and features issues."""
    classes, preds, rows = s.classes, s.predictions, s.tiebreak
    n_all = len(x.manifest)
    ent = preds["uncertainty_entropy"].to_numpy(dtype=float) if "uncertainty_entropy" in preds.columns \
        else np.full(len(preds), np.nan)
    ent = np.where(np.isfinite(ent), ent, entropy(s.probs))  # the run's (ensemble) entropy, else ours

    def full(values: np.ndarray, fill, dtype=None) -> np.ndarray:
        return _spread(values, fill, rows, n_all, dtype)

    def pred_col(name: str) -> np.ndarray:
        v = preds[name].to_numpy(dtype=float) if name in preds.columns else np.full(len(preds), np.nan)
        return full(v, np.nan, float)

    def section(name: str) -> dict[str, np.ndarray]:
        return {k: v for issue in issues_in(name) for k, v in found[issue.name].columns.items()}

    sugg_str = np.array([classes[i] for i in sg.suggested], dtype=object)
    # cleanlab's predicted_label: the argmax of the suggestion distribution, flagged or not
    finite = np.where(np.isfinite(sg.probs), sg.probs, -np.inf)
    pred_str = np.array([classes[i] for i in np.argmax(finite, axis=1)] if len(finite) else [], dtype=object)
    pred_str = np.where(np.isfinite(sg.probs).all(axis=1), pred_str, None)
    cols = {
        "sample_id": x.manifest["sample_id"].astype(str).to_numpy(),
        "source_path": x.manifest["source_path"].astype(str).to_numpy(),
        "split": text_column(x.manifest, "split"),
        "given_label": al.given_str,
        "trained": full(np.ones(len(preds), bool), False, bool),
        "predicted_label": full(pred_str, None, object),
        "suggested_label": full(sugg_str, None, object),
        "suggested_label_confidence": full(sg.confidence, np.nan, float),
        **section("label"),
        "reliability": pred_col("reliability"),
        "uncertainty_entropy": full(ent, np.nan, float),
        "uncertainty_mutual_info": pred_col("uncertainty_mutual_info"),
        "importance_weight": pred_col("importance_weight"),
        "relabel_count": pred_col("relabel_count"),
        "scn_label": full(preds["scn_label"].astype(str).to_numpy(dtype=object), None, object)
        if "scn_label" in preds.columns else np.full(n_all, None, object),
        "aum": pred_col("aum"),
        "oof_p_given": pred_col("oof_p_given"),
        "retrain_p_given": pred_col("retrain_p_given"),
        # signals from the run's records (``fercure.dynamics_signals``; the re-ranker's inputs)
        "knn_agreement": pred_col("knn_agreement"),
        "fine_alignment": pred_col("fine_alignment"),
        "logit_margin": pred_col("logit_margin"),
        "el2n_early": pred_col("el2n_early"),
        "learned_epoch": pred_col("learned_epoch"),
    }
    for j, c in enumerate(classes):
        cols[f"p_{c}"] = full(s.probs[:, j], np.nan, float)
    cols.update({
        "face_status": x.text("face_status", "ok"), "face_score": x.number("face_score"),
        "sharpness": x.number("sharpness"), "duplicate_of": x.text("duplicate_of"),
        "store_index": x.number("store_index", -1).astype(np.int64), "content_hash": x.text("content_hash"),
        **section("image"), **section("features"),
    })
    return pd.DataFrame(cols)


def _verdict_stats(s: Scored, flags: Flags, cut: np.ndarray, sg: Suggestions, found: dict[str, IssueColumns],
                   issue_stats: dict, n_all: int) -> dict:
    """The JSON-ready stats behind the table: thresholds of every rule, mixture fit, counts, per-class
    rows, transition matrix (what ``stats`` documents in ``build_audit``)."""
    classes, given, quality, is_issue, used = s.classes, s.given, s.quality, flags.is_issue, flags.rule
    t, joint, nr_counts, _ = s.cj
    mix = s.mixture
    mix_issue = np.isfinite(quality) & (quality < mix.threshold)
    counted = RULES[used].cut == "class_score"  # the rule flagged a count per class (the confident joint's, the flips')
    per_class = {
        c: {
            "n": int((given == j).sum()),
            "n_label_issues": int((is_issue & (given == j)).sum()),
            "n_ambiguous": int((sg.is_ambiguous & (given == j)).sum()),
            "mean_label_score": _nanmean(quality[given == j]),
            "threshold": json_float(cut[j]),
        }
        for j, c in enumerate(classes)
    }
    return {
        "threshold_method_used": used,
        "classes": classes,
        "class_thresholds": {c: json_float(t[j]) for j, c in enumerate(classes)},
        "mixture": {"threshold": json_float(mix.threshold), "converged": bool(mix.converged),
                    "separation": json_float(mix.separation),
                    "means": [json_float(m) for m in mix.means],
                    "weights": [json_float(w) for w in mix.weights],
                    "n_flagged": int(mix_issue.sum())},
        "confident_joint_n_flagged": int(find_label_issues_confident_joint(s.probs, given, t)[0].sum()),
        "model_strength": dict(s.run_meta.get("model_strength") or {}),
        "self_check": dict(s.run_meta.get("self_check") or {}),
        "noise_rate": {"n_issues": {c: int(flags.counts[j] if counted else nr_counts[j]) for j, c in enumerate(classes)},
                       "score_cut": {c: json_float(cut[j]) if flags.cut is not None else None
                                     for j, c in enumerate(classes)},
                       "confident_joint": joint.tolist(),
                       "n_flagged": int(is_issue.sum()) if counted else None},
        "rule": {"name": used, "n_issues": {c: int(flags.counts[j]) for j, c in enumerate(classes)},
                 "score_cut": None if flags.cut is None else {c: json_float(flags.cut[j]) for j, c in enumerate(classes)},
                 "global_cut": json_float(flags.global_cut) if flags.global_cut is not None else None},
        "score_scale": {"reference": GROUPS[0], "aligned_by_rank": [GROUPS[g] for g in sorted(set(s.group.tolist())) if g != 0],
                        "n_by_group": {GROUPS[g]: int((s.group == g).sum()) for g in range(len(GROUPS))}},
        "confidence_bands": sg.bands,
        **issue_stats,
        "n_samples": int(n_all),
        "n_trained": int(len(s.predictions)),
        **{issue.stats_key: int(np.asarray(found[issue.name].columns[issue.flag_column], bool).sum())
           for issue in ISSUES.values()},
        "per_class": per_class,
        "transition_matrix": noise_transition_matrix(given, sg.suggested, len(classes)).tolist(),
    }


def _nanmean(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else None


def _reasons(audit: pd.DataFrame, s: Scored, flags: Flags, cut: np.ndarray, issue_stats: dict,
             face_reason: np.ndarray) -> list[str]:
    """One human-readable sentence per row, with the numbers behind its flags: the rule's sentence for
    a label issue, then each flagged issue's own (the run's, the face status, the image's)."""
    classes, t, decided_by = s.classes, s.cj[0], RULES[flags.rule]
    n_all = len(audit)
    nr_counts = flags.counts
    cj_class = _spread(find_label_issues_confident_joint(s.probs, s.given, t)[1], -1, s.tiebreak, n_all, int)
    label_side = [i for i in issues_in("label") if i.name != "label"]
    image_side = issues_in("image") + issues_in("features")
    probs = audit[[f"p_{c}" for c in classes]].to_numpy(dtype=float)
    cidx = {c: i for i, c in enumerate(classes)}
    records = audit.to_dict("records")
    out = []
    for i, row in enumerate(records):
        trained, given, fs, q = row["trained"], row["given_label"], row["face_status"], row["label_score"]
        view = RowView(row, probs[i], classes)
        parts = []
        if not trained:
            why = f"not trained (face_status={fs}"
            why += f": {face_reason[i]})" if face_reason[i] else ")"
            if not given:
                why = "not trained: no label"
            elif given not in cidx:
                why = f"not trained: label {given!r} is not one of the run's classes"
            parts.append(why)
            if fs == "duplicate" and row["duplicate_of"]:
                parts.append(f"duplicate of sample {row['duplicate_of']}")
        elif not np.isfinite(q):
            parts.append("not scored: the run left no probabilities for this sample")
        else:
            y = cidx[given]
            if row["is_label_issue"]:
                k = cj_class[i]
                parts.append(decided_by.reason(FlaggedRow(
                    given=given, suggested=row["suggested_label"], confidence=row["suggested_label_confidence"],
                    score=q, p_given=probs[i, y], class_threshold=t[y],
                    confident_class=classes[k] if k >= 0 else None, p_confident=probs[i, k] if k >= 0 else math.nan,
                    confident_threshold=t[k] if k >= 0 else math.nan, class_count=int(nr_counts[y]),
                    class_cut=cut[y], global_cut=s.mixture.threshold)))
            else:
                parts.append(f"label looks right: p({given})={probs[i, y]:.2f}, label_score {q:.2f}")
            parts += [issue.reason(view, issue_stats) for issue in label_side if row[issue.flag_column]]
            if fs not in ("ok", ""):
                parts.append(f"face_status={fs}" + (f" ({face_reason[i]})" if face_reason[i] else ""))
        parts += [issue.reason(view, issue_stats) for issue in image_side if row[issue.flag_column]]
        out.append("; ".join(p for p in parts if p))
    return out


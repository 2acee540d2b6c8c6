"""Stage 3: a run's predictions → WS/audit.parquet (one row per manifest sample) + WS/report.html.

Reads WS/manifest.parquet, WS/runs/<run>/predictions.parquet and config.json (for the class list);
the scoring itself is ``fercure.audit.build_audit``. Re-running with other options rewrites the
audit without retraining.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from fercure import audit as core
from fercure import embedding_map
from fercure import evidence as ev_core
from fercure import export as export_core
from fercure import dynamics_signals
from fercure import groups as grouping
from fercure import health, schema
from fercure import review_calibration as rc
from fercure import trusted as trusted_labels
from fercure import votes as vote_files
from fercure.photos import require_labels
from fercure.progress import NULL, Reporter
from fercure.report import render_report
from fercure.workspace import (
    Workspace,
    WorkspaceError,
    atomic_path,
    read_metadata,
    read_table,
    write_table,
)

# Keys of build_audit's stats that decide the flags; they travel as the audit's "thresholds".
THRESHOLD_KEYS = (
    "method", "threshold_method", "threshold_method_used", "distribution", "class_thresholds", "noise_rate",
    "mixture", "confident_joint_n_flagged", "suggest_from", "ambiguity_margin", "ambiguity_max_confidence", "blur_threshold",
)


class AuditInputError(WorkspaceError):
    """The run's predictions do not fit the manifest or the options (message says what to do)."""


NO_RUN = "none"  # --run none: audit from --pred-probs / --features alone, even where a run exists
# Signals that need no run (the others read a run's training dynamics).
NO_RUN_SIGNALS = ("self_confidence", "knn")


@dataclass
class AuditSummary:
    run_id: str | None  # None: audited from --pred-probs / --features without a run
    n_samples: int  # manifest rows = audit rows
    n_trained: int
    n_label_issues: int
    n_ambiguous: int
    # index: class; n, n_label_issues, n_ambiguous, mean_label_score, threshold (the noise-rate score
    # cut under the default threshold method, the confident-joint threshold otherwise)
    per_class: pd.DataFrame
    transition_matrix: pd.DataFrame  # rows: given label, columns: suggested label, counts
    thresholds: dict
    face_issues: dict[str, int]  # rows per registered issue that is not about the label (duplicate, blur, ...)
    audit_path: Path
    report_path: Path | None
    seconds: float
    model_verdict: str = "unknown"  # ok | weak | too_weak | unknown (see fercure.train.detection)
    model_strength: str = ""  # the verdict in a sentence: probe accuracy vs chance, planted flips
    self_check: dict = field(default_factory=dict)  # planted flips: how many, how well ranked
    error_share: dict = field(default_factory=dict)  # planted vs reviewed estimate, and the one used
    evidence: dict[str, int] = field(default_factory=dict)  # audit rows per evidence (fercure run, pred-probs, …)
    # label health (fercure.health.HealthSummary.as_dict): per class share of wrong labels, overall figure
    health_summary: dict = field(default_factory=dict)
    # what to say about --pred-probs / --features (renormalised rows, in-sample, fallbacks): via ``warning``
    evidence_notes: list[str] = field(default_factory=list, metadata={"hidden": True})
    annotators: dict = field(default_factory=dict)  # with a vote file: images with votes, disagreements, lowest quality
    review_queue: dict = field(default_factory=dict)  # which order review_rank follows, and the AUROCs behind it
    # the verdict's two parts (fercure.strength): how well the queue finds wrong labels, with its interval,
    # and how often a suggestion was the reviewer's choice (None until enough decided cards)
    ranking: dict = field(default_factory=dict)
    suggestions: dict = field(default_factory=dict)
    # group cards (fercure.groups): how many, how many flagged samples they hold, the embedding behind them
    group_cards: dict = field(default_factory=dict)

    @property
    def warning(self) -> str | None:
        """What the terminal shows under the summary: a model that is not strong, and what the
        --pred-probs / --features files needed (renormalised, in-sample, a rule that fell back)."""
        parts = ([self.model_strength] if self.model_verdict in ("weak", "too_weak") else []) + self.evidence_notes
        return "\n".join(parts) or None


def _classes(ws: Workspace, run_id: str, predictions_path: Path) -> list[str]:
    config = ws.run_dir(run_id) / "config.json"
    if config.exists():
        try:
            classes = json.loads(config.read_text(encoding="utf-8")).get("classes")
        except json.JSONDecodeError as e:
            raise AuditInputError(f"{config} is not valid JSON ({e}); re-run `fercure train -w {ws.root}`.") from e
        if classes:
            return [str(c) for c in classes]
    classes = read_metadata(predictions_path).get("classes") or read_metadata(ws.manifest).get("classes")
    if not classes:
        raise AuditInputError(f"Neither {config} nor {predictions_path} names the run's classes; "
                              f"re-run `fercure train -w {ws.root}`.")
    return [str(c) for c in classes]


def run_audit(
    workspace: Workspace | Path | str,
    *,
    run_id: str | None = None,
    report_path: Path | str | None = None,
    reporter: Reporter = NULL,
    method: str | Mapping[str, float] = core.DEFAULT_SCORE,
    threshold_method: str = core.DEFAULT_THRESHOLD,
    write_report: bool = True,
    pred_probs: Path | str | None = None,
    features: Path | str | None = None,
    trusted_files: Sequence[str | Path] = (),
    queue_order: str = "auto",
    groups: grouping.GroupSettings | None = grouping.DEFAULT_SETTINGS,
    list_missed_faces: bool = False,
) -> AuditSummary:
    """Score every manifest sample's label with run ``run_id`` (default: the latest finished run),
    the user's ``pred_probs`` file, their ``features`` file, or any of them joined (``fercure.evidence``).

    With ``pred_probs`` or ``features`` and no finished run (or ``run_id="none"``) the audit needs
    no run. Writes WS/audit.parquet (Parquet metadata: run_id, thresholds, classes, stats) and,
    unless ``write_report`` is False, the HTML report at ``report_path`` (default WS/report.html).
    ``method`` and ``threshold_method`` are passed to ``fercure.audit.build_audit``.
    ``trusted_files``: a reviewer's decisions (the files ``train --trusted`` reads) applied without
    retraining: those rows are never flagged again, and they re-rank the rest (``fercure.rerank``);
    kept in WS/reviewed.parquet. ``queue_order``: one of ``fercure.rerank.QUEUE_ORDERS``. ``groups``: how flagged look-alikes are grouped into one card (None: no groups;
    ``group_id`` stays empty).
    ``list_missed_faces``: the report lists a pre-cropped face the detector missed as a face problem.
    """
    start = time.perf_counter()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(Path(workspace))
    ws.require(ws.manifest, "prepare")
    require_labels(ws.manifest, "audit-labels")
    external = pred_probs is not None or features is not None
    run_id = _which_run(ws, run_id, external)
    task = reporter.task("audit", 4)
    if run_id is not None:
        predictions_path = _predictions_path(ws, run_id)
        manifest, predictions, classes = _read_inputs(ws, run_id, predictions_path)
        run_meta = read_metadata(predictions_path)
        trusted = trusted_labels.read(ws.run_dir(run_id))  # the samples a reviewer decided (train --trusted)
    else:
        predictions_path, predictions, run_meta, trusted = None, None, {}, None
        manifest, classes = _read_manifest(ws)
    ev = _read_evidence(ws, manifest, classes, pred_probs, features, reporter)  # refused files: nothing written
    task.advance()

    # decisions made since (audit-labels --trusted): applied without retraining
    decided = trusted_labels.load(ws, [str(f) for f in trusted_files], classes, reporter, stage="audit-labels")
    if run_id is not None:
        predictions = _with_dynamics_signals(predictions, ws.run_dir(run_id))
    method, threshold_method = _options_for(ev, run_id, method, threshold_method)
    distribution, suggest_from = ev_core.distribution_families(ev, run_id is not None)
    preds = ev_core.predictions_table(manifest, classes, ev, predictions) if external else predictions
    where = f"run {run_id!r} ({predictions_path})" if run_id else "the given files"
    try:
        table, stats = core.build_audit(manifest, preds, classes, method=method,
                                        threshold_method=threshold_method, distribution=distribution,
                                        suggest_from=suggest_from, run_meta=run_meta, reviewed=trusted,
                                        decided=decided.table if decided is not None else None,
                                        queue_order=queue_order, features=ev.feature_signals)
    except ValueError as e:
        raise AuditInputError(f"Cannot audit {where} against {ws.manifest}: {e}. "
                              f"If the manifest changed after training, re-run `fercure train -w {ws.root}`.") from e
    _add_evidence(table, stats, manifest, classes, ev, predictions, run_id)
    table = _with_votes(ws, table, stats, classes)
    neighbours = _embedding_columns(table, ws.run_dir(run_id) if run_id else None, stats, groups, ev)
    task.advance()

    provenance = dict(run_meta.get("trusted") or {})
    if decided is not None:
        provenance["audit_trusted"] = trusted_labels.provenance(decided)
        # where each decided card stood when decided, for the next round's train/audit --trusted
        trusted_labels.write_reviewed(ws, decided, {"run_id": run_id, "trusted": provenance["audit_trusted"]})
    out_report: Path | None = None
    if write_report:
        # The report is rendered and written (not yet renamed into place) before the audit is replaced,
        # and put in place after it: a full disk leaves the old pair, never a new audit beside an old report.
        out_report = Path(report_path) if report_path is not None else ws.report
        html = _render_report(ws, table, stats, classes, run_id=run_id, manifest=manifest, neighbours=neighbours,
                              list_missed_faces=list_missed_faces)
        with atomic_path(out_report) as tmp:
            tmp.write_text(html, encoding="utf-8")
            thresholds = _write_audit(ws, table, stats, run_id, classes, predictions_path, provenance)
            task.advance()
    else:
        thresholds = _write_audit(ws, table, stats, run_id, classes, predictions_path, provenance)
        task.advance()
    task.advance()
    task.close()
    verdict = stats["model_strength"].get("verdict")
    if verdict in ("weak", "too_weak"):
        reporter.log(f"audit-labels: {stats['model_strength'].get('message')}")

    return AuditSummary(
        run_id=run_id,
        n_samples=stats["n_samples"],
        n_trained=stats["n_trained"],
        n_label_issues=stats["n_label_issues"],
        n_ambiguous=stats["n_ambiguous"],
        per_class=_per_class_frame(stats),
        transition_matrix=_transition_frame(stats, classes),
        thresholds=thresholds,
        face_issues={i.name: stats[i.stats_key] for i in core.ISSUES.values() if i.section != "label"},
        audit_path=ws.audit,
        report_path=out_report,
        seconds=time.perf_counter() - start,
        model_verdict=str(stats["model_strength"].get("verdict", "unknown")),
        model_strength=str(stats["model_strength"].get("message", "")),
        self_check=_self_check_rows(stats["self_check"]),
        error_share=_error_share_rows(stats["calibration"]),
        evidence=dict(stats["evidence"]["rows"]),
        health_summary=stats["health_summary"],
        evidence_notes=ev.warnings + ev.notes,
        annotators=_annotator_rows(stats.get("annotators")),
        review_queue=_queue_rows(stats["queue"]),
        ranking=_ranking_rows(stats["model_strength"].get("ranking")),
        suggestions=_suggestion_rows(stats["model_strength"].get("suggestions")),
        group_cards=_group_rows(stats["groups"]),
    )


def _group_rows(g: dict) -> dict:
    """The group cards in a few words for the summary (nothing when grouping was off)."""
    if not g.get("enabled"):
        return {}
    if not g.get("neighbours"):
        return {"group_cards": 0, "why_none": "no embedding neighbours (a run before 0.5, --knn 0, or no run)"}
    return {"group_cards": g["n_groups"], "samples_on_group_cards": g["n_grouped_rows"],
            "tightness": g["settings"]["tightness"], "min_similarity": g.get("min_similarity"),
            "embedding": g.get("from")}


def _ranking_rows(r: dict | None) -> dict:
    """The ranking's strength as machine keys: what measured it, the AUROC and its 95 % interval."""
    if not r or r.get("source") is None:
        return {}
    return {"measured_on": r["source"], "auroc": r["auroc"], "auroc_lo": r["lo"], "auroc_hi": r["hi"],
            "n_wrong": r["n_pos"], "n_right": r["n_neg"], "beats_chance": r["useful"]}


def _suggestion_rows(sg: dict | None) -> dict:
    """The suggestions' strength as machine keys: decided cards that offered one, how many took it."""
    if not sg:
        return {}
    rows = {"cards": sg["n"], "chosen": sg["k"], "share": sg["share"], "share_lo": sg["lo"], "share_hi": sg["hi"],
            "judged": sg["judged"] or "not enough cards"}
    return {k: v for k, v in rows.items() if v is not None}  # what was not measured is left out


def _which_run(ws: Workspace, run_id: str | None, external: bool) -> str | None:
    """The run to audit with: the one named, else the latest; none for ``--run none`` or when files
    were given and the workspace has no finished run."""
    if run_id == NO_RUN:
        if not external:
            raise AuditInputError(f"--run {NO_RUN} audits from --pred-probs / --features alone: pass one of them, "
                                  f"or name a run of {ws.runs_dir}.")
        return None
    if run_id is None and external and not (ws.runs_dir / "LATEST").exists():
        return None
    return run_id or ws.latest_run()


def _read_manifest(ws: Workspace) -> tuple[pd.DataFrame, list[str]]:
    """The manifest and its classes, for an audit without a run."""
    manifest = read_table(ws.manifest)
    for col in ("sample_id", "source_path", "label"):
        if col not in manifest.columns:
            raise AuditInputError(f"{ws.manifest} has no column {col!r}; re-run `fercure prepare`.")
    classes = read_metadata(ws.manifest).get("classes")
    if not classes:
        raise AuditInputError(f"{ws.manifest} names no classes; re-run `fercure prepare` with a label file.")
    return manifest, [str(c) for c in classes]


def _read_evidence(ws: Workspace, manifest: pd.DataFrame, classes: list[str], pred_probs, features,
                   reporter: Reporter) -> ev_core.Evidence:
    """The --pred-probs / --features files, checked (``fercure.evidence``), with what to say about them."""
    ev = ev_core.Evidence()
    root = ws.prepared_inputs()[0] if pred_probs is not None or features is not None else None
    if pred_probs is not None:
        ev.pred_probs = ev_core.load_pred_probs(pred_probs, manifest, classes, input_root=root)
        if ev.pred_probs.n_renormalised:
            ev.notes.append(f"{pred_probs}: {ev.pred_probs.n_renormalised:,} row(s) did not sum to 1 exactly (off "
                            f"by at most {ev.pred_probs.max_sum_error:.2g}, within the {ev_core.SUM_TOLERANCE:g} "
                            f"rounding allows) and were renormalised.")
        warn = ev_core.in_sample_warning(ev.pred_probs)
        if warn:
            ev.warnings.append(warn)
            reporter.log(f"audit-labels: {warn}")
    if features is not None:
        ev.features = ev_core.load_features(features, manifest, classes, input_root=root)
        ev.feature_signals = ev_core.feature_signals(ev.features, manifest, classes)
    return ev


def _options_for(ev: ev_core.Evidence, run_id: str | None, method, threshold_method: str):
    """The score and rule the evidence allows, and a note where they differ from what was asked.

    Without a run the label score is the file's p(given) (``self_confidence``; the neighbours'
    agreement, ``knn``, with features alone) and the retrain / planted rules, which need fercure's
    run, hand over to the confident joint's noise-rate count. With a run and --pred-probs the
    score is the run's score and the file's p(given) averaged."""
    if ev.pred_probs is None and ev.features is None:
        return method, threshold_method
    if run_id is None:
        own = "self_confidence" if ev.pred_probs is not None else "knn"
        if method == core.DEFAULT_SCORE:
            method = own
        elif not (isinstance(method, str) and method in NO_RUN_SIGNALS):
            raise AuditInputError(f"--score {method} reads a fercure run's training; without a run choose one of "
                                  f"{', '.join(NO_RUN_SIGNALS)} (or train first: `fercure train`).")
        asked = core.RULES[threshold_method]
        if asked.needs_run:
            ev.notes.append(f"No fercure run: the {asked.name} rule needs one ({asked.reads}), so the "
                            f"{asked.hands_over_to} rule ({core.RULES[asked.hands_over_to].summary}) decides which "
                            f"labels are issues.")
        return method, threshold_method
    if ev.pred_probs is not None and isinstance(method, str) and method != "self_confidence":
        return {method: 1.0, "self_confidence": 1.0}, threshold_method
    return method, threshold_method


def _add_evidence(table: pd.DataFrame, stats: dict, manifest: pd.DataFrame, classes: list[str],
                  ev: ev_core.Evidence, predictions: pd.DataFrame | None, run_id: str | None) -> None:
    """The audit's columns and stats that are not about one run: each row's evidence, the label-health
    summary."""
    scored = table["trained"].to_numpy(bool)
    evidence = (np.where(scored, "fercure run", "not scored") if ev.pred_probs is None and ev.features is None
                else ev_core.evidence_column(manifest, scored, ev, predictions))
    table.insert(table.columns.get_loc("reason"), "evidence", evidence)  # before the reason, as the contract lists them
    stats["evidence"] = {**ev.as_dict(), "run_id": run_id,
                         "rows": {str(k): int(v) for k, v in table["evidence"].value_counts().items()}}
    cidx = {c: i for i, c in enumerate(classes)}
    given = np.array([cidx.get(str(g), -1) for g in table["given_label"]], dtype=np.int64)
    probs = table[[f"p_{c}" for c in classes]].to_numpy(dtype=float)
    source = ("the --pred-probs file's probabilities" if ev.pred_probs is not None
              else "the run's in-sample probabilities (mean over epochs: labels the model memorised, wrong ones "
                   "too, lower the estimate)" if run_id is not None
              else "the --features neighbours' label vote")
    stats["health_summary"] = health.health_summary(probs, given, classes, source=source).as_dict()


def _with_votes(ws: Workspace, table: pd.DataFrame, stats: dict, classes: list[str]) -> pd.DataFrame:
    """With a vote file's annotations: the audit's vote columns, the annotators' disagreement in the
    reason, and each annotator's record in ``stats["annotators"]``."""
    if not ws.annotations.exists():
        return table
    table = table.reset_index(drop=True)
    va = vote_files.audit_votes(read_table(ws.annotations), table["sample_id"].astype(str).tolist(),
                                table["given_label"].tolist(), table[[f"p_{c}" for c in classes]].to_numpy(float),
                                classes)
    for col in va.columns.columns:  # before the reason, which stays last
        table.insert(table.columns.get_loc("reason"), col, va.columns[col].to_numpy())
    flag = table["is_disagreement_issue"].to_numpy(bool)
    said = [f"annotators disagree ({v}; {a:.0%} of the votes for the label)"
            for v, a in zip(table.loc[flag, "votes"], table.loc[flag, "annotator_agreement"])]
    table.loc[flag, "reason"] = ["; ".join(x for x in (r if isinstance(r, str) else "", s) if x)
                                 for r, s in zip(table.loc[flag, "reason"], said)]
    stats["annotators"] = {"n_images": va.n_images, "n_disagreement": va.n_disagreement,
                           "disagreement_below": vote_files.DISAGREEMENT_BELOW, "per_annotator": va.annotators}
    return table


def _annotator_rows(info: dict | None) -> dict:
    """The vote file's figures for the terminal: counts, and the annotator least in line with the consensus."""
    if not info:
        return {}
    named = [r for r in info["per_annotator"] if r["annotator"]]
    # not all counts: the terminal shows them as figures, not as a table with a total
    out = {"images_with_votes": info["n_images"], "annotators_disagree": info["n_disagreement"],
           "disagree_below": info["disagreement_below"],
           "annotators": len(named) if named else "anonymous vote counts"}
    if len(named) > 1:
        worst = named[0]
        out["lowest_quality"] = (f"{worst['annotator']}: quality {worst['quality']:.2f}, agrees with the consensus "
                                 f"{worst['agreement_with_consensus']:.0%}, with the model "
                                 f"{worst['agreement_with_model']:.0%}")
    return out


def _with_dynamics_signals(predictions: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """The predictions with the signals of the run's per-epoch records (``fercure.dynamics_signals``)
    joined by sample; as they are when the run kept no dynamics table."""
    path = run_dir / "dynamics.parquet"
    if not path.exists():
        return predictions
    sig = dynamics_signals.from_dynamics(read_table(path)).frame()
    cols = [c for c in sig.columns if c != "sample_id"]
    return predictions.drop(columns=[c for c in cols if c in predictions.columns]).merge(
        sig, on="sample_id", how="left", validate="one_to_one")


def _queue_rows(queue: dict) -> dict:
    """Which order the review queue follows, and the AUROCs on the reviewed rows that chose it
    (machine keys; the terminal shows them with spaces)."""
    names = {"score": "hand-made score", "rerank": "re-ranker (fitted on the reviewed rows)",
             "unambiguous": "likely wrong and unambiguous first (--queue-order unambiguous)"}
    out = {"order": names.get(queue.get("order"), queue.get("order")), "n_in_queue": queue.get("n_ranked")}
    fit = queue.get("rerank")
    if fit:
        out.update({"n_reviewed_learned_from": fit["n_reviewed"], "n_reviewed_wrong": fit["n_errors"],
                    "n_spot_checks": fit["n_spot_checks"],
                    "rerank_auroc_cross_validated": fit["cv_auroc"],  # on the reviewed rows
                    "hand_made_auroc": fit["hand_auroc"],  # the same rows
                    "why": fit["why"]})
    return {k: v for k, v in out.items() if v is not None}


def _predictions_path(ws: Workspace, run_id: str) -> Path:
    """The run's predictions table; a run without one did not finish, which the message says how to fix."""
    predictions_path = ws.run_dir(run_id) / "predictions.parquet"
    if not predictions_path.exists():
        raise AuditInputError(
            f"{predictions_path} does not exist: run {run_id!r} did not finish (or no such run). "
            f"Run `fercure train -w {ws.root}` (or --resume), or pick a finished run with --run.")
    return predictions_path


def _read_inputs(ws: Workspace, run_id: str, predictions_path: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Manifest, predictions and the run's classes, with the columns the audit needs checked up front so a
    stale workspace fails with what to re-run rather than a KeyError deep in the scoring."""
    manifest = read_table(ws.manifest)
    predictions = read_table(predictions_path)
    classes = _classes(ws, run_id, predictions_path)
    for col in ("sample_id", "source_path", "label"):
        if col not in manifest.columns:
            raise AuditInputError(f"{ws.manifest} has no column {col!r}; re-run `fercure prepare`.")
    if "sample_id" not in predictions.columns:
        raise AuditInputError(f"{predictions_path} has no sample_id column; re-run `fercure train`.")
    return manifest, predictions, classes


def _write_audit(ws: Workspace, table: pd.DataFrame, stats: dict, run_id: str | None, classes: list[str],
                 predictions_path: Path | None, trusted: dict) -> dict:
    """WS/audit.parquet with its metadata (the flag-deciding stats apart as "thresholds"); returns those."""
    thresholds = {k: stats[k] for k in THRESHOLD_KEYS if k in stats}
    meta = {
        "run_id": run_id, "classes": classes, "thresholds": thresholds,
        "stats": {k: v for k, v in stats.items() if k not in THRESHOLD_KEYS},
        "predictions": str(predictions_path) if predictions_path else None,
        "trusted": trusted,
    }
    write_table(table, ws.audit, meta, table=schema.AUDIT)
    return thresholds


def read_embedding(run_dir: Path | None, sample_ids: np.ndarray) -> tuple[np.ndarray, grouping.Neighbours | None]:
    """The run's embedding.parquet aligned with ``sample_ids``: principal components (N, d; NaN rows
    where the run has none) and nearest neighbours as positions in ``sample_ids`` (None when the run
    kept none: a run of fercure before 0.5, ``--knn 0``, or no run at all)."""
    n = len(sample_ids)
    path = run_dir / "embedding.parquet" if run_dir is not None else None
    if path is None or not path.exists():
        return np.full((n, 0), np.nan), None
    emb = read_table(path)
    where = pd.Series(np.arange(len(emb)), index=emb["sample_id"].astype(str).to_numpy())
    rows = where.reindex(np.asarray(sample_ids, dtype=str)).fillna(-1).to_numpy(dtype=np.int64)
    comps = [np.asarray(c, dtype=np.float64) for c in emb["components"]]
    d = max((len(c) for c in comps), default=0)
    dense = np.full((len(emb) + 1, d), np.nan)  # last row: the samples the run did not place
    for i, c in enumerate(comps):
        if len(c) == d:
            dense[i] = c
    k = max((len(x) for x in emb["neighbours"]), default=0)
    if not k:
        return dense[rows], None
    index = np.full((len(emb), k), -1, dtype=np.int64)
    sim = np.full((len(emb), k), np.nan, dtype=np.float32)
    for i, (nb, ns) in enumerate(zip(emb["neighbours"], emb["neighbour_similarity"])):
        index[i, :len(nb)] = nb
        sim[i, :len(ns)] = ns
    return dense[rows], grouping.Neighbours(index, sim).take(rows, n)


def group_candidates(table: pd.DataFrame) -> np.ndarray:
    """The rows a group card may hold: flagged label issues no reviewer decided, spot checks left out
    (a spot check is decided blind and alone: it estimates the share of wrong labels)."""
    flagged = table["is_label_issue"].fillna(False).astype(bool).to_numpy().copy()
    reviewed = table["is_reviewed"].fillna(False).astype(bool).to_numpy() if "is_reviewed" in table.columns \
        else np.zeros(len(table), bool)
    flagged &= ~reviewed
    flagged[rc.spot_checks(table["sample_id"].astype(str).to_numpy(), table["label_score"].to_numpy(dtype=float),
                           reviewed)] = False
    return flagged


def queue_positions(table: pd.DataFrame, flagged: np.ndarray) -> np.ndarray:
    """Row positions in review order (a group's first card is the one the queue reaches first): the
    audit's ``review_rank`` where it has one, else the queue's key (``review_calibration.queue_key``)."""
    if "review_rank" in table.columns:
        rank = table["review_rank"].astype("float64").to_numpy()
        return np.lexsort((np.arange(len(table)), np.nan_to_num(rank, nan=np.inf)))
    key = rc.queue_key(table["label_score"].to_numpy(dtype=float),
                       table["retrain_p_given"].to_numpy(dtype=float) if "retrain_p_given" in table.columns
                       else np.full(len(table), np.nan), flagged)
    return np.lexsort((np.arange(len(table)), np.nan_to_num(key, nan=2.0)))


def features_embedding(ev: ev_core.Evidence, n: int) -> tuple[np.ndarray, grouping.Neighbours | None]:
    """A --features file as ``read_embedding`` gives a run's: its principal components and neighbours
    on the ``n`` manifest rows (the audit's; NaN / none where the file has no row)."""
    ft, fs = ev.features, ev.feature_signals
    comps = embedding_map.principal_components(ft.vectors)
    dense = np.full((n, comps.shape[1]), np.nan)
    dense[ft.positions] = comps
    rows = np.full(n, -1, dtype=np.int64)
    rows[ft.positions] = np.arange(len(ft.positions))
    nb = fs.neighbours.take(rows, n) if fs is not None and fs.neighbours is not None and fs.k else None
    return dense, nb


def _embedding_columns(table: pd.DataFrame, run_dir: Path | None, stats: dict,
                       settings: grouping.GroupSettings | None,
                       ev: ev_core.Evidence | None = None) -> grouping.Neighbours | None:
    """Add the map's coordinates and the group cards' ``group_id`` to ``table`` (in place) from the
    embedding the audit judged neighbours by (a --features file's, else the run's); returns the
    neighbours (aligned with the table) for the report's similar faces."""
    ids = table["sample_id"].astype(str).to_numpy()
    if ev is not None and ev.features is not None:
        comps, neighbours = features_embedding(ev, len(ids))
    else:
        comps, neighbours = read_embedding(run_dir, ids)
    xy = embedding_map.project(comps)
    table["map_x"], table["map_y"] = xy[:, 0], xy[:, 1]
    table["group_id"] = ""
    found = None
    if settings is not None:
        flagged = group_candidates(table)
        order = queue_positions(table, flagged)
        pos = pd.Series(np.arange(len(ids)), index=ids)
        dup = table["duplicate_of"].fillna("").astype(str)
        dup_pos = pos.reindex(dup.to_numpy()).fillna(-1).to_numpy(dtype=np.int64)
        found = grouping.find_groups(order, flagged, table["given_label"].astype(str).to_numpy(),
                                     table["suggested_label"].astype(str).to_numpy(), neighbours, dup_pos, settings)
        table["group_id"] = found.ids(ids)
    stats["groups"] = {
        "enabled": settings is not None, "embedding": bool(comps.shape[1]), "neighbours": neighbours is not None,
        "from": "features" if ev is not None and ev.features is not None else "run" if comps.shape[1] else None,
        "settings": None if settings is None else {"tightness": settings.tightness, "max_size": settings.max_size,
                                                   "same_suggestion": settings.same_suggestion},
        "min_similarity": None if found is None or not np.isfinite(found.min_similarity) else found.min_similarity,
        "n_groups": 0 if found is None else found.n_groups,
        "n_grouped_rows": 0 if found is None else int((found.group >= 0).sum()),
    }
    return neighbours


def _render_report(ws: Workspace, table: pd.DataFrame, stats: dict, classes: list[str], *, run_id: str | None,
                   manifest: pd.DataFrame, neighbours: grouping.Neighbours | None = None,
                   list_missed_faces: bool = False) -> str:
    """The HTML report, with the crops, rejects and default export actions it shows."""
    crops = np.load(ws.store, mmap_mode="r") if ws.store.exists() else None
    rejects = read_table(ws.rejects) if ws.rejects.exists() else None
    # what `export-cleaned` with its default policy would do, shown on each card beside the decision
    actions = export_core.apply_policy(table, classes, model_verdict=stats["model_strength"].get("verdict"))["action"]
    html = render_report(table, stats, classes, crops=crops, run_id=run_id, manifest=manifest,
                         rejects=rejects, actions=actions.tolist(), workspace=str(ws.root.resolve()),
                         input_root=ws.prepared_inputs()[0], neighbours=neighbours,
                         list_missed_faces=list_missed_faces)
    return html


def _per_class_frame(stats: dict) -> pd.DataFrame:
    """``stats["per_class"]`` as the summary's table, one row per class, with the health summary's
    estimated share of wrong labels and its 95 % interval."""
    per_class = pd.DataFrame.from_dict(stats["per_class"], orient="index")
    health_rows = (stats.get("health_summary") or {}).get("classes") or {}
    if health_rows and len(per_class):
        est = {c: health_rows.get(c, {}) for c in per_class.index}
        per_class["est_wrong_share"] = [est[c].get("label_noise") for c in per_class.index]
        per_class["est_wrong_lo"] = [(est[c].get("label_noise_interval") or (None, None))[0] for c in per_class.index]
        per_class["est_wrong_hi"] = [(est[c].get("label_noise_interval") or (None, None))[1] for c in per_class.index]
    per_class.index.name = "class"
    # a column no class has a value in (threshold under a method that sets none) says nothing
    return per_class.dropna(axis=1, how="all")


def _transition_frame(stats: dict, classes: list[str]) -> pd.DataFrame:
    """``stats["transition_matrix"]`` labelled: rows the given label, columns the suggested one."""
    return pd.DataFrame(stats["transition_matrix"], index=pd.Index(classes, name="given"),
                        columns=pd.Index(classes, name="suggested"))


def _error_share_rows(cal: dict) -> dict:
    """The share of wrong labels as the planted flips and the reviewed rows estimate it, side by side;
    machine keys (the terminal shows them with spaces), and what was not measured left out."""
    rv = cal.get("reviewed") or {}
    rows = {"planted_flips": cal["planted"]["share"] if cal.get("planted") else None,
            "reviewed_rows": rv.get("share"),
            "reviewed_rows_lo": rv.get("lo") if rv.get("share") is not None else None,  # its 95 % interval
            "reviewed_rows_hi": rv.get("hi") if rv.get("share") is not None else None,
            "n_reviewed": rv.get("n_reviewed") or None, "n_reviewed_wrong": rv.get("n_errors") if rv.get("n_reviewed") else None,
            "n_spot_checks": rv.get("n_spot_checks") or None,
            "spot_checks_wrong": rv.get("spot_check_error_rate"),
            "n_image_drops": rv.get("n_image_drops") or None,  # drops of face / quality cards: not label errors
            "why_not_reviewed": rv.get("why") if rv.get("share") is None and rv.get("n_reviewed") else None,
            "used": cal.get("used")}
    return {k: v for k, v in rows.items() if v is not None}


def _self_check_rows(sc: dict) -> dict:
    """The planted-flip self-check as a few readable numbers for the terminal summary."""
    out = {}
    if sc.get("n_planted"):
        out["planted_flips"] = sc["n_planted"]
        for key, label in (("auroc_mean_p", "planted_auroc"), ("recall_at_estimated_share", "planted_found_at_estimated_share"),
                           ("estimated_error_share", "estimated_error_share")):
            if sc.get(key) is not None:
                out[label] = round(float(sc[key]), 3)
    return out

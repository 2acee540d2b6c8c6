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
from typing import Mapping

import numpy as np
import pandas as pd

from fercure import audit as core
from fercure import export as export_core
from fercure import schema
from fercure import trusted as trusted_labels
from fercure.progress import NULL, Reporter
from fercure.report import render_report
from fercure.workspace import (
    Workspace,
    WorkspaceError,
    atomic_write_text,
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


@dataclass
class AuditSummary:
    run_id: str
    n_samples: int  # manifest rows = audit rows
    n_trained: int
    n_label_issues: int
    n_ambiguous: int
    # index: class; n, n_label_issues, n_ambiguous, mean_label_score, threshold (the noise-rate score
    # cut under the default threshold method, the confident-joint threshold otherwise)
    per_class: pd.DataFrame
    transition_matrix: pd.DataFrame  # rows: given label, columns: suggested label, counts
    thresholds: dict
    face_issues: dict[str, int]  # duplicate / no_face / blur / unreadable counts
    audit_path: Path
    report_path: Path | None
    seconds: float
    model_verdict: str = "unknown"  # ok | weak | too_weak | unknown (see fercure.train.detection)
    model_strength: str = ""  # the verdict in a sentence: probe accuracy vs chance, planted flips
    self_check: dict = field(default_factory=dict)  # planted flips: how many, how well ranked
    error_share: dict = field(default_factory=dict)  # planted vs reviewed estimate, and the one used

    @property
    def warning(self) -> str | None:
        """What the terminal shows in red/yellow under the summary when the model is not strong."""
        return self.model_strength if self.model_verdict in ("weak", "too_weak") else None


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
) -> AuditSummary:
    """Score every manifest sample's label with run ``run_id`` (default: the latest finished run).

    Writes WS/audit.parquet (Parquet metadata: run_id, thresholds, classes, stats) and, unless
    ``write_report`` is False, the HTML report at ``report_path`` (default WS/report.html).
    ``method`` and ``threshold_method`` are passed to ``fercure.audit.build_audit``.
    """
    start = time.perf_counter()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(Path(workspace))
    ws.require(ws.manifest, "prepare")
    run_id = run_id or ws.latest_run()
    predictions_path = _predictions_path(ws, run_id)
    task = reporter.task("audit", 4)
    manifest, predictions, classes = _read_inputs(ws, run_id, predictions_path)
    task.advance()

    trusted = trusted_labels.read(ws.run_dir(run_id))  # the samples a reviewer decided (train --trusted)
    run_meta = read_metadata(predictions_path)
    try:
        table, stats = core.build_audit(manifest, predictions, classes, method=method,
                                        threshold_method=threshold_method,
                                        run_meta=run_meta, reviewed=trusted)
    except ValueError as e:
        raise AuditInputError(f"Cannot audit run {run_id!r} ({predictions_path}) against {ws.manifest}: {e}. "
                              f"If the manifest changed after training, re-run `fercure train -w {ws.root}`.") from e
    task.advance()

    thresholds = _write_audit(ws, table, stats, run_id, classes, predictions_path, run_meta.get("trusted") or {})
    task.advance()

    out_report: Path | None = None
    if write_report:
        out_report = Path(report_path) if report_path is not None else ws.report
        _write_report(ws, out_report, table, stats, classes, run_id, manifest)
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
        face_issues={
            "duplicate": stats["n_duplicate_issues"], "no_face": stats["n_no_face_issues"],
            "blur": stats["n_blur_issues"], "unreadable": int(table["is_unreadable_issue"].sum()),
        },
        audit_path=ws.audit,
        report_path=out_report,
        seconds=time.perf_counter() - start,
        model_verdict=str(stats["model_strength"].get("verdict", "unknown")),
        model_strength=str(stats["model_strength"].get("message", "")),
        self_check=_self_check_rows(stats["self_check"]),
        error_share=_error_share_rows(stats["calibration"]),
    )


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


def _write_audit(ws: Workspace, table: pd.DataFrame, stats: dict, run_id: str, classes: list[str],
                 predictions_path: Path, trusted: dict) -> dict:
    """WS/audit.parquet with its metadata (the flag-deciding stats apart as "thresholds"); returns those."""
    thresholds = {k: stats[k] for k in THRESHOLD_KEYS if k in stats}
    meta = {
        "run_id": run_id, "classes": classes, "thresholds": thresholds,
        "stats": {k: v for k, v in stats.items() if k not in THRESHOLD_KEYS},
        "predictions": str(predictions_path),
        "trusted": trusted,
    }
    write_table(table, ws.audit, meta, table=schema.AUDIT)
    return thresholds


def _write_report(ws: Workspace, out_report: Path, table: pd.DataFrame, stats: dict, classes: list[str],
                  run_id: str, manifest: pd.DataFrame) -> None:
    """The HTML report at ``out_report``, with the crops, rejects and default export actions it shows."""
    crops = np.load(ws.store, mmap_mode="r") if ws.store.exists() else None
    rejects = read_table(ws.rejects) if ws.rejects.exists() else None
    # what `export-cleaned` with its default policy would do, shown on each card beside the decision
    actions = export_core.apply_policy(table, classes, model_verdict=stats["model_strength"].get("verdict"))["action"]
    html = render_report(table, stats, classes, crops=crops, run_id=run_id, manifest=manifest,
                         rejects=rejects, actions=actions.tolist(), workspace=str(ws.root.resolve()),
                         input_root=ws.prepared_inputs()[0])
    atomic_write_text(out_report, html)


def _per_class_frame(stats: dict) -> pd.DataFrame:
    """``stats["per_class"]`` as the summary's table, one row per class."""
    per_class = pd.DataFrame.from_dict(stats["per_class"], orient="index")
    per_class.index.name = "class"
    return per_class


def _transition_frame(stats: dict, classes: list[str]) -> pd.DataFrame:
    """``stats["transition_matrix"]`` labelled: rows the given label, columns the suggested one."""
    return pd.DataFrame(stats["transition_matrix"], index=pd.Index(classes, name="given"),
                        columns=pd.Index(classes, name="suggested"))


def _error_share_rows(cal: dict) -> dict:
    """The share of wrong labels as the planted flips and the reviewed rows estimate it, side by side."""
    rv = cal.get("reviewed") or {}
    return {"planted flips": cal["planted"]["share"] if cal.get("planted") else None,
            "reviewed rows": rv.get("share"),
            "reviewed rows (n, wrong, spot checks)": [rv.get("n_reviewed", 0), rv.get("n_errors", 0),
                                                     rv.get("n_spot_checks", 0)],
            "spot checks wrong": rv.get("spot_check_error_rate"),
            "why not reviewed": rv.get("why") if rv.get("share") is None and rv.get("n_reviewed") else None,
            "used": cal.get("used")}


def _self_check_rows(sc: dict) -> dict:
    """The planted-flip self-check as a few readable numbers for the terminal summary."""
    out = {}
    if sc.get("n_planted"):
        out["planted flips"] = sc["n_planted"]
        for key, label in (("auroc_mean_p", "ranked at AUROC"), ("recall_at_estimated_share", "found at the estimated error share"),
                           ("estimated_error_share", "estimated share of wrong labels")):
            if sc.get(key) is not None:
                out[label] = round(float(sc[key]), 3)
    return out

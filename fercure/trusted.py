"""`fercure train --trusted FILE`: a reviewer's decisions (or labels verified elsewhere) enter the run.

A trusted sample trains with its reviewed label, a dropped one leaves the run, and neither is ever
planted (``fercure.train.detection.plan_run``) nor flagged again (``fercure.audit.reviewed_step``).
The run keeps what it was given in runs/<id>/trusted.parquet (``schema.TRUSTED``), so the audit,
the report and the export show every reviewed row without reading the files again.

Bad rows are named (file, row, fix) and skipped; a file none of whose rows applies is an error.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from fercure import decisions as dec
from fercure import review_calibration as rc
from fercure import schema
from fercure.progress import Reporter
from fercure.workspace import Workspace, WorkspaceError, check_input_file, read_metadata, read_table, write_table

FILE = "trusted.parquet"  # in the run's folder
HINT = ("Pass a decisions file saved from the review report (CSV or JSON), or a CSV table of verified labels "
        "with the header sample_id,label (or path,label).")


def _current_audit(ws: Workspace) -> pd.DataFrame | None:
    """The workspace's audit (the one the report the decisions came from shows), None without one."""
    if not ws.audit.exists():
        return None
    try:
        return read_table(ws.audit)
    except WorkspaceError:
        return None


def _suggestions(audit: pd.DataFrame | None, sample_ids: Sequence[str]) -> list:
    """The current audit's suggestion per sample (what an ``accept`` decision means), None without one."""
    if audit is None or "suggested_label" not in audit.columns:
        return [None] * len(sample_ids)
    sugg = dict(zip(audit["sample_id"].astype(str), audit["suggested_label"]))
    return [sugg.get(s) for s in sample_ids]


def ranks_when_reviewed(ws: Workspace, audit: pd.DataFrame | None, sample_ids: Sequence[str]) -> np.ndarray:
    """(m,) the rank (``review_calibration.ranks_of``) each sample's label_score had in the audit the
    reviewer worked from: the workspace's audit; for a sample that audit already shows as reviewed (an
    earlier round), the rank its own run recorded then (its score since is about the reviewed label).
    NaN where no audit scored it."""
    out = np.full(len(sample_ids), np.nan)
    if audit is None or "label_score" not in audit.columns:
        return out
    ids = audit["sample_id"].astype(str)
    rank = pd.Series(rc.ranks_of(audit["label_score"].to_numpy(dtype=float)), index=ids.to_numpy())
    if "is_reviewed" in audit.columns and audit["is_reviewed"].fillna(False).astype(bool).any():
        earlier = _earlier_ranks(ws)
        was = ids[audit["is_reviewed"].fillna(False).astype(bool).to_numpy()]
        rank.loc[was.to_numpy()] = earlier.reindex(was.to_numpy()).to_numpy()
    return rank.reindex(pd.Index(sample_ids, dtype=object)).to_numpy(dtype=float)


def _earlier_ranks(ws: Workspace) -> pd.Series:
    """sample_id → rank_when_reviewed from the trusted table of the run the workspace's audit is of."""
    try:
        run_id = str(read_metadata(ws.audit).get("run_id") or "")
        # the metadata is data: only a run folder's own kind of name is followed
        ok = re.fullmatch(r"[A-Za-z0-9_.-]+", run_id) is not None and run_id not in (".", "..")
        t = read(ws.run_dir(run_id)) if ok else None
    except (WorkspaceError, ValueError, OSError):
        t = None
    if t is None or "rank_when_reviewed" not in t.columns:
        return pd.Series(dtype=float)
    return pd.Series(t["rank_when_reviewed"].to_numpy(dtype=float), index=t["sample_id"].astype(str).to_numpy())


def load(ws: Workspace, files: Sequence[str], classes: Sequence[str], reporter: Reporter) -> dec.Trusted | None:
    """Every ``--trusted`` file checked against the manifest, merged in the order given (the later
    decision for a sample wins, and is logged). WorkspaceError for a file that is not one, or of which
    no row applies."""
    if not files:
        return None
    manifest = read_table(ws.manifest)
    ids = manifest["sample_id"].astype(str).tolist()
    given = manifest["label"].astype(object).where(manifest["label"].notna(), "").astype(str).tolist()
    path_ids = dict(zip(manifest["source_path"].astype(str), ids)) if "source_path" in manifest.columns else {}
    audit = _current_audit(ws)
    suggested = _suggestions(audit, ids)
    parsed = []
    for f in files:
        path = check_input_file(f, option="--trusted", hint=HINT)
        try:
            records, early = dec.read_trusted_file(path, limit=dec.max_bytes(len(ids)), path_ids=path_ids)
        except dec.DecisionsFileError as e:
            raise WorkspaceError(f"--trusted: {e}") from None
        except OSError as e:
            raise WorkspaceError(f"Cannot read --trusted {path} ({e.strerror or e}).") from None
        d = dec.parse(records, file=str(path), sample_ids=ids, given=given, suggested=suggested, classes=classes)
        d.problems[:0] = early
        if not len(d.table):
            listing = "\n".join(str(p) for p in d.problems[:20]) or f"{path} holds no rows."
            raise WorkspaceError(f"None of the rows of --trusted {path} can be used; nothing was trained. Fix them "
                                 f"(or leave the file out) and run again:\n{listing}")
        parsed.append(d)
    trusted = dec.merge_trusted(parsed, dict(zip(ids, given)))
    trusted.table["rank_when_reviewed"] = ranks_when_reviewed(ws, audit, trusted.table["sample_id"].tolist())
    for p in trusted.problems[:20]:
        reporter.log(f"train: --trusted {p}")
    if len(trusted.problems) > 20:
        reporter.log(f"train: ... and {len(trusted.problems) - 20} more skipped --trusted rows.")
    for line in trusted.overridden[:20]:
        reporter.log(f"train: --trusted decided twice, the later applies: {line}")
    counts = trusted.table["action"].value_counts()
    reporter.log(f"train: {len(trusted.table):,} reviewed samples from {len(files)} --trusted file(s): "
                 + ", ".join(f"{int(counts.get(a, 0)):,} {a}" for a in ("keep", "relabel", "drop"))
                 + (f"; {len(trusted.problems):,} rows skipped" if trusted.problems else "") + ".")
    return trusted


def apply_to_data(data: Any, trusted: dec.Trusted | None) -> tuple[Any, np.ndarray]:
    """The run's inputs with dropped samples left out and relabelled ones trained with their reviewed
    label; and the (N,) mask of the trained samples that were reviewed. ``data``: stages.train's _Data."""
    if trusted is None or not len(trusted.table):
        return data, np.zeros(len(data.sample_ids), dtype=bool)
    t = trusted.table.set_index("sample_id")
    ids = pd.Index(data.sample_ids)
    action = t["action"].reindex(ids).to_numpy(dtype=object)
    keep = action != "drop"
    cidx = {c: i for i, c in enumerate(data.classes)}
    given = data.given.copy()
    relabel = action == "relabel"
    given[relabel] = [cidx[lab] for lab in t["label"].reindex(ids).to_numpy(dtype=object)[relabel]]
    reviewed = pd.notna(action)
    out = replace(data, sample_ids=[s for s, k in zip(data.sample_ids, keep) if k], rows=data.rows[keep],
                  given=given[keep], n_excluded=data.n_excluded + int((~keep).sum()))
    return out, reviewed[keep]


def provenance(trusted: dec.Trusted | None) -> dict:
    """What config.json and the run's tables record: the files in order, their counts, the result."""
    if trusted is None:
        return {}
    counts = trusted.table["action"].value_counts()
    return {"files": trusted.files, "n_reviewed": int(len(trusted.table)),
            "actions": {a: int(counts.get(a, 0)) for a in ("keep", "relabel", "drop")},
            "n_skipped": len(trusted.problems), "n_decided_again": len(trusted.overridden)}


def write(run_dir: Path, trusted: dec.Trusted | None, meta: dict) -> None:
    if trusted is not None:
        write_table(trusted.table, run_dir / FILE, meta, table=schema.TRUSTED)


def read(run_dir: Path) -> pd.DataFrame | None:
    """The run's reviewed samples (``schema.TRUSTED``), None for a run without ``--trusted``."""
    path = run_dir / FILE
    return read_table(path) if path.exists() else None

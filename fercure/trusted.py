"""`fercure train --trusted FILE`: a reviewer's decisions (or labels verified elsewhere) enter the run.

A trusted sample trains with its reviewed label, a dropped one leaves the run, and neither is ever
planted (``fercure.train.detection.plan_run``) nor flagged again (``fercure.audit.reviewed.reviewed_step``).
The run keeps what it was given in runs/<id>/trusted.parquet (``schema.TRUSTED``), so the audit,
the report and the export show every reviewed row without reading the files again.

Bad rows are named (file, row, fix) and skipped; a file none of whose rows applies is an error.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from fercure import decisions as dec
from fercure import review_calibration as rc
from fercure import schema
from fercure.files import read_regular_bytes
from fercure.progress import Reporter
from fercure.workspace import Workspace, WorkspaceError, check_input_file, read_metadata, read_table, write_table

FILE = "trusted.parquet"  # in the run's folder
HINT = ("Pass a decisions file saved from the review report (CSV or JSON), a Label Studio JSON export or a CVAT for "
        "images 1.1 XML of `export-cleaned --format label-studio / cvat`, or a CSV table of verified labels with the "
        "header sample_id,label (or path,label).")


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


# what the audit the reviewer saw said of a row
REVIEW_COLUMNS = ("rank_when_reviewed", "spot_check", "suggested_when_reviewed")
_REVIEW_TYPES = {"rank_when_reviewed": float, "spot_check": bool, "suggested_when_reviewed": object}


def review_context(ws: Workspace, audit: pd.DataFrame | None, sample_ids: Sequence[str]) -> pd.DataFrame:
    """Per sample (rows in ``sample_ids`` order): its rank (``review_calibration.ranks_of``) by its place
    in the review queue (the audit's ``review_rank``; ``review_calibration.queue_key`` for an audit
    without it) in the audit the reviewer worked from (the workspace's), whether the report offered it
    as a spot check, and the class its card suggested (a flagged row's suggestion other than its given
    label; None without one), which measures the suggestions once enough cards are decided. A sample
    that audit already shows as reviewed (an earlier round) keeps what its own run, or the audit that
    applied it (WS/reviewed.parquet), recorded then. NaN rank / False / None where no audit scored it."""
    out = pd.DataFrame({"rank_when_reviewed": np.nan, "spot_check": False, "suggested_when_reviewed": None},
                       index=pd.Index(sample_ids, dtype=object))
    if audit is None or "label_score" not in audit.columns:
        return out.astype(_REVIEW_TYPES)
    ids = audit["sample_id"].astype(str).to_numpy()
    score = audit["label_score"].to_numpy(dtype=float)

    def flags(name: str) -> np.ndarray:
        return audit[name].fillna(False).astype(bool).to_numpy() if name in audit.columns else np.zeros(len(audit), bool)

    was = flags("is_reviewed")
    spot = np.zeros(len(audit), bool)
    spot[rc.spot_checks(ids, score, was)] = True  # the report's own draw
    held = audit["retrain_p_given"].to_numpy(dtype=float) if "retrain_p_given" in audit.columns \
        else np.full(len(audit), np.nan)
    # the queue's own order: its review_rank (hand-made or re-ranked), else the hand-made key
    key = audit["review_rank"].to_numpy(dtype=float, na_value=np.nan) if "review_rank" in audit.columns \
        else rc.queue_key(score, held, flags("is_label_issue") & ~was)
    rank = rc.ranks_of(key)
    sugg = np.full(len(audit), None, object)
    if {"suggested_label", "given_label"} <= set(audit.columns):
        s_lab, g_lab = audit["suggested_label"].to_numpy(dtype=object), audit["given_label"].to_numpy(dtype=object)
        offered = flags("is_label_issue") & pd.notna(s_lab) & (s_lab != g_lab)
        sugg[offered] = s_lab[offered]
    if was.any():  # what a reviewed row was when reviewed; unknown (NaN, not a spot check) without its run
        earlier = _earlier_context(ws).reindex(ids[was])
        rank[was] = earlier["rank_when_reviewed"].to_numpy(dtype=float)
        spot[was] = earlier["spot_check"].fillna(False).to_numpy(dtype=bool)
        sugg[was] = earlier["suggested_when_reviewed"].where(earlier["suggested_when_reviewed"].notna(), None) \
            .to_numpy(dtype=object)
    now = pd.DataFrame({"rank_when_reviewed": rank, "spot_check": spot, "suggested_when_reviewed": sugg},
                       index=ids).reindex(out.index)
    return now.fillna({"spot_check": False}).astype(_REVIEW_TYPES)


def _earlier_context(ws: Workspace) -> pd.DataFrame:
    """sample_id → REVIEW_COLUMNS from the trusted table of the run the workspace's audit is of, then
    from the decisions the audit applied without retraining (WS/reviewed.parquet)."""
    empty = pd.DataFrame({c: pd.Series(dtype=t) for c, t in _REVIEW_TYPES.items()})
    try:
        run_id = str(read_metadata(ws.audit).get("run_id") or "")
        # the metadata is data: only a run folder's own kind of name is followed
        ok = re.fullmatch(r"[A-Za-z0-9_.-]+", run_id) is not None and run_id not in (".", "..")
        t = read(ws.run_dir(run_id)) if ok else None
    except (WorkspaceError, ValueError, OSError):
        t = None
    later = None
    if ws.reviewed.exists():
        try:
            later = read_table(ws.reviewed)
        except WorkspaceError:
            later = None
    # a table from before suggested_when_reviewed: not recorded then (None)
    parts = [x if "suggested_when_reviewed" in x.columns else x.assign(suggested_when_reviewed=None)
             for x in (t, later) if x is not None and {"rank_when_reviewed", "spot_check"} <= set(x.columns)]
    if not parts:
        return empty
    t = pd.concat(parts, ignore_index=True)
    t = t[~t["sample_id"].astype(str).duplicated(keep="first")]  # the run's own record first
    return t.set_index(t["sample_id"].astype(str))[list(REVIEW_COLUMNS)].astype({"spot_check": bool})


def load(ws: Workspace, files: Sequence[str], classes: Sequence[str], reporter: Reporter,
         stage: str = "train") -> dec.Trusted | None:
    """Every ``--trusted`` file checked against the manifest, merged in the order given (the later
    decision for a sample wins, and is logged). WorkspaceError for a file that is not one, or of which
    no row applies. ``stage``: the command that reads them (train, audit-labels), for the messages."""
    if not files:
        return None
    manifest = read_table(ws.manifest)
    ids = manifest["sample_id"].astype(str).tolist()
    given = manifest["label"].astype(object).where(manifest["label"].notna(), "").astype(str).tolist()
    path_ids = dict(zip(manifest["source_path"].astype(str), ids)) if "source_path" in manifest.columns else {}
    hashes = manifest["content_hash"].fillna("").astype(str).tolist() if "content_hash" in manifest.columns else None
    audit = _current_audit(ws)
    suggested = _suggestions(audit, ids)
    parsed, digests = [], []
    for f in files:
        path = check_input_file(f, option="--trusted", hint=HINT)
        limit = dec.max_bytes(len(ids))
        try:
            raw = read_regular_bytes(path, limit)  # read once: what is parsed is what is fingerprinted
            records, early = dec.read_trusted_file(path, limit=limit, path_ids=path_ids, data=raw)
        except dec.DecisionsFileError as e:
            raise WorkspaceError(f"--trusted: {e}") from None
        except OSError as e:
            raise WorkspaceError(f"Cannot read --trusted {path} ({e.strerror or e}). {HINT}") from None
        digests.append(hashlib.sha256(raw).hexdigest())
        d = dec.parse(records, file=str(path), sample_ids=ids, given=given, suggested=suggested, classes=classes,
                      content_hashes=hashes, runs=ws.run_ids())
        d.problems[:0] = early
        if not len(d.table):
            listing = "\n".join(str(p) for p in d.problems[:20]) or f"{path} holds no rows."
            raise WorkspaceError(f"None of the rows of --trusted {path} can be used; nothing was "
                                 f"{'trained' if stage == 'train' else 'written'}. Fix them "
                                 f"(or leave the file out) and run again:\n{listing}")
        parsed.append(d)
    trusted = dec.merge_trusted(parsed, dict(zip(ids, given)))
    for entry, digest in zip(trusted.files, digests):
        entry["sha256"] = digest  # what --resume checks the files against
    context = review_context(ws, audit, trusted.table["sample_id"].tolist())
    for col in REVIEW_COLUMNS:
        trusted.table[col] = context[col].to_numpy()
    # the --trusted file each decision came from, 1-based: the last is the latest round of review
    src = trusted.table["source"].astype(str)
    trusted.table["review_round"] = np.zeros(len(src), np.int64)
    for i, d in enumerate(parsed, start=1):
        trusted.table.loc[src.str.startswith(f"{d.file} ").to_numpy(), "review_round"] = i
    for p in trusted.problems[:20]:
        reporter.log(f"{stage}: --trusted {p}")
    if len(trusted.problems) > 20:
        reporter.log(f"{stage}: ... and {len(trusted.problems) - 20} more skipped --trusted rows.")
    for line in trusted.overridden[:20]:
        reporter.log(f"{stage}: --trusted decided twice, the later applies: {line}")
    counts = trusted.table["action"].value_counts()
    reporter.log(f"{stage}: {len(trusted.table):,} reviewed samples from {len(files)} --trusted file(s): "
                 + ", ".join(f"{int(counts.get(a, 0)):,} {a}" for a in ("keep", "relabel", "drop"))
                 + (f"; {len(trusted.problems):,} rows skipped" if trusted.problems else "") + ".")
    return trusted


def check_unchanged(saved: dict, trusted: dec.Trusted | None, run_id: str, root: Path) -> None:
    """Refuse to resume run ``run_id`` when a --trusted file it started with is not the same now
    (``saved``: the run's config.json). Its planted set and reviewed mask came from those
    decisions; a changed file would continue another run's plan under this one's name."""
    before = {f.get("file"): f.get("sha256") for f in (saved.get("trusted_files") or {}).get("files", [])}
    now = {f.get("file"): f.get("sha256") for f in (trusted.files if trusted is not None else [])}
    for name, digest in before.items():
        if digest and now.get(name) != digest:
            raise WorkspaceError(
                f"The --trusted file {name} changed since run {run_id} started, so the run cannot be resumed "
                "(which samples it plants and treats as reviewed came from the file as it was). Put the file "
                f"back as it was and run `fercure train -w {root} --resume` again, or start a new run with the "
                "file as it is now (without --resume).")


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


def write_reviewed(ws: Workspace, trusted: dec.Trusted, meta: dict) -> None:
    """WS/reviewed.parquet: the decisions ``audit-labels --trusted`` applied, with where each card stood."""
    write_table(trusted.table, ws.reviewed, meta, table=schema.TRUSTED)


def read(run_dir: Path) -> pd.DataFrame | None:
    """The run's reviewed samples (``schema.TRUSTED``), None for a run without ``--trusted``."""
    path = run_dir / FILE
    # checked against its contract whatever its metadata says: a table put there by hand is named, not a KeyError
    return read_table(path, table=schema.TRUSTED) if path.exists() else None

"""Stage 4: WS/audit.parquet → a cleaned annotation table (Parquet, or CSV + provenance JSON), or a
training layout (an ImageFolder tree, a Hugging Face Parquet; ``fercure.layouts``).

The rules live in ``fercure.export``. This stage checks that the audit still matches the manifest
(one row per sample, nothing lost), refuses to overwrite an existing output without ``force`` and
never writes over the workspace's own inputs.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fercure import __version__, schema
from fercure import decisions as reviewed
from fercure import export as core
from fercure import handoff, layouts
from fercure import review_calibration as rc
from fercure.report import data as page_data
from fercure.report.columns import column
from fercure import workspace as ws_errors
from fercure.store import open_store
from fercure.workspace import (
    EXPORT_MARKER,
    SCHEMA_VERSION,
    Workspace,
    WorkspaceError,
    atomic_path,
    atomic_write_json,
    check_input_file,
    disk_full_as_error,
    read_metadata,
    read_table,
    write_table,
)

FORMATS = core.FORMATS
# Formats written as a folder (built aside and renamed into place, with fercure's marker), and what fills it
FOLDER_FORMATS = {
    "imagefolder": layouts.write_imagefolder,
    handoff.LABEL_STUDIO: functools.partial(layouts.write_handoff, fmt=handoff.LABEL_STUDIO),
    handoff.CVAT: functools.partial(layouts.write_handoff, fmt=handoff.CVAT),
}


class ExportError(WorkspaceError):
    """The export cannot go ahead as asked (message says what to do)."""


class OutputExistsError(ExportError, ws_errors.OutputExistsError):
    """The output file is already there and ``force`` was not given."""


@dataclass
class ExportSummary:
    output: Path
    fmt: str
    policy: str
    run_id: str | None
    n_rows: int
    actions: dict[str, int]  # keep / relabel / drop / review → rows
    provenance_path: Path | None  # the sidecar JSON (CSV, imagefolder); None when inside the Parquet
    seconds: float
    decided_by_reviewer: int = 0  # rows whose action a --decisions file set
    issues: dict[str, int] = field(default_factory=dict)  # rows per is_<issue>_issue of the audit
    # decisions skipped, each with file, row and fix: shown through ``warning``, not as a table row
    decision_problems: list[str] = field(default_factory=list, metadata={"hidden": True})
    n_images: int | None = None  # imagefolder / hf: images written
    skipped: list[str] = field(default_factory=list)  # imagefolder / hf: samples left out, why
    # options that had no effect here, and other things to say under the summary
    notes: list[str] = field(default_factory=list, metadata={"hidden": True})

    @property
    def warning(self) -> str | None:
        """The skipped decisions and ignored options, shown under the summary."""
        parts = list(self.notes)
        if self.decision_problems:
            shown = self.decision_problems[:20]
            more = len(self.decision_problems) - len(shown)
            parts.append(f"{len(self.decision_problems)} decision(s) were not applied; the others were:\n"
                         + "\n".join(shown) + (f"\n... and {more} more (all listed in the provenance)" if more else ""))
        return "\n".join(parts) or None


@dataclass(frozen=True)
class _Export:
    """What the steps of one export share: where it writes and how (run_export's choices), the audit's
    classes and model verdict, and the notes said under the summary (appended to as the export goes)."""
    ws: Workspace
    output: Path
    fmt: str
    policy: str
    min_confidence: float
    images: str  # crops | originals (the layouts)
    link: str  # symlink | copy (--images originals)
    image_url: str  # label-studio: what each task's image reference starts with
    classes: list[str]
    verdict: str | None  # the audit's model-strength verdict
    notes: list[str]


def provenance_path_for(output: Path) -> Path:
    """Where a CSV export's provenance goes: ``cleaned.csv`` → ``cleaned.csv.provenance.json``;
    an ImageFolder's: ``OUT/provenance.json``."""
    if output.is_dir():
        return output / "provenance.json"
    return output.with_name(output.name + ".provenance.json")


def run_export(
    workspace: Workspace | Path | str,
    output: Path | str,
    *,
    policy: str = "relabel",
    fmt: str = "parquet",
    force: bool = False,
    min_confidence: float = 0.5,
    decisions: Path | str | None = None,
    images: str = "crops",
    link: str = "symlink",
    strict: bool = False,
    allow_weak_drop: bool = False,
    cards: int | None = None,
    image_url: str = handoff.DEFAULT_IMAGE_URL,
) -> ExportSummary:
    """Write the cleaned table for ``policy`` (keep/relabel/drop/review per the rules in
    ``fercure.export``) to ``output`` as ``fmt``: "parquet", "csv" (formulas neutralised, provenance
    in a sidecar JSON), "imagefolder" (a folder; ``images`` crops or originals, originals linked by
    ``link``) or "hf" (a Hugging Face Parquet; originals by absolute path).

    ``decisions``: a reviewer's decisions file (saved from the review report; ``fercure.decisions``):
    each valid decision overrides fercure's action for its sample (in every format: a dropped sample
    leaves the layouts, a relabelled one moves to its new class), and every row's ``decided_by``
    says whose action it is. Invalid decisions are skipped and listed in the summary's
    ``decision_problems`` and the provenance; with ``strict`` any invalid decision stops the export,
    and a decisions file of which nothing applies always does.

    ``allow_weak_drop``: ``policy="drop"`` on an audit whose model is ``weak`` drops every flagged
    row on the word of a model whose flags are leads; it is refused unless this is set.
    ``cards``, ``image_url``: "label-studio" and "cvat" hand the review queue (the report's order,
    or the audit's ``review_rank``; samples a reviewer decided left out) to an annotation tool as a
    folder (``fercure.handoff``): its first ``cards`` cards (all without), each task's image named
    by ``image_url`` + its path inside the folder (Label Studio).
    Rows of the workspace's tables are data: an id or a path that leads outside the output or the
    input root is skipped and named, never followed."""
    start = time.perf_counter()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(Path(workspace))
    output = Path(output)
    _check_choices(policy, fmt, images, link)
    ws.require(ws.manifest, "prepare")
    ws.require(ws.audit, "audit-labels")
    if decisions is not None:
        try:
            decisions = check_input_file(decisions, option="--decisions",
                                         hint="Pass the CSV or JSON file saved from the review report, or an "
                                              "annotation tool's export (Label Studio JSON, CVAT for images 1.1 XML).")
        except WorkspaceError as e:
            raise ExportError(str(e)) from None

    if cards is not None and cards < 1:
        raise ExportError(f"--cards {cards}: give the number of queue cards to hand over (1 or more), or leave it out "
                          "for the whole queue.")
    notes = _ignored_options(fmt, images, link, cards, image_url)
    sidecar = provenance_path_for(output) if fmt == "csv" else None
    _check_outputs(ws, output, fmt, sidecar, force, decisions)
    audit_meta, audit, classes = _read_audit(ws)
    verdict = ((audit_meta.get("stats") or {}).get("model_strength") or {}).get("verdict")
    _check_weak_drops(audit, policy, min_confidence, verdict, allow_weak_drop, notes)  # before the policy's work
    ex = _Export(ws=ws, output=output, fmt=fmt, policy=policy, min_confidence=min_confidence, images=images,
                 link=link, image_url=image_url, classes=classes, verdict=verdict, notes=notes)
    cleaned = core.apply_policy(audit, classes, policy, min_confidence=min_confidence,
                                model_verdict=verdict)
    decided = _read_decisions(decisions, audit, classes, ws) if decisions is not None else None
    if decided is not None:
        _check_decisions_applied(decided, strict)
    from_training = reviewed_in_audit(audit, audit_meta.get("run_id"))  # train --trusted; a --decisions file outranks it
    cleaned = reviewed.apply(cleaned, reviewed.combine(from_training, decided), classes, soft=policy == "soft")
    counts = core.action_counts(cleaned)
    provenance = _provenance(ex, audit_meta, audit, cleaned, decided, counts)
    n_images, skipped = None, []
    if fmt == "parquet":
        write_table(cleaned, output, provenance, table=schema.CLEANED)
    elif fmt == "csv":
        # The CSV is written first, then the sidecar, then the CSV renamed into place: a CSV never appears
        # without its provenance beside it, and a CSV that did not fit leaves no new provenance behind.
        with atomic_path(output) as tmp:
            core.neutralise_formulas(cleaned).to_csv(tmp, index=False, encoding="utf-8")
            atomic_write_json(sidecar, {"fercure_version": __version__, "schema_version": SCHEMA_VERSION, **provenance})
    else:
        queue = _queue(ws, cleaned, audit, cards) if fmt in handoff.FORMATS else None
        if queue is not None and not len(queue):
            notes.append("The review queue is empty (nothing listed, or every card decided): the tasks hold none.")
        result = _write_layout(ex, cleaned, provenance, queue)
        n_images, skipped = result.n_images, result.skipped
        if fmt in FOLDER_FORMATS:
            sidecar = output / "provenance.json"
    return ExportSummary(
        output=output, fmt=fmt, policy=policy, run_id=provenance["run_id"], n_rows=len(cleaned),
        actions=counts, issues=provenance["issues"], provenance_path=sidecar, seconds=time.perf_counter() - start,
        decided_by_reviewer=provenance["decided_by"][reviewed.REVIEWER],
        decision_problems=[str(p) for p in decided.problems] if decided else [],
        n_images=n_images, skipped=skipped, notes=notes,
    )


def _check_choices(policy: str, fmt: str, images: str, link: str) -> None:
    if policy not in core.POLICIES:
        raise ExportError(f"Unknown policy {policy!r}; choose one of {', '.join(core.POLICIES)}.")
    if fmt not in FORMATS:
        raise ExportError(f"Unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if images not in layouts.IMAGE_SOURCES:
        raise ExportError(f"Unknown --images {images!r}; choose one of {', '.join(layouts.IMAGE_SOURCES)}.")
    if link not in layouts.LINKS:
        raise ExportError(f"Unknown --link {link!r}; choose one of {', '.join(layouts.LINKS)}.")


def _check_outputs(ws: Workspace, output: Path, fmt: str, sidecar: Path | None, force: bool,
                   decisions: Path | None) -> None:
    """One rule for every output (fercure.workspace.check_output_path): never into the input folder,
    over the label file or the workspace's own files, over a device/FIFO/folder, or silently."""
    if fmt in FOLDER_FORMATS:
        _check_folder_output(ws, output, force, decisions)
    for target in [] if fmt in FOLDER_FORMATS else [output] + ([sidecar] if sidecar else []):
        try:
            ws.check_output(target, force=force, option="--output")
        except ws_errors.OutputExistsError as e:
            raise OutputExistsError(str(e)) from None
        except WorkspaceError as e:
            raise ExportError(str(e)) from None
        if decisions is not None and target.resolve() == decisions.resolve():
            raise ExportError(f"--output {target} is the --decisions file; fercure never overwrites its inputs. "
                              "Choose another path.")
        if force and target.exists() and not written_by_fercure(target):
            raise ExportError(f"{target} exists and was not written by fercure (it carries no fercure provenance); "
                              "--force replaces only fercure's own outputs. Choose another path, or move the file "
                              "away yourself.")


def _read_audit(ws: Workspace) -> tuple[dict, object, list[str]]:
    """The audit's metadata, table and classes, checked against the manifest."""
    audit_meta = read_metadata(ws.audit)
    if audit_meta.get("table") != schema.AUDIT.name or not audit_meta.get("classes"):
        # Re-saved by another tool (pandas drops the metadata): without it the table's contract, its
        # classes and the model-strength verdict are gone, and a too_weak model's flags would count.
        raise ExportError(f"{ws.audit} carries no fercure audit metadata (was it re-saved by another tool?): its "
                          "classes and the model-strength verdict cannot be trusted. Re-run `fercure audit-labels "
                          f"-w {ws.root}`.")
    check_audit_is_of_latest_run(ws, audit_meta.get("run_id"))
    manifest = read_table(ws.manifest)
    audit = read_table(ws.audit)
    check_audit_matches(manifest, audit, ws)
    return audit_meta, audit, [str(c) for c in audit_meta["classes"]]


def _check_weak_drops(audit, policy: str, min_confidence: float, verdict: str | None, allow: bool,
                      notes: list[str]) -> None:
    """Refuse (unless ``allow``) a drop policy that would drop rows on a weak model's flags."""
    weak_drops = int((core.situations(audit, min_confidence, verdict) == "weak_issue").sum()) \
        if policy == "drop" else 0
    if weak_drops and not allow:
        raise ExportError(
            f"--policy drop would drop {weak_drops:,} of {len(audit):,} rows flagged by a model the audit judged "
            "weak (its flags are leads, not evidence; on the benchmark such drops lowered the downstream accuracy, "
            "benchmarks/RESULTS.md). Review them instead (--policy flag, or the report), train a stronger model, or "
            "pass --allow-weak-drop to drop them anyway.")
    if weak_drops:
        notes.append(f"{weak_drops:,} rows dropped on the flags of a weak model (--allow-weak-drop).")
    if policy == "drop" and verdict == "too_weak":
        # As a weak model's drops are refused: a too_weak model's verdicts change no row, so say it.
        flagged = int((core.situations(audit, min_confidence, verdict) == "too_weak").sum())
        notes.append(f"--policy drop dropped none of the {flagged:,} rows the audit flagged: it judged the model too "
                     "weak to judge labels, so its flags change nothing (they are leads for review, not evidence). "
                     "Review them in the report (--policy flag), or train a stronger model and audit again.")


def _provenance(ex: _Export, audit_meta: dict, audit, cleaned, decided: reviewed.Decisions | None,
                counts: dict) -> dict:
    """What the export says of itself (in the Parquet's metadata, or its provenance JSON)."""
    ws = ex.ws
    return {
        "run_id": audit_meta.get("run_id"),
        "thresholds": audit_meta.get("thresholds", {}),
        "policy": ex.policy,
        "min_confidence": float(ex.min_confidence),
        "model_strength": ex.verdict,
        "classes": list(ex.classes),
        "soft_labels": "training targets" if ex.policy == "soft" else "model distribution",
        "actions": counts,
        "issues": core.issue_counts(audit),
        "evidence": core.evidence_counts(audit),
        "audit": str(ws.audit.resolve()),
        "audit_fercure_version": audit_meta.get("fercure_version"),
        "decided_by": {who: int((cleaned[reviewed.CLEANED["decided_by"]] == who).sum())
                       for who in (reviewed.REVIEWER, reviewed.FERCURE)},
        "decisions": reviewed.summary(decided),
        "trusted": audit_meta.get("trusted") or {},
        "input_root": ws.prepared_inputs()[0],
        "crop_store": str(ws.store.resolve()),
        "format": ex.fmt,
    }


def _write_layout(ex: _Export, cleaned, provenance: dict, queue=None) -> layouts.LayoutResult:
    """An imagefolder, hf or annotation-tool export: the images (crops or originals) and their table
    (``queue``: the rows an annotation tool gets, ``_queue``)."""
    ws, output, fmt, images, link, classes = ex.ws, ex.output, ex.fmt, ex.images, ex.link, ex.classes
    rows = layouts.exported_rows(cleaned) if queue is None else queue
    store = _crop_store(ws, rows) if images == "crops" else None
    input_root = Path(provenance["input_root"]) if provenance["input_root"] else None
    if images == "originals" and input_root is None:
        raise ExportError(f"{ws.manifest} does not name its input folder; re-run `fercure prepare` to export "
                          "the original images.")
    provenance.update(images=images, link=link if images == "originals" else None)
    try:
        if fmt in handoff.FORMATS:
            provenance.update(handoff={"cards": len(rows), "image_url": ex.image_url if fmt == handoff.LABEL_STUDIO
                                       else None})
            return _write_imagefolder(rows, output, provenance, fill=FOLDER_FORMATS[fmt], images=images, link=link,
                                      store=store, input_root=input_root, classes=classes, image_url=ex.image_url,
                                      model_version=f"fercure {__version__} run {provenance['run_id']}")
        if fmt == "imagefolder":
            result = _write_imagefolder(rows, output, provenance, images=images, link=link, store=store,
                                        input_root=input_root, classes=classes)
        else:
            frame, result = layouts.hf_frame(rows, classes, images=images, store=store, input_root=input_root)
            _check_some_images(result, rows, output)
            write_table(frame, output, provenance, table=schema.HF_EXPORT,
                        arrow_metadata={b"huggingface": layouts.hf_features(classes)})
    except ValueError as e:  # a value a layout cannot write
        raise ExportError(f"Cannot export {output}: {e}.") from None
    present = set(rows["clean_label"].astype(str)) if fmt == "imagefolder" else set(classes)
    empty = [c for c in classes if c not in present]
    if empty:
        ex.notes.append(f"No image left in class(es) {', '.join(map(repr, empty))}: their folders are written empty "
                        "so that every loader numbers the classes alike (classes.json); load with torchvision's "
                        "ImageFolder(..., allow_empty=True).")
    return result


def _queue(ws: Workspace, cleaned, audit, cards: int | None):
    """The review queue an annotation tool gets: as many cards as the report lists (``cards`` when
    given), in the audit's ``review_rank`` order where it has one, else the report's
    (``report.data.review_order``); samples a reviewer decided (``--trusted`` or ``--decisions``) left
    out. The rows of ``cleaned`` in that order, with ``review_rank`` (1 = first card) and
    ``queue_score`` (the hand-made queue key, ``review_calibration.queue_key``: low = likely wrong)."""
    bits, listed = page_data.review_rows(audit, read_table(ws.manifest))
    order = page_data.review_order(audit, listed, bits)
    ids = column(audit, "id").astype(str).to_numpy()
    by = cleaned.set_index(cleaned["sample_id"].astype(str))
    decided = by.index[by[reviewed.CLEANED["decided_by"]] == reviewed.REVIEWER]
    n = int(np.sum(~np.isin(ids[order], decided))) if cards is None else cards
    if "review_rank" in audit.columns:  # the audit's own queue (decisions re-rank it)
        rank = pd.to_numeric(audit["review_rank"], errors="coerce").to_numpy(dtype=float)
        order = np.flatnonzero(np.isfinite(rank))
        order = order[np.argsort(rank[order], kind="stable")]
    order = order[~np.isin(ids[order], decided)][:n]
    flagged = column(audit, "is_issue", False).fillna(False).astype(bool).to_numpy()
    key = rc.queue_key(pd.to_numeric(column(audit, "score", np.nan), errors="coerce").to_numpy(dtype=float),
                       pd.to_numeric(column(audit, "held_out_p", np.nan), errors="coerce").to_numpy(dtype=float),
                       flagged)
    rows = by.loc[ids[order]].reset_index(drop=True)
    return rows.assign(review_rank=np.arange(1, len(rows) + 1), queue_score=key[order])


def reviewed_in_audit(audit, run_id) -> reviewed.Decisions | None:
    """The audit's reviewed rows (the run's --trusted decisions) as decisions: a drop where no label
    was kept, a keep where the reviewed label is the given one, a relabel otherwise."""
    if "is_reviewed" not in audit.columns or not audit["is_reviewed"].any():
        return None
    r = audit[audit["is_reviewed"].astype(bool)]
    label = r["reviewed_label"].astype(object).to_numpy()
    action = np.where(pd.isna(label), "drop", np.where(label == r["given_label"].astype(object).to_numpy(),
                                                         "keep", "relabel"))
    table = pd.DataFrame({"sample_id": r["sample_id"].astype(str).to_numpy(), "action": action, "label": label,
                          "source": f"train --trusted of run {run_id}"})
    return reviewed.from_trusted(table)


def check_audit_is_of_latest_run(ws: Workspace, run_id: str | None) -> None:
    """Refuse an audit of an older run when a later run finished after it and was never audited: the
    export would carry the older run's verdicts (and miss the later run's --trusted decisions) without
    a word. An audit of an older run written after the later run finished (``audit-labels --run``) is
    the user's choice and goes ahead."""
    try:
        latest = ws.latest_run()
    except WorkspaceError:
        return
    finished = ws.run_dir(latest) / "predictions.parquet"
    if not run_id or latest == run_id or not finished.exists():
        return
    if finished.stat().st_mtime > ws.audit.stat().st_mtime:
        raise ExportError(f"{ws.audit} is the audit of run {run_id}, but the latest run, {latest}, finished after it "
                          f"and was never audited; exporting would use the older run's verdicts. Run `fercure "
                          f"audit-labels -w {ws.root}` (the latest run) and export again, or, to export run "
                          f"{run_id}, audit it again first: `fercure audit-labels -w {ws.root} --run {run_id}`.")


def check_audit_matches(manifest, audit, ws: Workspace) -> None:
    """The audit must describe the manifest as it is now: the same samples with the same given
    labels, splits, paths, crops and face verdicts. Labels fixed (or images replaced) and prepare
    re-run since the audit would otherwise be exported with the old labels (or another sample's crop)."""
    m = manifest.set_index(manifest["sample_id"].astype(str))
    a = audit.set_index(audit["sample_id"].astype(str))
    rerun = f"Re-run `fercure train -w {ws.root}` and `fercure audit-labels -w {ws.root}`, then export."
    if len(m) != len(a) or not m.index.isin(a.index).all():
        missing = int((~m.index.isin(a.index)).sum())
        raise ExportError(
            f"{ws.audit} does not match {ws.manifest} ({missing} manifest samples have no audit row, "
            f"{len(a)} audit rows for {len(m)} samples): the manifest changed after the audit. {rerun}")
    a = a.loc[m.index]
    for mcol, acol, what in (("label", "given_label", "label"), ("split", "split", "split"),
                             ("source_path", "source_path", "path"), ("store_index", "store_index", "crop"),
                             ("face_status", "face_status", "face status"),
                             ("content_hash", "content_hash", "image file (content hash)")):
        if mcol not in m.columns or acol not in a.columns:
            continue
        differ = m[mcol].astype(str).to_numpy() != a[acol].astype(str).to_numpy()
        if differ.any():
            i = int(differ.argmax())
            raise ExportError(
                f"{ws.manifest} changed since {ws.audit} was written: {int(differ.sum())} sample(s) have another "
                f"{what} now (e.g. {m.index[i]}: {a[acol].iat[i]!r} in the audit, {m[mcol].iat[i]!r} in the "
                f"manifest); exporting would write the old ones. {rerun}")


def written_by_fercure(path: Path) -> bool:
    """An existing output file fercure wrote: a Parquet with fercure's metadata, a provenance JSON,
    or a CSV with its provenance sidecar beside it. What --force may replace."""
    try:
        if "fercure_version" in read_metadata(path):
            return True
    except (WorkspaceError, OSError):
        pass
    for candidate in (path, provenance_path_for(path)):
        try:
            if candidate.is_file() and candidate.stat().st_size < 2**24:
                data = json.loads(candidate.read_text(encoding="utf-8"))
                if isinstance(data, dict) and "fercure_version" in data:
                    return True
        except (OSError, ValueError):
            continue
    return False


def _ignored_options(fmt: str, images: str, link: str, cards: int | None = None,
                     image_url: str = handoff.DEFAULT_IMAGE_URL) -> list[str]:
    """Options given that this export does not use: said, not silently dropped."""
    notes = []
    if fmt in ("parquet", "csv") and images != "crops":
        notes.append(f"--images {images} has no effect with --format {fmt} (the table holds no images; "
                     "source_path and store_index say where each one is).")
    if link != "symlink" and not (fmt in FOLDER_FORMATS and images == "originals"):
        notes.append(f"--link {link} has no effect here: it applies to --images originals with --format imagefolder, "
                     f"{handoff.LABEL_STUDIO} or {handoff.CVAT} only ("
                     f"{'the crops are written as PNG files' if fmt in FOLDER_FORMATS else 'nothing is linked'}).")
    if cards is not None and fmt not in handoff.FORMATS:
        notes.append(f"--cards {cards} has no effect with --format {fmt}: it limits the queue handed to "
                     f"--format {handoff.LABEL_STUDIO} or {handoff.CVAT}.")
    if image_url != handoff.DEFAULT_IMAGE_URL and fmt != handoff.LABEL_STUDIO:
        notes.append(f"--image-url has no effect with --format {fmt}: it names the images of --format "
                     f"{handoff.LABEL_STUDIO}'s tasks.")
    return notes


def _check_decisions_applied(decided: reviewed.Decisions, strict: bool) -> None:
    """A decisions file of which nothing applies is refused (a pipeline would lose the whole review
    to a warning), and with ``strict`` one bad row is enough."""
    if not decided.problems:
        return
    listing = "\n".join(str(p) for p in decided.problems[:20])
    more = len(decided.problems) - 20
    listing += f"\n... and {more} more" if more > 0 else ""
    if len(decided.table) == 0:
        raise ExportError(f"None of the {len(decided.problems)} decision(s) in {decided.file} could be applied; "
                          f"nothing was exported. Fix them and run the export again:\n{listing}")
    if strict:
        raise ExportError(f"{len(decided.problems)} decision(s) in {decided.file} cannot be applied (--strict: "
                          f"nothing was exported). Fix them, or drop --strict to apply the others:\n{listing}")


def _crop_store(ws: Workspace, rows):
    """The crop store for a layout of crops; refused when it is missing or does not hold the crops
    the rows point at (a truncated or replaced crops.npy), rather than writing an empty export."""
    if not ws.store.exists():
        raise ExportError(f"{ws.store} does not exist: the aligned crops are gone. Re-run the same `fercure prepare "
                          f"INPUT -w {ws.root}` command to rebuild them, or export the original files with "
                          "--images originals.")
    try:
        store = open_store(ws.store)
    except WorkspaceError as e:
        raise ExportError(str(e)) from None
    idx = rows["store_index"].to_numpy() if len(rows) else []
    if len(idx) and int(max(idx)) >= len(store):
        raise ExportError(f"{ws.store} holds {len(store):,} crops, but the audit points at crop {int(max(idx)):,}: "
                          "the crop store does not belong to this manifest (truncated or replaced). "
                          + ws_errors.rebuild_hint(ws.store))
    return store


def _check_some_images(result: layouts.LayoutResult, rows, output: Path) -> None:
    """An image export with rows to write and not one image written is an error, not an empty dataset."""
    if len(rows) and result.n_images == 0:
        shown = "\n".join(result.skipped[:5])
        raise ExportError(f"Not writing {output}: none of the {len(rows):,} images could be exported; for example:\n"
                          f"{shown}")


def _read_decisions(path: Path, audit, classes, ws: Workspace) -> reviewed.Decisions:
    """The decisions file checked against the audit; ExportError when it is not a decisions file."""
    try:
        records = reviewed.read_decisions(path, limit=reviewed.max_bytes(len(audit)))
    except reviewed.DecisionsFileError as e:
        raise ExportError(str(e)) from None
    except OSError as e:
        raise ExportError(f"Cannot read --decisions {path} ({e.strerror or e}).") from None
    return reviewed.parse(records, file=str(path), sample_ids=column(audit, "id").astype(str).tolist(),
                          given=column(audit, "given", "").astype(str).tolist(),
                          suggested=column(audit, "suggested", None).tolist(), classes=classes,
                          content_hashes=audit["content_hash"].astype(str).tolist()
                          if "content_hash" in audit.columns else None, runs=ws.run_ids())


def _check_folder_output(ws: Workspace, output: Path, force: bool, decisions: Path | None) -> None:
    """An ImageFolder output is a folder: new, empty, or (with --force) an earlier fercure export,
    replaced as a whole. Never a folder fercure did not write, and never one that holds anything
    the user gave: the workspace, the input folder, the label file or the decisions file."""
    input_root, labels_file = ws.prepared_inputs()
    try:
        protected = {**ws.owned(), **({Path(labels_file): "the label file given to prepare"} if labels_file else {})}
        ws_errors.check_output_path(output, force=True, option="--output", input_root=input_root,
                                    protected=protected, folder=True)
    except WorkspaceError as e:
        raise ExportError(str(e)) from None
    given = {"the workspace": ws.root, "the input folder": input_root, "the label file": labels_file,
             "the --decisions file": decisions}
    for what, path in given.items():
        if path is not None and ws_errors.is_inside(path, output):
            raise ExportError(f"--output {output} holds {what} ({path}); the export replaces its folder as a whole, "
                              "and fercure never deletes its inputs. Choose a new folder for --output, e.g. "
                              f"{output / 'cleaned-images'}.")
    if not output.is_dir() or not any(output.iterdir()):
        return
    if not (output / EXPORT_MARKER).is_file():
        raise ExportError(f"--output {output} is a folder that fercure did not write (it holds files and no "
                          f"{EXPORT_MARKER}); fercure replaces only an earlier export of its own, with or without "
                          "--force. Choose a new or empty folder.")
    if not force:
        raise OutputExistsError(f"{output} holds an earlier fercure export; pass --force to replace it.")
    foreign = foreign_files(output)
    if foreign:
        shown = "\n".join(f"  {f}" for f in foreign[:20]) + (f"\n  ... and {len(foreign) - 20:,} more"
                                                             if len(foreign) > 20 else "")
        raise ExportError(f"--output {output} holds {len(foreign):,} file(s) or folder(s) that its earlier export did "
                          f"not write (not in its index.csv); --force replaces only fercure's own files. Move them "
                          f"away, or export to a new folder:\n{shown}")


# a folder export's own files beside its tree (imagefolder; the annotation tools' hand-off folders)
EXPORT_FILES = ("index.csv", "classes.json", "provenance.json", handoff.TASKS, handoff.LABEL_CONFIG, handoff.CVAT_XML,
                handoff.CVAT_LABELS)


def foreign_files(folder: Path) -> list[str]:
    """What a folder holding an earlier imagefolder export holds that the export did not write
    (relative paths, sorted; a folder ends with /): compared with the export's own index.csv and
    classes.json. An export without a readable index.csv is all foreign (nothing can be told apart)."""
    try:
        index = pd.read_csv(folder / "index.csv", dtype=str, keep_default_na=False, usecols=["file"])
        ours = {reviewed.cell_text(f) for f in index["file"]}
    except (OSError, ValueError):
        ours = set()
    if not ours and not (folder / "index.csv").is_file():
        return ["index.csv (missing: the files of the earlier export cannot be told from others)"]
    ours |= {EXPORT_MARKER, *EXPORT_FILES}
    dirs = {p.as_posix() for f in ours for p in Path(f).parents if p != Path(".")}
    try:
        meta = json.loads((folder / "classes.json").read_text(encoding="utf-8"))
        for split in (meta.get("splits") or {}).values():
            dirs.add(str(split))
            dirs |= {f"{split}/{c.get('folder')}" for c in meta.get("classes") or []}
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    foreign = []
    for root, subdirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        for d in list(subdirs):
            r = (rel / d).as_posix()
            if r not in dirs or os.path.islink(Path(root) / d):
                foreign.append(r + "/")
                subdirs.remove(d)  # one line for a whole foreign folder
        foreign += [(rel / f).as_posix() for f in files if (rel / f).as_posix() not in ours]
    return sorted(foreign)


def _write_imagefolder(rows, output: Path, provenance: dict, fill=layouts.write_imagefolder,
                       **kw) -> layouts.LayoutResult:
    """Build the tree in a hidden folder beside ``output`` and rename it into place: a killed export
    leaves the old folder (or none), never half a tree. The tree carries fercure's marker, which is
    what lets a later --force replace it."""
    output = output.absolute()
    tmp = output.parent / f".{output.name}.{secrets.token_hex(4)}.partial"
    try:
        with disk_full_as_error(output):  # a full disk: a named error, the partial tree removed, the old one kept
            return _fill_folder(rows, output, tmp, provenance, fill, **kw)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fill_folder(rows, output: Path, tmp: Path, provenance: dict, fill, **kw) -> layouts.LayoutResult:
    """_write_imagefolder's body: fill ``tmp``, then rename it over ``output``."""
    tmp.mkdir(parents=True)
    (tmp / EXPORT_MARKER).write_text(f"written by fercure {__version__} export-cleaned; --force replaces this "
                                     "folder as a whole\n", encoding="utf-8")
    result, index = fill(rows, tmp, **kw)
    _check_some_images(result, rows, output)
    with open(tmp / "index.csv", "w", encoding="utf-8", newline="") as f:
        core.neutralise_formulas(index).to_csv(f, index=False)
    splits = sorted({str(s or "train") for s in rows["split"]})
    with open(tmp / "classes.json", "w", encoding="utf-8") as f:
        json.dump(layouts.classes_json(kw.get("classes", ()), splits), f, indent=2, ensure_ascii=False)
    with open(tmp / "provenance.json", "w", encoding="utf-8") as f:
        json.dump({"fercure_version": __version__, "schema_version": SCHEMA_VERSION, **provenance,
                   "n_images": result.n_images, "skipped": result.skipped}, f, indent=2, default=str)
    old = None
    if output.exists():
        old = output.parent / f".{output.name}.{secrets.token_hex(4)}.old"
        os.replace(output, old)
    os.replace(tmp, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return result


def read_provenance(path: Path | str) -> dict:
    """Provenance of a cleaned export: Parquet key-value metadata, or a CSV's sidecar JSON."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() == ".csv" or provenance_path_for(path).exists():
        return json.loads(provenance_path_for(path).read_text(encoding="utf-8"))
    return read_metadata(path)

"""Stage 4: WS/audit.parquet → a cleaned annotation table (Parquet, or CSV + provenance JSON), or a
training layout (an ImageFolder tree, a Hugging Face Parquet; ``fercure.layouts``).

The rules live in ``fercure.export``. This stage checks that the audit still matches the manifest
(one row per sample, nothing lost), refuses to overwrite an existing output without ``force`` and
never writes over the workspace's own inputs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from fercure import __version__, schema
from fercure import decisions as reviewed
from fercure import export as core
from fercure import layouts
from fercure.report.columns import column
from fercure import workspace as ws_errors
from fercure.store import open_store
from fercure.workspace import (
    SCHEMA_VERSION,
    Workspace,
    WorkspaceError,
    atomic_path,
    atomic_write_json,
    check_input_file,
    read_metadata,
    read_table,
    write_table,
)

FORMATS = ("parquet", "csv", "imagefolder", "hf")


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
    # decisions skipped, each with file, row and fix: shown through ``warning``, not as a table row
    decision_problems: list[str] = field(default_factory=list, metadata={"hidden": True})
    n_images: int | None = None  # imagefolder / hf: images written
    skipped: list[str] = field(default_factory=list)  # imagefolder / hf: samples left out, why

    @property
    def warning(self) -> str | None:
        """The skipped decisions, shown under the summary (the rest were applied)."""
        if not self.decision_problems:
            return None
        shown = self.decision_problems[:20]
        more = len(self.decision_problems) - len(shown)
        return (f"{len(self.decision_problems)} decision(s) were not applied; the others were:\n"
                + "\n".join(shown) + (f"\n... and {more} more (all listed in the provenance)" if more else ""))


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
) -> ExportSummary:
    """Write the cleaned table for ``policy`` (keep/relabel/drop/review per the rules in
    ``fercure.export``) to ``output`` as ``fmt``: "parquet", "csv" (formulas neutralised, provenance
    in a sidecar JSON), "imagefolder" (a folder; ``images`` crops or originals, originals linked by
    ``link``) or "hf" (a Hugging Face Parquet; originals by absolute path).

    ``decisions``: a reviewer's decisions file (saved from the review report; ``fercure.decisions``):
    each valid decision overrides fercure's action for its sample (in every format: a dropped sample
    leaves the layouts, a relabelled one moves to its new class), and every row's ``decided_by``
    says whose action it is. Invalid decisions are skipped and listed in the summary's
    ``decision_problems`` and the provenance."""
    start = time.perf_counter()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(Path(workspace))
    output = Path(output)
    if policy not in core.POLICIES:
        raise ExportError(f"Unknown policy {policy!r}; choose one of {', '.join(core.POLICIES)}.")
    if fmt not in FORMATS:
        raise ExportError(f"Unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if images not in layouts.IMAGE_SOURCES:
        raise ExportError(f"Unknown --images {images!r}; choose one of {', '.join(layouts.IMAGE_SOURCES)}.")
    if link not in layouts.LINKS:
        raise ExportError(f"Unknown --link {link!r}; choose one of {', '.join(layouts.LINKS)}.")
    ws.require(ws.manifest, "prepare")
    ws.require(ws.audit, "audit-labels")
    if decisions is not None:
        try:
            decisions = check_input_file(decisions, option="--decisions",
                                         hint="Pass the CSV or JSON file saved from the review report.")
        except WorkspaceError as e:
            raise ExportError(str(e)) from None

    sidecar = provenance_path_for(output) if fmt == "csv" else None
    # One rule for every output (fercure.workspace.check_output_path): never into the input folder,
    # over the label file or the workspace's own files, over a device/FIFO/folder, or silently.
    if fmt == "imagefolder":
        _check_folder_output(ws, output, force)
        if decisions is not None and decisions.resolve().is_relative_to(output.resolve()):
            raise ExportError(f"--decisions {decisions} is inside --output {output}, which the export replaces as "
                              "a whole; fercure never overwrites its inputs. Move the decisions file or choose "
                              "another --output.")
    for target in [] if fmt == "imagefolder" else [output] + ([sidecar] if sidecar else []):
        try:
            ws.check_output(target, force=force, option="--output")
        except ws_errors.OutputExistsError as e:
            raise OutputExistsError(str(e)) from None
        except WorkspaceError as e:
            raise ExportError(str(e)) from None
        if decisions is not None and target.resolve() == decisions.resolve():
            raise ExportError(f"--output {target} is the --decisions file; fercure never overwrites its inputs. "
                              "Choose another path.")

    manifest_ids = read_table(ws.manifest)["sample_id"].astype(str)
    audit = read_table(ws.audit)
    audit_meta = read_metadata(ws.audit)
    audit_ids = audit["sample_id"].astype(str)
    missing = ~manifest_ids.isin(audit_ids)
    if missing.any() or len(audit_ids) != len(manifest_ids):
        raise ExportError(
            f"{ws.audit} does not match {ws.manifest} ({int(missing.sum())} manifest samples have no audit row, "
            f"{len(audit_ids)} audit rows for {len(manifest_ids)} samples): the manifest changed after the audit. "
            f"Re-run `fercure audit-labels -w {ws.root}`.")
    classes = audit_meta.get("classes") or [c[2:] for c in audit.columns if c.startswith("p_")]

    verdict = ((audit_meta.get("stats") or {}).get("model_strength") or {}).get("verdict")
    cleaned = core.apply_policy(audit, classes, policy, min_confidence=min_confidence,
                                model_verdict=verdict)
    decided = _read_decisions(decisions, audit, classes) if decisions is not None else None
    cleaned = reviewed.apply(cleaned, decided, classes, soft=policy == "soft")
    counts = core.action_counts(cleaned)
    provenance = {
        "run_id": audit_meta.get("run_id"),
        "thresholds": audit_meta.get("thresholds", {}),
        "policy": policy,
        "min_confidence": float(min_confidence),
        "model_strength": verdict,
        "classes": list(classes),
        "soft_labels": "training targets" if policy == "soft" else "model distribution",
        "actions": counts,
        "audit": str(ws.audit.resolve()),
        "audit_fercure_version": audit_meta.get("fercure_version"),
        "decided_by": {who: int((cleaned[reviewed.CLEANED["decided_by"]] == who).sum())
                       for who in (reviewed.REVIEWER, reviewed.FERCURE)},
        "decisions": reviewed.summary(decided),
        "input_root": ws.prepared_inputs()[0],
        "crop_store": str(ws.store.resolve()),
        "format": fmt,
    }
    n_images, skipped = None, []
    if fmt == "parquet":
        write_table(cleaned, output, provenance, table=schema.CLEANED)
    elif fmt == "csv":
        # The sidecar goes first: a CSV never appears without its provenance beside it.
        atomic_write_json(sidecar, {"fercure_version": __version__, "schema_version": SCHEMA_VERSION, **provenance})
        with atomic_path(output) as tmp:
            core.neutralise_formulas(cleaned).to_csv(tmp, index=False, encoding="utf-8")
    else:
        rows = layouts.exported_rows(cleaned)
        store = open_store(ws.store) if images == "crops" and ws.store.exists() else None
        input_root = Path(provenance["input_root"]) if provenance["input_root"] else None
        if images == "originals" and input_root is None:
            raise ExportError(f"{ws.manifest} does not name its input folder; re-run `fercure prepare` to export "
                              "the original images.")
        provenance.update(images=images, link=link if images == "originals" else None)
        try:
            if fmt == "imagefolder":
                result = _write_imagefolder(rows, output, provenance, images=images, link=link, store=store,
                                            input_root=input_root)
                sidecar = output / "provenance.json"
            else:
                frame, result = layouts.hf_frame(rows, classes, images=images, store=store, input_root=input_root)
                write_table(frame, output, provenance, table=schema.HF_EXPORT,
                            arrow_metadata={b"huggingface": layouts.hf_features(classes)})
        except ValueError as e:  # a class or split that cannot be a folder name
            raise ExportError(f"Cannot export {output}: {e}.") from None
        n_images, skipped = result.n_images, result.skipped
    return ExportSummary(
        output=output, fmt=fmt, policy=policy, run_id=provenance["run_id"], n_rows=len(cleaned),
        actions=counts, provenance_path=sidecar, seconds=time.perf_counter() - start,
        decided_by_reviewer=provenance["decided_by"][reviewed.REVIEWER],
        decision_problems=[str(p) for p in decided.problems] if decided else [],
        n_images=n_images, skipped=skipped,
    )


def _read_decisions(path: Path, audit, classes) -> reviewed.Decisions:
    """The decisions file checked against the audit; ExportError when it is not a decisions file."""
    try:
        records = reviewed.read_decisions(path)
    except reviewed.DecisionsFileError as e:
        raise ExportError(str(e)) from None
    except OSError as e:
        raise ExportError(f"Cannot read --decisions {path} ({e.strerror or e}).") from None
    return reviewed.parse(records, file=str(path), sample_ids=column(audit, "id").astype(str).tolist(),
                          given=column(audit, "given", "").astype(str).tolist(),
                          suggested=column(audit, "suggested", None).tolist(), classes=classes)


def _check_folder_output(ws: Workspace, output: Path, force: bool) -> None:
    """An ImageFolder output is a folder: new, empty, or (with --force) replaced as a whole."""
    try:
        input_root, labels_file = ws.prepared_inputs()
        protected = {**ws.owned(), **({Path(labels_file): "the label file given to prepare"} if labels_file else {})}
        ws_errors.check_output_path(output, force=True, option="--output", input_root=input_root,
                                    protected=protected, folder=True)
    except WorkspaceError as e:
        raise ExportError(str(e)) from None
    if output.is_dir() and any(output.iterdir()) and not force:
        raise OutputExistsError(f"{output} already exists and is not empty; pass --force to replace it.")


def _write_imagefolder(rows, output: Path, provenance: dict, **kw) -> layouts.LayoutResult:
    """Build the tree in a hidden folder beside ``output`` and rename it into place: a killed export
    leaves the old folder (or none), never half a tree."""
    output = output.absolute()
    tmp = output.parent / f".{output.name}.{secrets.token_hex(4)}.partial"
    tmp.mkdir(parents=True)
    try:
        result, index = layouts.write_imagefolder(rows, tmp, **kw)
        with open(tmp / "index.csv", "w", encoding="utf-8", newline="") as f:
            core.neutralise_formulas(index).to_csv(f, index=False)
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
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return result


def read_provenance(path: Path | str) -> dict:
    """Provenance of a cleaned export: Parquet key-value metadata, or a CSV's sidecar JSON."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() == ".csv" or provenance_path_for(path).exists():
        return json.loads(provenance_path_for(path).read_text(encoding="utf-8"))
    return read_metadata(path)

"""Stage 4: WS/audit.parquet → a cleaned annotation table (Parquet, or CSV + provenance JSON).

The rules live in ``fercure.export``. This stage checks that the audit still matches the manifest
(one row per sample, nothing lost), refuses to overwrite an existing output without ``force`` and
never writes over the workspace's own inputs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from fercure import __version__, schema
from fercure import decisions as reviewed
from fercure import export as core
from fercure.report.columns import column
from fercure import workspace as ws_errors
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

FORMATS = ("parquet", "csv")


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
    provenance_path: Path | None  # the CSV's sidecar JSON; None for Parquet (provenance is inside)
    seconds: float
    decided_by_reviewer: int = 0  # rows whose action a --decisions file set
    # decisions skipped, each with file, row and fix: shown through ``warning``, not as a table row
    decision_problems: list[str] = field(default_factory=list, metadata={"hidden": True})

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
    """Where a CSV export's provenance goes: ``cleaned.csv`` → ``cleaned.csv.provenance.json``."""
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
) -> ExportSummary:
    """Write the cleaned table for ``policy`` (keep/relabel/drop/review per the rules in
    ``fercure.export``) to ``output`` as ``fmt`` ("parquet" or "csv").

    ``decisions``: a reviewer's decisions file (saved from the review report; ``fercure.decisions``):
    each valid decision overrides fercure's action for its sample, and every row's ``decided_by``
    says whose action it is. Invalid decisions are skipped and listed in the summary's
    ``decision_problems`` and the provenance."""
    start = time.perf_counter()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(Path(workspace))
    output = Path(output)
    if policy not in core.POLICIES:
        raise ExportError(f"Unknown policy {policy!r}; choose one of {', '.join(core.POLICIES)}.")
    if fmt not in FORMATS:
        raise ExportError(f"Unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.")
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
    for target in [output] + ([sidecar] if sidecar else []):
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
    }
    if fmt == "parquet":
        write_table(cleaned, output, provenance, table=schema.CLEANED)
    else:
        # The sidecar goes first: a CSV never appears without its provenance beside it.
        atomic_write_json(sidecar, {"fercure_version": __version__, "schema_version": SCHEMA_VERSION, **provenance})
        with atomic_path(output) as tmp:
            cleaned.to_csv(tmp, index=False, encoding="utf-8")
    return ExportSummary(
        output=output, fmt=fmt, policy=policy, run_id=provenance["run_id"], n_rows=len(cleaned),
        actions=counts, provenance_path=sidecar, seconds=time.perf_counter() - start,
        decided_by_reviewer=provenance["decided_by"][reviewed.REVIEWER],
        decision_problems=[str(p) for p in decided.problems] if decided else [],
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


def read_provenance(path: Path | str) -> dict:
    """Provenance of a cleaned export: Parquet key-value metadata, or a CSV's sidecar JSON."""
    path = Path(path)
    if path.suffix.lower() == ".csv" or provenance_path_for(path).exists():
        return json.loads(provenance_path_for(path).read_text(encoding="utf-8"))
    return read_metadata(path)

"""Stage summaries for machines and for what comes next (pure functions; the CLI prints them).

``as_json`` turns a stage's summary dataclass into JSON-ready data (``--json``); ``next_step`` says
where the stage's outputs are and which command reads them.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, pd.DataFrame):
        return {str(i): {str(c): _plain(v) for c, v in row.items()} for i, row in value.iterrows()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, numbers.Number):
        return float(value)
    return str(value)


def as_json(summary: Any, stage: str, workspace: Path | str | None = None) -> dict[str, Any]:
    """Every field of the summary, its derived figures (``images_per_s``…), and the next step."""
    out: dict[str, Any] = {"stage": stage}
    for f in dataclasses.fields(summary):
        out[f.name] = _plain(getattr(summary, f.name))
    for prop in ("images_per_s", "slowest_stage", "warning"):
        if hasattr(type(summary), prop) and isinstance(getattr(type(summary), prop), property):
            out[prop] = _plain(getattr(summary, prop))
    out.update(next_step(stage, summary, workspace))
    return out


def error_json(message: str, error: BaseException | None = None, code: int = 1) -> dict[str, Any]:
    """``--json``'s error object: the message, and where known the hint, the file and the row (an
    error may carry them as attributes: ``hint``, ``file`` or ``path``, ``row``)."""
    file = getattr(error, "file", None) or getattr(error, "path", None)
    row = getattr(error, "row", None)
    return {"error": message, "hint": getattr(error, "hint", None), "file": str(file) if file else None,
            "row": int(row) if isinstance(row, (int, np.integer)) else None, "exit_code": int(code)}


def next_step(stage: str, summary: Any, workspace: Path | str | None) -> dict[str, Any]:
    """``{"outputs": [paths], "next": command}`` for the stage that just finished."""
    ws = Path(workspace) if workspace is not None else Path(getattr(summary, "workspace", "."))
    if stage == "prepare":
        outputs = [str(ws / "manifest.parquet"), str(ws / "rejects.parquet"), str(ws / "faces" / "crops.npy")]
        if (ws / "annotations.parquet").exists():
            outputs.append(str(ws / "annotations.parquet"))
        if getattr(summary, "n_samples", 0) and not getattr(summary, "class_counts", {1: 1}):  # --no-labels
            return {"outputs": outputs, "next": f"label the photos, then `fercure prepare INPUT -w {ws} --labels FILE` "
                                                "(the same options; the crops are reused)"}
        return {"outputs": outputs, "next": f"fercure train -w {ws}"}
    if stage == "train":
        return {"outputs": [str(summary.run_dir)], "next": f"fercure audit-labels -w {ws}"}
    if stage == "audit-labels":
        outputs = [str(summary.audit_path)] + ([str(summary.report_path)] if summary.report_path else [])
        return {"outputs": outputs,
                # --force when an earlier export (the demo's) is there: the hint must run as printed
                "next": f"fercure export-cleaned -w {ws} -o {ws / 'cleaned.parquet'}"
                        + (" --force" if (ws / "cleaned.parquet").exists() else "")
                        + (f"  (review {summary.report_path} first; add --decisions FILE with the "
                           "decisions saved from it)" if summary.report_path else "")}
    if stage == "export-cleaned":
        outputs = [str(summary.output)] + ([str(summary.provenance_path)] if summary.provenance_path else [])
        return {"outputs": outputs, "next": _load_hint(summary.fmt, summary.output)}
    return {}


def _load_hint(fmt: str, output: Path) -> str:
    return {
        "parquet": f"train on it: pandas.read_parquet('{output}') (clean_label where action is keep or relabel; "
                   "review rows wait for a person: --decisions)",
        "csv": f"train on it: pandas.read_csv('{output}', keep_default_na=False) (clean_label where action is keep or "
               "relabel; review rows wait for a person: --decisions)",
        "imagefolder": f"train on it: torchvision.datasets.ImageFolder('{Path(output) / 'train'}') "
                       f"or datasets.load_dataset('imagefolder', data_dir='{output}')",
        "hf": f"train on it: datasets.load_dataset('parquet', data_files='{output}', split='train')",
        "label-studio": f"review in Label Studio: label config {Path(output) / 'label_config.xml'}, import "
                        f"{Path(output) / 'tasks.json'} (README: Reviewing in Label Studio or CVAT); then its JSON "
                        "export goes back with `export-cleaned --decisions FILE` or `train --trusted FILE`",
        "cvat": f"review in CVAT: a task of {Path(output) / 'images'} with the labels of "
                f"{Path(output) / 'cvat_labels.json'}, annotations {Path(output) / 'annotations.xml'} (README: "
                "Reviewing in Label Studio or CVAT); then its CVAT for images 1.1 annotations.xml goes back with "
                "`export-cleaned --decisions FILE` or `train --trusted FILE`",
    }.get(fmt, "")

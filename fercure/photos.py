"""A folder of photos without labels (``prepare --no-labels``): every image below the input root is a
sample with an empty label. Faces, quality and duplicates are judged as for labelled data; the
labels come later (``prepare --labels FILE`` on the same workspace reuses the crops)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from fercure.images import IMAGE_EXTENSIONS
from fercure.ingest import DEFAULT_SPLIT, REJECT_COLUMNS, SAMPLE_COLUMNS
from fercure.workspace import WorkspaceError, read_metadata, sample_id


def discover_photos(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(samples with label None, rejects) for every image file below ``root``, in path order. Hidden
    files and folders are skipped; links that lead outside the root are not followed (rejected)."""
    root = Path(root)
    if not root.is_dir():
        raise WorkspaceError(f"Input folder {root} does not exist or is not a folder.")
    real_root = os.path.realpath(root)
    found: list[str] = []
    rejects: list[tuple] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            real = os.path.realpath(full)
            if not (real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)):
                rejects.append(("", -1, rel, "path escapes the input root",
                                "a symbolic link to a file outside the input root is not followed; copy the file in"))
            elif not os.path.isfile(full):
                rejects.append(("", -1, rel, "not a regular file", "remove it or replace it with an image"))
            else:
                found.append(rel)
    found.sort()
    samples = pd.DataFrame({"sample_id": [sample_id(p) for p in found], "source_path": found,
                            "label": pd.Series([None] * len(found), dtype=object),
                            "split": [DEFAULT_SPLIT] * len(found)}, columns=SAMPLE_COLUMNS)
    rej = pd.DataFrame(rejects, columns=REJECT_COLUMNS).astype({"row": "int64"})
    return samples, rej


class LabelsNeededError(WorkspaceError):
    """A stage that judges labels was run on photos prepared without them."""


def require_labels(manifest_path: Path, stage: str, manifest: pd.DataFrame | None = None) -> None:
    """Refuse ``stage`` on photos prepared without labels (the manifest's ``no_labels`` metadata, or
    ``manifest`` without a single label), saying how to add them."""
    if manifest is not None:
        labels = manifest["label"] if "label" in manifest.columns else pd.Series(dtype=object)
        if labels.notna().any() and (labels.dropna().astype(str).str.len() > 0).any():
            return
    elif not read_metadata(manifest_path).get("no_labels"):
        return
    ws = Path(manifest_path).parent
    raise LabelsNeededError(
        f"`fercure {stage}` needs labels, and {manifest_path} has none (the photos were prepared with --no-labels). "
        f"Label them (a CSV of path,label; or path,annotator,label for several annotators), then join the file with "
        f"`fercure prepare INPUT -w {ws} --labels FILE` and the same options: the faces are not detected again.")

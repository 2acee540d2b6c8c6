"""The cleaned table → layouts that other tools load without glue.

- ImageFolder: ``OUT/<split>/<clean_label>/<sample_id>.<ext>``, the layout torchvision's
  ``ImageFolder`` (point it at ``OUT/<split>``) and Hugging Face's ``imagefolder`` builder (point it at
  ``OUT``: the split folders become splits) read as they are. Beside it ``OUT/index.csv`` maps each
  file back to its sample, its given label and what the policy did.
- Hugging Face Parquet: one row per exported sample with an ``image`` column in the ``datasets``
  Image layout (struct of bytes and path) and ``label`` as a ``ClassLabel`` whose names are stored in
  the file's ``huggingface`` metadata, so ``datasets.load_dataset("parquet", ...)`` decodes both.

Exported rows: every row with a ``clean_label`` (keep, relabel, review: review rows carry their
given label until a person decides; ``index.csv``/``action`` say which, and ``decided_by`` whether a
reviewer's ``--decisions`` file set the action). Dropped rows (by the policy or a reviewer) are left out.
The images are the aligned crops of WS/faces/crops.npy (written as PNG) or the original files
(symlinked or copied; never modified).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

IMAGE_SOURCES = ("crops", "originals")
LINKS = ("symlink", "copy")
# The columns every layout carries beside the image and its label.
INDEX_COLUMNS = ["sample_id", "split", "clean_label", "given_label", "action", "decided_by", "label_score",
                 "source_path", "store_index"]


@dataclass
class LayoutResult:
    n_images: int = 0
    skipped: list[str] = field(default_factory=list)  # one line per sample left out, with why


def exported_rows(cleaned: pd.DataFrame) -> pd.DataFrame:
    """The rows a training layout holds: those with a clean_label (dropped rows have none)."""
    return cleaned[cleaned["clean_label"].notna() & (cleaned["action"] != "drop")].reset_index(drop=True)


def check_path_part(value: str, what: str) -> str:
    """A class or split name used as a folder name must be one plain path component."""
    text = str(value)
    if text in ("", ".", "..") or "/" in text or "\\" in text or "\0" in text:
        raise ValueError(f"{what} {text!r} cannot be a folder name (it is empty, '.' or '..', or holds a "
                         f"path separator); rename it in the label file and run prepare again")
    return text


def file_name(sample_id: str, source_path: str, images: str) -> str:
    """``<sample_id>.png`` for a crop; ``<sample_id><original suffix>`` for an original file. The id
    keeps names unique (two inputs may share a base name) and free of untrusted text."""
    if images == "crops":
        return f"{sample_id}.png"
    return f"{sample_id}{Path(str(source_path)).suffix.lower()}"


def png_bytes(crop: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(crop)).save(buf, format="PNG")
    return buf.getvalue()


def _original(input_root: Path, source_path: str) -> Path:
    return Path(input_root) / source_path


def write_imagefolder(rows: pd.DataFrame, dest: Path, *, images: str, link: str, store: np.ndarray | None,
                      input_root: Path | None) -> tuple[LayoutResult, pd.DataFrame]:
    """Fill the (new, empty) folder ``dest``; return what was written and the index rows (with a
    ``file`` column relative to ``dest``). A sample whose image is missing is left out with a line
    in ``skipped``; the others are written."""
    result, index = LayoutResult(), []
    for row in rows.itertuples(index=False):
        split = check_path_part(row.split or "train", "split")
        label = check_path_part(row.clean_label, "class")
        rel = Path(split) / label / file_name(row.sample_id, row.source_path, images)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if images == "crops":
            if store is None or row.store_index < 0:
                result.skipped.append(f"{row.source_path}: no aligned crop (face_status {row.face_status})")
                continue
            target.write_bytes(png_bytes(store[int(row.store_index)]))
        else:
            src = _original(input_root, row.source_path)
            if not src.is_file():
                result.skipped.append(f"{src}: the original file is gone (moved or deleted since prepare)")
                continue
            if link == "symlink":
                os.symlink(src.resolve(), target)
            else:
                shutil.copyfile(src, target)
        result.n_images += 1
        index.append({"file": rel.as_posix(), **{c: getattr(row, c) for c in INDEX_COLUMNS}})
    return result, pd.DataFrame(index, columns=["file", *INDEX_COLUMNS])


def hf_frame(rows: pd.DataFrame, classes: Sequence[str], *, images: str, store: np.ndarray | None,
             input_root: Path | None) -> tuple[pd.DataFrame, LayoutResult]:
    """The Hugging Face table: ``image`` ({bytes, path}: the crop embedded as PNG, or the original's
    absolute path), ``label`` (index of clean_label in ``classes``) and the index columns."""
    cidx = {c: i for i, c in enumerate(classes)}
    result, out = LayoutResult(), []
    for row in rows.itertuples(index=False):
        if images == "crops":
            if store is None or row.store_index < 0:
                result.skipped.append(f"{row.source_path}: no aligned crop (face_status {row.face_status})")
                continue
            image = {"bytes": png_bytes(store[int(row.store_index)]), "path": f"{row.sample_id}.png"}
        else:
            src = _original(input_root, row.source_path)
            if not src.is_file():
                result.skipped.append(f"{src}: the original file is gone (moved or deleted since prepare)")
                continue
            image = {"bytes": None, "path": str(src.resolve())}
        if row.clean_label not in cidx:
            result.skipped.append(f"{row.source_path}: label {row.clean_label!r} is not one of the classes")
            continue
        result.n_images += 1
        out.append({"image": image, "label": cidx[row.clean_label], **{c: getattr(row, c) for c in INDEX_COLUMNS}})
    return pd.DataFrame(out, columns=["image", "label", *INDEX_COLUMNS]), result


def hf_features(classes: Sequence[str]) -> bytes:
    """The ``huggingface`` Parquet metadata ``datasets`` reads its Features from (what
    ``datasets.Features.arrow_schema`` writes): Image, ClassLabel names, plain values."""
    from fercure import schema

    values = {"string": "string", "int64": "int64", "float64": "float64"}
    features = {"image": {"_type": "Image"}, "label": {"names": list(classes), "_type": "ClassLabel"}}
    for col in schema.HF_EXPORT.columns:
        if col.name not in features:
            features[col.name] = {"dtype": values[schema._type_name(col.type)], "_type": "Value"}
    return json.dumps({"info": {"features": features}}).encode()

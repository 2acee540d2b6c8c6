"""The cleaned table → layouts that other tools load without glue.

- ImageFolder: ``OUT/<split>/<clean_label>/<sample_id>.<ext>``, the layout torchvision's
  ``ImageFolder`` (point it at ``OUT/<split>``) and Hugging Face's ``imagefolder`` builder (point it at
  ``OUT``: the split folders become splits) read as they are. Beside it ``OUT/index.csv`` maps each
  file back to its sample, its given label and what the policy did.
- Hugging Face Parquet: one row per exported sample with an ``image`` column in the ``datasets``
  Image layout (struct of bytes and path) and ``label`` as a ``ClassLabel`` whose names are stored in
  the file's ``huggingface`` metadata, so ``datasets.load_dataset("parquet", ...)`` decodes both.
- Annotation tools (``write_handoff``): the review queue's cards as ``OUT/images/`` and Label
  Studio tasks or a CVAT for images 1.1 task (``fercure.handoff`` says what each file holds).

Exported rows: every row with a ``clean_label`` (keep, relabel, review: review rows carry their
given label until a person decides; ``index.csv``/``action`` say which, and ``decided_by`` whether a
reviewer's ``--decisions`` file set the action). Dropped rows (by the policy or a reviewer) are left out.
The images are the aligned crops of WS/faces/crops.npy (written as PNG) or the original files
(symlinked or copied; never modified).

A workspace is data: every sample id (the file name) and source path read from its tables is
checked before use (``check_sample_id``, ``original_path``); a row that would write outside the
output or read outside the input root it names is skipped and named. Class names become folder
names through ``folder_name`` (safe for every loader; the mapping goes to classes.json).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from fercure import handoff

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


# Longest folder name written as it is (bytes): file systems allow 255; a longer one is shortened.
MAX_NAME_BYTES = 120


def folder_name(name: str) -> str:
    """The folder a class (or split) is written to: the name itself when every loader reads it back
    as it is, else a safe form with a short hash that keeps it unique. Loaders skip names that start
    with '.' or '_' (``datasets``' imagefolder drops ``.hidden`` and ``__pycache__``), file systems
    refuse names over 255 bytes, and a separator or control character cannot be in a folder name."""
    text = str(name)
    safe = (text not in ("", ".", "..") and not text.startswith((".", "_"))
            and len(text.encode("utf-8", "surrogateescape")) <= MAX_NAME_BYTES
            and not any(c in text for c in "/\\") and text.isprintable())
    if safe:
        return text
    tag = hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    body = "".join(c if c.isprintable() and c not in "/\\" else "-" for c in text).lstrip("._-")
    body = body.encode("utf-8", "ignore")[: MAX_NAME_BYTES - 20].decode("utf-8", "ignore").rstrip()
    return f"{body}-{tag}" if body else f"class-{tag}"


def folder_names(names: Sequence[str]) -> dict[str, str]:
    """``folder_name`` of each name: name → folder."""
    return {str(n): folder_name(str(n)) for n in names}


# A sample id names the exported file: fercure writes 16 hex digits; a crafted table may not.
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class UnsafeRow(ValueError):
    """A workspace row whose paths cannot be trusted (the message says which and why)."""


def check_sample_id(sample_id) -> str:
    text = str(sample_id)
    if not _SAFE_ID.fullmatch(text):
        raise UnsafeRow(f"sample_id {text[:80]!r} is not a fercure id (letters, digits, - and _ only): "
                        "the workspace table was altered")
    return text


def original_path(input_root: Path, source_path) -> Path:
    """The original file of ``source_path``, checked against the input root it claims: a relative
    path without '..' and with an image extension, whose real location (links followed) stays
    inside the root. UnsafeRow otherwise: a workspace is data, not a list of paths to trust."""
    from fercure.images import IMAGE_EXTENSIONS

    text = str(source_path)
    rel = Path(text)
    if not text or "\0" in text or rel.is_absolute() or ".." in rel.parts:
        raise UnsafeRow(f"source_path {text[:200]!r} is not a path inside the input root")
    if rel.suffix.lower() not in IMAGE_EXTENSIONS:
        raise UnsafeRow(f"source_path {text[:200]!r} has no image extension")
    root = Path(os.path.realpath(input_root))
    real = Path(os.path.realpath(Path(input_root) / rel))
    if root not in real.parents:
        raise UnsafeRow(f"source_path {text[:200]!r} leads outside the input root {input_root}")
    return Path(input_root) / rel


def file_name(sample_id: str, source_path: str, images: str) -> str:
    """``<sample_id>.png`` for a crop; ``<sample_id><original suffix>`` for an original file. The id
    keeps names unique (two inputs may share a base name) and free of untrusted text."""
    sid = check_sample_id(sample_id)
    if images == "crops":
        return f"{sid}.png"
    return f"{sid}{Path(str(source_path)).suffix.lower()}"


def png_bytes(crop: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(crop)).save(buf, format="PNG")
    return buf.getvalue()


def crop(store: np.ndarray, store_index) -> np.ndarray:
    """The aligned crop at ``store_index``; UnsafeRow when the store does not hold it."""
    i = int(store_index)
    if not 0 <= i < len(store):  # _source has already handled a missing store
        raise UnsafeRow(f"store_index {i} is outside the crop store ({len(store)} crops)")
    return store[i]


def _source(row, images: str, store, input_root: Path | None):
    """(crop array or original path, None), or (None, a line for ``skipped``)."""
    if images == "crops":
        if store is None or row.store_index < 0:
            return None, f"{row.source_path}: no aligned crop (face_status {row.face_status})"
        try:
            return crop(store, row.store_index), None
        except UnsafeRow as e:
            return None, f"{row.source_path}: {e}"
    try:
        src = original_path(input_root, row.source_path)
    except UnsafeRow as e:
        return None, f"sample {str(row.sample_id)[:80]!r}: {e}; skipped"
    if not src.is_file():
        return None, f"{src}: the original file is gone (moved or deleted since prepare)"
    return src, None


def _inside(path: Path, dest_real: Path) -> bool:
    """``path`` (not yet written) lies in ``dest_real`` (resolved once by the caller): its folder,
    links resolved, is inside it."""
    parent = Path(os.path.realpath(path.parent))
    return parent == dest_real or dest_real in parent.parents


def write_imagefolder(rows: pd.DataFrame, dest: Path, *, images: str, link: str, store: np.ndarray | None,
                      input_root: Path | None, classes: Sequence[str] = ()) -> tuple[LayoutResult, pd.DataFrame]:
    """Fill the (new, empty) folder ``dest``; return what was written and the index rows (with a
    ``file`` column relative to ``dest``). A sample whose image is missing, or whose row cannot be
    trusted (an id or path leading elsewhere), is left out with a line in ``skipped``; the others
    are written. Every class of ``classes`` gets its folder in every split, empty or not, so that
    ImageFolder sees as many classes as the HF export's ClassLabel (see ``classes_json``)."""
    result, index = LayoutResult(), []
    folders = folder_names([*classes, *rows["clean_label"].astype(str).unique()])
    for split in sorted({str(s or "train") for s in rows["split"]}):
        for c in classes:
            (dest / folder_name(split) / folders[str(c)]).mkdir(parents=True, exist_ok=True)
    dest_real = Path(os.path.realpath(dest))
    for row in rows.itertuples(index=False):
        split = folder_name(row.split or "train")
        label = folders[str(row.clean_label)]
        try:
            rel = Path(split) / label / file_name(row.sample_id, row.source_path, images)
        except UnsafeRow as e:
            result.skipped.append(f"{row.source_path}: {e}; skipped")
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not _inside(target, dest_real) or os.path.lexists(target):
            result.skipped.append(f"{row.source_path}: {rel.as_posix()} would leave the output or overwrite "
                                  "another sample's file; skipped")
            continue
        source, problem = _source(row, images, store, input_root)
        if problem:
            result.skipped.append(problem)
            continue
        _put_image(source, target, images, link)
        result.n_images += 1
        index.append({"file": rel.as_posix(), **{c: getattr(row, c) for c in INDEX_COLUMNS}})
    return result, pd.DataFrame(index, columns=["file", *INDEX_COLUMNS])


def _put_image(source, target: Path, images: str, link: str) -> None:
    """Write one image: a crop as PNG, an original linked or copied."""
    if images == "crops":
        target.write_bytes(png_bytes(source))
    elif link == "symlink":
        os.symlink(source.resolve(), target)
    else:
        shutil.copyfile(source, target)


def _image_size(source, images: str) -> tuple[int, int]:
    """(width, height) of a crop array or an original file (its header only)."""
    if images == "crops":
        return int(source.shape[1]), int(source.shape[0])
    from PIL import Image

    with Image.open(source) as im:
        return im.size


def write_handoff(rows: pd.DataFrame, dest: Path, *, fmt: str, images: str, link: str, store: np.ndarray | None,
                  input_root: Path | None, classes: Sequence[str] = (), image_url: str = handoff.DEFAULT_IMAGE_URL,
                  model_version: str = "fercure") -> tuple[LayoutResult, pd.DataFrame]:
    """Fill the (new, empty) folder ``dest`` with the queue's cards for an annotation tool
    (``fercure.handoff``): ``images/`` and the tool's files. ``rows``: the queue, in its order, with
    ``review_rank`` and ``queue_score`` (the queue's key). Returns what was written and the index rows,
    as ``write_imagefolder`` does; a card whose image cannot be written is left out and named."""
    result, index, cards = LayoutResult(), [], []
    (dest / handoff.IMAGES).mkdir(parents=True, exist_ok=True)
    dest_real = Path(os.path.realpath(dest))
    for row in rows.itertuples(index=False):
        try:
            suffix = Path(file_name(row.sample_id, row.source_path, images)).suffix
        except UnsafeRow as e:
            result.skipped.append(f"{row.source_path}: {e}; skipped")
            continue
        source, problem = _source(row, images, store, input_root)
        if problem:
            result.skipped.append(problem)
            continue
        try:
            width, height = _image_size(source, images)
        except OSError as e:
            result.skipped.append(f"{source}: not readable as an image ({e}); skipped")
            continue
        sugg = row.suggested_label if isinstance(row.suggested_label, str) and row.suggested_label else None
        score = float(row.queue_score) if np.isfinite(row.queue_score) else None
        card = handoff.Card(sample_id=str(row.sample_id), review_rank=int(row.review_rank),
                            given_label=str(row.given_label), suggested_label=sugg,
                            score=None if score is None else round(score, 6), action=str(row.action),
                            width=width, height=height, suffix=suffix)
        target = dest / card.image
        if not _inside(target, dest_real) or os.path.lexists(target):
            result.skipped.append(f"{row.source_path}: {card.image} would leave the output or overwrite another "
                                  "sample's file; skipped")
            continue
        _put_image(source, target, images, link)
        cards.append(card)
        result.n_images += 1
        index.append({"file": card.image, **{c: getattr(row, c) for c in INDEX_COLUMNS}})
    if fmt == handoff.LABEL_STUDIO:
        tasks = handoff.label_studio_tasks(cards, image_url=image_url, model_version=model_version)
        (dest / handoff.TASKS).write_text(json.dumps(tasks, indent=1, ensure_ascii=False), encoding="utf-8")
        (dest / handoff.LABEL_CONFIG).write_text(handoff.label_config(classes), encoding="utf-8")
    else:
        (dest / handoff.CVAT_XML).write_bytes(handoff.cvat_annotations(cards, classes, name=model_version))
        (dest / handoff.CVAT_LABELS).write_text(json.dumps(handoff.cvat_labels(classes), indent=1,
                                                           ensure_ascii=False), encoding="utf-8")
    return result, pd.DataFrame(index, columns=["file", *INDEX_COLUMNS])


def classes_json(classes: Sequence[str], splits: Sequence[str] = ()) -> dict:
    """OUT/classes.json: each class's index (the HF export's ClassLabel and the audit's order), the
    folder it is written to, and the index torchvision's ImageFolder gives it (sorted folder names)."""
    folders = folder_names(classes)
    by_folder = sorted(folders.values())
    return {
        "classes": [{"index": i, "name": str(c), "folder": folders[str(c)],
                     "imagefolder_index": by_folder.index(folders[str(c)])} for i, c in enumerate(classes)],
        "splits": {str(s): folder_name(str(s)) for s in splits},
    }


def hf_frame(rows: pd.DataFrame, classes: Sequence[str], *, images: str, store: np.ndarray | None,
             input_root: Path | None) -> tuple[pd.DataFrame, LayoutResult]:
    """The Hugging Face table: ``image`` ({bytes, path}: the crop embedded as PNG, or the original's
    absolute path), ``label`` (index of clean_label in ``classes``) and the index columns."""
    cidx = {c: i for i, c in enumerate(classes)}
    result, out = LayoutResult(), []
    for row in rows.itertuples(index=False):
        try:
            sid = check_sample_id(row.sample_id)
        except UnsafeRow as e:
            result.skipped.append(f"{row.source_path}: {e}; skipped")
            continue
        source, problem = _source(row, images, store, input_root)
        if problem:
            result.skipped.append(problem)
            continue
        if images == "crops":
            image = {"bytes": png_bytes(source), "path": f"{sid}.png"}
        else:
            image = {"bytes": None, "path": str(source.resolve())}
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

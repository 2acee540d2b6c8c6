"""The manifest and the crop store: what a finished run left that can be reused, and what a run (or
the merge of its shards) writes.

``reuse_previous`` takes every unchanged sample's row and crop from a finished run with the same
settings and input ("unchanged": same bytes, by a blake2b hash; size and mtime survive an rsync or
`cp -p` rewrite). ``write_outputs`` puts a ``Prepared`` set of rows in discovery order, marks
near-duplicates over the whole set, and writes the store (in manifest order: store_index is the
rank among rows with a crop), a vote file's annotations, the manifest and the rejects, each
atomically.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fercure import schema
from fercure import votes as vote_files
from fercure.faces import quality
from fercure.ingest import REJECT_COLUMNS
from fercure.label_rules import clean_label
from fercure.prepare.facepass import PrepareSettings
from fercure.prepare.summary import PrepareRun
from fercure.store import open_store, write_store
from fercure.workspace import DamagedFileError, Workspace, WorkspaceError, read_metadata, read_table, write_table


def display_path(path: str) -> str:
    """A path as the tables show it: a non-UTF-8 file name's bytes backslash-escaped (Parquet strings
    must be valid UTF-8)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class CropChunks:
    """Crops held in several arrays (chunks of one run, or the shards' memory-mapped files) read as
    one: ``take(positions)`` gathers by position in their concatenation."""

    def __init__(self, chunks: list[np.ndarray]) -> None:
        self.chunks = [c for c in chunks if len(c)]
        self.starts = np.cumsum([0] + [len(c) for c in self.chunks])

    def take(self, pos: np.ndarray) -> np.ndarray:
        which = np.searchsorted(self.starts, pos, side="right") - 1
        out = None
        for k in np.unique(which):
            sel = which == k
            part = np.asarray(self.chunks[k][pos[sel] - self.starts[k]])
            if out is None:
                out = np.empty((len(pos),) + part.shape[1:], dtype=np.uint8)
            out[sel] = part
        return out


@dataclass
class Prepared:
    """Processed samples ready for the manifest: their rows in any order (``_order`` is discovery
    order, ``crop_pos`` indexes ``crops``), the crops, the input's rejects, and the manifest's
    metadata (input root, label file, settings)."""

    rows: pd.DataFrame
    crops: CropChunks
    rejects: pd.DataFrame
    meta: dict

    @property
    def image_size(self) -> int:
        return int(self.meta["settings"]["image_size"])


def reuse_previous(run: PrepareRun, settings: PrepareSettings, input_root: Path,
                   samples: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Rows and crops of a finished earlier run for unchanged files, and the samples still to do."""
    size = settings.image_size
    reused_rows, reused_crops = pd.DataFrame(), np.zeros((0, size, size, 3), np.uint8)
    previous = _reusable_rows(run.ws, settings, input_root, run.notes)
    if previous is None:
        return reused_rows, reused_crops, samples
    prev_df, prev_store = previous
    # A crop depends on the file and the settings only: a changed label or split (labels joined to
    # photos prepared with --no-labels) reuses it and takes the new label.
    key = ["sample_id", "source_path", "content_hash"]
    # label_original from this run's reading too (a row whose case changed keeps its detection)
    merged = samples[key + ["_order", "label", "split", "label_original"]].merge(
        prev_df.drop(columns=["label", "split", "label_original"], errors="ignore"), on=key, how="inner")
    if len(merged):
        has = merged["store_index"].to_numpy() >= 0
        reused_crops = np.asarray(prev_store[merged.loc[has, "store_index"].to_numpy()])
        merged["crop_pos"] = -1
        merged.loc[has, "crop_pos"] = np.arange(has.sum())
        reused_rows = merged.drop(columns=["store_index", "duplicate_of"])
        # Duplicates are decided again below over the whole set, from the detector's verdict.
        reused_rows["face_status"] = reused_rows["detection_status"]
        reused_rows["reason"] = reused_rows["detection_reason"]
    return reused_rows, reused_crops, samples[~samples["sample_id"].isin(set(merged["sample_id"]))]


def _reusable_rows(ws: Workspace, settings: PrepareSettings, input_root: Path,
                   notes: list[str]) -> tuple[pd.DataFrame, np.ndarray] | None:
    """Rows and crops of a finished earlier run with the same settings and input root. Damaged or
    out-of-step files are not reused (a note says so): this run rewrites them."""
    if not (ws.manifest.exists() and ws.store.exists()):
        return None
    try:
        meta = read_metadata(ws.manifest)
        if meta.get("settings_fingerprint") != settings.fingerprint() or meta.get("input_root") != str(input_root.resolve()):
            return None
        previous = read_table(ws.manifest)
        store = open_store(ws.store)
    except DamagedFileError as e:
        notes.append(f"{e.path} is damaged; prepare processes every sample again and rewrites it.")
        return None
    if "content_hash" not in previous.columns:
        return None  # a manifest from before content hashes: nothing proves a file is unchanged
    if "store_index" not in previous.columns or previous["store_index"].max() >= len(store):
        notes.append(f"{ws.manifest} and {ws.store} are out of step; prepare processes every sample again.")
        return None
    return previous, store


def _mark_duplicates(df: pd.DataFrame, max_distance: int) -> int:
    """Set face_status=duplicate on later copies; return how many copies carry another label."""
    df["duplicate_of"] = ""
    df["detection_status"] = df["face_status"]
    df["detection_reason"] = df["reason"]
    has = df["phash"] != ""
    idx = np.flatnonzero(has.to_numpy())
    if len(idx) < 2:
        return 0
    hashes = np.array([int(h, 16) for h in df.loc[has, "phash"]], dtype=np.uint64)
    first = quality.find_duplicates(hashes, max_distance=max_distance)
    conflicts = 0
    for j, f in enumerate(first):
        if f < 0:
            continue
        row, orig = idx[j], idx[f]
        orig_id, orig_label = df.at[orig, "sample_id"], df.at[orig, "label"]
        df.at[row, "duplicate_of"] = orig_id
        df.at[row, "face_status"] = "duplicate"
        if df.at[row, "label"] != orig_label:
            conflicts += 1
            df.at[row, "reason"] = (
                f"near-duplicate of {df.at[orig, 'source_path']} which is labelled "
                f"'{orig_label}' (this copy: '{df.at[row, 'label']}'): one of them is mislabelled"
            )
        else:
            df.at[row, "reason"] = f"near-duplicate of {df.at[orig, 'source_path']}"
    return conflicts


def write_outputs(run: PrepareRun, prepared: Prepared,
                  voted: vote_files.VoteFile | None = None) -> tuple[pd.DataFrame, int]:
    """Order rows (discovery order), mark duplicates over the whole set, write the store in
    manifest order, the annotations of a vote file, the manifest and the rejects. Returns the
    manifest and how many duplicates carry another label than their original."""
    ws, meta, rejects = run.ws, prepared.meta, prepared.rejects
    manifest = prepared.rows.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)
    conflicts = _mark_duplicates(manifest, meta["settings"]["duplicate_distance"])
    manifest = manifest.rename(columns={"crop_pos": "store_index"})

    # The store is rewritten in manifest order so store_index == rank among rows with a crop.
    t = time.perf_counter()
    old_pos = manifest["store_index"].to_numpy()
    has = old_pos >= 0
    new_pos = np.full(len(manifest), -1)
    new_pos[has] = np.arange(has.sum())
    manifest["store_index"] = new_pos
    gather = old_pos[has]

    def chunks():
        for lo in range(0, len(gather), 4096):
            yield prepared.crops.take(gather[lo : lo + 4096])

    write_store(ws.store, chunks(), int(has.sum()), prepared.image_size)
    given = meta.get("classes_given")
    # --classes as the labels were keyed (NFC, no zero-width characters): the names train matches
    class_list = (list(dict.fromkeys(clean_label(str(c)) for c in given)) if given
                  else sorted(manifest["label"].dropna().unique().tolist()))
    columns = [
        "sample_id", "source_path", "label", "split", "face_status", "reason", "face_count", "face_score",
        "bbox", "landmarks", "face_size", "sharpness", "brightness", "contrast", "phash", "duplicate_of",
        "store_index", "width", "height", "file_size", "file_mtime_ns", "content_hash", "detection_status",
        "detection_reason", "crop_mode", "crop_fill", "label_original",
    ]
    # Rows reused from a manifest written before the column: the label as it was read.
    manifest["label_original"] = manifest.get("label_original", manifest["label"]).fillna(manifest["label"])
    table_meta = {"classes": class_list, **{k: meta[k] for k in ("input_root", "labels_file", "settings",
                                                                 "settings_fingerprint")}}
    if meta.get("no_labels"):
        table_meta["no_labels"] = True
    if voted is not None:
        by_id = voted.samples.set_index("sample_id")
        for col in ("n_votes", "agreement"):
            manifest[col] = manifest["sample_id"].map(by_id[col]).astype(np.float64)
        columns += ["n_votes", "agreement"]
        table_meta["annotations"] = {"kind": voted.kind, "n": len(voted.annotations),
                                     "annotators": int(voted.annotations["annotator"].nunique())}
        kept = voted.annotations[voted.annotations["sample_id"].isin(set(manifest["sample_id"]))]
        write_table(kept, ws.annotations, {"input_root": meta["input_root"], "labels_file": meta["labels_file"],
                                           "kind": voted.kind, "classes": class_list}, table=schema.ANNOTATIONS)
    elif ws.annotations.exists():  # an earlier vote file's: these labels are not votes
        ws.annotations.unlink()
    write_table(manifest[columns], ws.manifest, table_meta, table=schema.MANIFEST)
    write_rejects(ws, rejects, meta["input_root"])
    run.timings["write"] += time.perf_counter() - t
    if not has.any():
        # The tables are written (every row with its reason) but there is nothing to train on.
        raise WorkspaceError(
            f"None of the {len(manifest)} images under {meta['input_root']} could be used "
            f"({', '.join(f'{k}: {v}' for k, v in manifest['face_status'].value_counts().items())}). "
            f"The reasons are in {ws.manifest} (column 'reason')."
        )
    return manifest, conflicts


def write_rejects(ws: Workspace, rejects: pd.DataFrame, input_root: str) -> None:
    """WS/rejects.parquet: the rejected rows with their paths as the tables show them."""
    table = rejects.reindex(columns=REJECT_COLUMNS)
    for col in ("file", "source_path"):
        table[col] = table[col].astype(object).map(lambda v: display_path(v) if isinstance(v, str) else v)
    write_table(table, ws.rejects, {"input_root": input_root}, table=schema.REJECTS)

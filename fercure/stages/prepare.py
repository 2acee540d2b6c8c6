"""Stage 1: raw images + labels → aligned face crops (WS/faces/crops.npy) and WS/manifest.parquet.

``--shard I/N`` splits the work by a hash of sample_id: each shard writes its rows and crops under
WS/faces/shards/, without the workspace lock, and the shard that finds all N done merges them, under
the lock, into the same manifest and store one unsharded run writes.

Work goes in chunks. Each finished chunk is saved under WS/faces/parts/ (crops + rows, written
atomically), so an interrupted run resumes at the first unfinished chunk. A finished workspace is
also reused: re-running on the same input with the same settings takes every unchanged sample's
row and crop from the existing manifest and store, and only processes new or changed files
("unchanged": same bytes, by a blake2b hash; size and mtime survive an rsync or `cp -p` rewrite).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
import pandas as pd

from fercure import __version__, schema
from fercure.device import resolve_device
from fercure.faces import align, quality
from fercure.faces.quality import MULTI_FACE_POLICIES, NO_FACE_POLICIES
from fercure.faces.detect import Detection, FaceDetector, detect_with_padding
from fercure.images import header_size, load_rgb
from fercure import votes as vote_files
from fercure.ingest import MAX_REJECTED_SHARE, REJECT_COLUMNS, discover
from fercure.label_rules import check_classes, clean_label
from fercure.photos import discover_photos
from fercure.progress import NULL, Reporter
from fercure.store import open_store, write_store
from fercure.workspace import (
    DamagedFileError,
    Workspace,
    WorkspaceError,
    atomic_path,
    check_output_path,
    claim,
    disk_full_as_error,
    read_metadata,
    read_table,
    write_table,
)

STATUSES = schema.FACE_STATUSES  # the manifest's face_status values (declared in schema.py)
CHUNK_SIZE = 512
DEFAULT_CROP_SIZE = 112  # the crop store's side for photos of several sizes
MIN_CROP_SIZE = 16  # --image-size's least value


@dataclass(frozen=True)
class PrepareSettings:
    """Everything that changes a sample's row or crop; part of the resume fingerprint."""

    image_size: int = DEFAULT_CROP_SIZE
    on_no_face: str = "keep"
    multi_face: str = "largest"
    min_face_size: float = 20.0
    min_score: float = 0.9
    duplicate_distance: int = 4
    crop: str = "auto"

    def fingerprint(self) -> str:
        blob = json.dumps({**asdict(self), "fercure": __version__}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


@dataclass
class PrepareSummary:
    workspace: Path
    n_samples: int
    n_rejects: int
    status_counts: dict[str, int]
    class_counts: dict[str, int]
    n_with_crop: int
    n_reused: int
    conflicting_duplicates: int
    rejects_by_problem: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        processed = self.n_samples - self.n_reused
        return processed / self.seconds if self.seconds > 0 else 0.0

    @property
    def slowest_stage(self) -> str:
        return max(self.stage_seconds, key=self.stage_seconds.get) if self.stage_seconds else ""


def check_workspace(ws: Workspace, input_root: Path, labels_file: Path | str | None, *,
                    new_input: bool = False) -> None:
    """The output rule (fercure.workspace.check_output_path) for the workspace folder and each file
    prepare writes in it: not in the input folder, not the label file, no device/FIFO replaced.
    The workspace's own files are rewritten without --force: that is what re-running prepare does,
    on the input the workspace was prepared from. Another input folder is refused unless
    ``new_input``: its manifest and crops would be replaced and its runs and audit describe other images."""
    protected = {Path(labels_file): "the label file given with --labels"} if labels_file else {}
    for path, folder in ((ws.root, True), (ws.faces_dir, True), (ws.manifest, False), (ws.rejects, False),
                         (ws.store, False), (ws.annotations, False)):
        check_output_path(path, force=True, option="--workspace", input_root=input_root,
                          protected=protected, folder=folder)
    try:
        before = ws.prepared_inputs()[0] if ws.manifest.is_file() else None
    except DamagedFileError:  # prepare's own file, unreadable: it says nothing of its input, and prepare rebuilds it
        before = None
    if before and before != str(Path(input_root).resolve()) and not new_input:
        replaced = ws.contents() + ws.reviewed_work()
        raise WorkspaceError(
            f"Workspace {ws.root} was prepared from {before}, not {Path(input_root).resolve()}. Preparing another "
            "input there would replace " + "; ".join(replaced) + ". Use a new workspace (-w NEW), or pass "
            "--new-input to prepare this input there anyway (then train and audit again).")


def _file_stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


def _content_hash(path: Path) -> str:
    """blake2b of the file's bytes: what decides whether an input changed since the last run. Size
    and mtime do not: rsync and ``cp -p`` rewrite a file and keep both. '' when it cannot be read
    (decoding then says why)."""
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError:
        return ""
    return h.hexdigest()


def _display_path(path: str) -> str:
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# Memory per chunk is bounded by what is in flight, not by the chunk size or the 64 MP limit:
# * decoding: one full-size image per pool thread, Pillow's own buffer (4 B/px for 8-bit grey, RGB
#   or RGBA: ≤ 256 MB at 64 MP; a JPEG is decoded at 1/2-1/8 of that by Image.draft), shrunk to
#   DETECT_MAX_SIDE in Pillow and dropped; 16-bit, float and palette images are converted at full
#   size first (up to ~25 B/px for a moment);
# * the window: detection-size images (≤ 1600² × 3 B = 7.7 MB each) up to DECODE_BUDGET (512 MB)
#   plus one pool step; each array is dropped as soon as its crop is cut;
# * detection: ~90 B/px on ≤ 8 Mpx per detector batch (_PIXEL_BUDGET in fercure/faces/detect.py)
#   ≈ 720 MB, where a 64 MP image on its own needed 5.7 GB.
# In all ≈ 1.3 GB + 256 MB per decoding thread for 8-bit images, whatever the chunk size.
DETECT_MAX_SIDE = 1600
"""Longer side of the image the detector sees. FER faces are far above MTCNN's 20 px minimum at
this size; a face under 20 px here (< 1/80 of the side) would make a useless crop anyway."""
DECODE_BUDGET = 512 << 20
"""Bytes of decoded (detection-size) images a chunk holds at once."""


def _load_for_detection(path: Path):
    return load_rgb(path, max_side=DETECT_MAX_SIDE)


def _decode_windows(paths: list[Path], pool: ThreadPoolExecutor, budget: int):
    """``paths`` decoded in order, in windows of about ``budget`` bytes of image arrays (a window
    closes once it reaches the budget). One pool step (one image per thread) is decoded at a time,
    so no more than that many full-size images ever exist."""
    step = max(1, getattr(pool, "_max_workers", 1))
    window, used = [], 0
    for lo in range(0, len(paths), step):
        for d in pool.map(_load_for_detection, paths[lo : lo + step]):
            window.append(d)
            used += d.image.nbytes if d.image is not None else 0
        if used >= budget:
            yield window
            window, used = [], 0
    if window:
        yield window


def _in_file_pixels(det: Detection, d) -> Detection:
    """Boxes and landmarks from the shrunk detection image to the file's pixels, which the manifest
    records (bbox, landmarks, face_size, and min_face_size's too_small are about the photo)."""
    if d.scale_x == 1.0 and d.scale_y == 1.0:
        return det
    sx, sy = d.scale_x, d.scale_y
    return Detection(det.boxes / np.array([sx, sy, sx, sy]), det.scores, det.landmarks / np.array([sx, sy]))


def _face_record(d, det: Detection, settings: PrepareSettings) -> tuple[dict, np.ndarray | None]:
    """Manifest fields and crop of one decoded image with its detections (in detection-image
    pixels). The crop is the aligned face, or the image as given (``align.choose_crop``)."""
    size = settings.image_size
    n = len(det.scores)
    rec: dict = {"face_count": n, "crop_mode": "", "crop_fill": np.nan}
    if n:
        full = _in_file_pixels(det, d)
        k = quality.pick_face(full, (d.height, d.width), settings.multi_face)
        box, lm = full.boxes[k], full.landmarks[k]
        face_size = float(min(box[2] - box[0], box[3] - box[1]))
        status, reason = quality.face_status(
            n, float(det.scores[k]), face_size, min_score=settings.min_score,
            min_face_size=settings.min_face_size, multi_face=settings.multi_face,
        )
        rec.update(face_score=float(det.scores[k]), bbox=[float(v) for v in box],
                   landmarks=[float(v) for v in lm.reshape(-1)], face_size=face_size,
                   face_status=status, reason=reason)
        # Aligned from the detection-size image, not the file: full resolution only adds detail
        # to a face smaller than the crop (image_size px) at DETECT_MAX_SIDE, i.e. < 7 % of a
        # 1600 px side at 112 (a background face, not a FER sample); and the affine warp does not
        # antialias, so a 2000 px face warped straight from the file to 112 px would alias, while
        # the detection image was shrunk with an antialiasing filter.
        shape = d.image.shape
        outside = align.outside_fraction(det.landmarks[k], shape, size)
        mode = align.choose_crop(settings.crop, outside, align.box_coverage(det.boxes[k], shape))
        rec["crop_mode"] = mode
        if mode == "as-given":
            rec["crop_fill"] = 0.0
            b = det.boxes[k]
            return rec, align.resize_whole(d.image, size, centre=((b[0] + b[2]) / 2, (b[1] + b[3]) / 2))
        rec["crop_fill"] = outside
        return rec, align.align_face(d.image, det.landmarks[k], size)
    status, reason = quality.face_status(
        0, float("nan"), 0.0, min_score=settings.min_score,
        min_face_size=settings.min_face_size, multi_face=settings.multi_face,
    )
    rec.update(face_status=status, reason=reason)
    if settings.on_no_face != "keep":
        return rec, None
    # Pre-cropped datasets (FER2013's 48×48 crops) often defeat the detector:
    # keep the whole image so the sample still trains, flagged as no_face.
    rec["reason"] = (reason + "; " if reason else "") + "kept the whole image (--on-no-face keep)"
    rec.update(crop_mode="as-given", crop_fill=0.0)
    return rec, align.resize_whole(d.image, size)


def _process_chunk(
    rows: pd.DataFrame, input_root: Path, detector: FaceDetector, settings: PrepareSettings,
    pool: ThreadPoolExecutor, timings: Counter,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Decode, detect, align and score one chunk, one decode window at a time (see DECODE_BUDGET).
    Returns its manifest rows and crops (in row order of the rows that got a crop; ``crop_pos``
    says which)."""
    size = settings.image_size
    paths = [input_root / p for p in rows["_fs_path"]]
    out, crops = [], []
    t0 = time.perf_counter()
    for window in _decode_windows(paths, pool, DECODE_BUDGET):
        t1 = time.perf_counter()
        timings["decode"] += t1 - t0
        usable = [d for d in window if d.status == "ok"]
        # A miss gets a second look with a border around the image (a face filling its frame).
        detections = detect_with_padding(detector, [d.image for d in usable], settings.min_score,
                                         max_side=DETECT_MAX_SIDE)[0] if usable else []
        det_of = {id(d): det for d, det in zip(usable, detections)}
        t2 = time.perf_counter()
        timings["detect"] += t2 - t1
        for d in window:
            rec = {
                "face_status": d.status, "reason": d.reason, "face_count": 0, "face_score": np.nan,
                "bbox": None, "landmarks": None, "face_size": np.nan, "width": d.width, "height": d.height,
                "crop_pos": -1, "crop_mode": "", "crop_fill": np.nan,
            }
            det = det_of.get(id(d))
            if det is not None:
                fields, crop = _face_record(d, det, settings)
                rec.update(fields)
                if crop is not None:
                    rec["crop_pos"] = len(crops)
                    crops.append(crop)
            d.image = None  # the crop is cut: the decoded image goes now, not with the chunk
            out.append(rec)
        del window, usable, detections, det_of
        t0 = time.perf_counter()
        timings["align"] += t0 - t2
    t3 = time.perf_counter()

    df = pd.concat([rows.drop(columns="_fs_path").reset_index(drop=True), pd.DataFrame(out)], axis=1)
    crop_arr = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
    blur = quality.blur_score(crop_arr) if len(crop_arr) else np.zeros(0)
    bright, contrast = quality.brightness_contrast(crop_arr) if len(crop_arr) else (np.zeros(0), np.zeros(0))
    hashes = quality.phash(crop_arr) if len(crop_arr) else np.zeros(0, np.uint64)
    pos = df["crop_pos"].to_numpy()
    has = pos >= 0
    for col, vals in (("sharpness", blur), ("brightness", bright), ("contrast", contrast)):
        df[col] = np.nan
        df.loc[has, col] = np.asarray(vals, dtype=float)[pos[has]]
    df["phash"] = ""
    df.loc[has, "phash"] = [f"{int(h):016x}" for h in np.asarray(hashes)[pos[has]]]
    timings["quality"] += time.perf_counter() - t3
    return df, crop_arr


def _save_part(part_dir: Path, k: int, df: pd.DataFrame, crops: np.ndarray) -> None:
    with disk_full_as_error(part_dir):
        part_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(part_dir / f"part-{k:05d}.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, crops)
    # The rows file is written last: its presence marks the part complete.
    write_table(df, part_dir / f"part-{k:05d}.parquet")


def _load_part(part_dir: Path, k: int, sample_ids: list[str],
               content_hashes: list[str]) -> tuple[pd.DataFrame, np.ndarray] | None:
    rows_path, crops_path = part_dir / f"part-{k:05d}.parquet", part_dir / f"part-{k:05d}.npy"
    if not (rows_path.exists() and crops_path.exists()):
        return None
    try:
        df = read_table(rows_path)
        crops = np.load(crops_path)
    except Exception:  # a part from a killed run that is unreadable is simply redone
        return None
    if df["sample_id"].tolist() != sample_ids:
        return None
    if "content_hash" not in df.columns or df["content_hash"].tolist() != content_hashes:
        return None  # a file changed since the interrupted run: redo its chunk
    return df, crops


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


def run_prepare(
    input_root: Path | str,
    workspace: Workspace | Path | str,
    *,
    labels_file: Path | str | None = None,
    classes: list[str] | None = None,
    device: str = "auto",
    batch_size: int = 64,
    workers: int = 2,
    image_size: int | None = None,
    on_no_face: str = "keep",
    multi_face: str = "largest",
    min_face_size: float = 20.0,
    min_score: float = 0.9,
    crop: str = "auto",
    chunk_size: int = CHUNK_SIZE,
    fold_case: bool = True,
    max_rejected: float = MAX_REJECTED_SHARE,
    shard: tuple[int, int] | None = None,
    merge: bool = True,
    merge_lock: Callable[[], ContextManager] | None = None,
    no_labels: bool = False,
    new_input: bool = False,
    reporter: Reporter = NULL,
) -> PrepareSummary:
    """Prepare the input into the workspace (module docstring).

    ``no_labels``: every image below ``input_root`` is a sample with an empty label (a folder of
    photos); a later run with ``labels_file`` and the same settings reuses its crops. A
    ``labels_file`` with several labels per image (``fercure.votes``) keeps every annotation in
    WS/annotations.parquet and labels each image with the majority vote.

    With ``shard=(i, n)`` only the samples whose sample_id hashes to shard i of n are processed,
    into WS/faces/shards/ (nothing else in the workspace is touched, so shards run side by side,
    also on machines sharing the folder); when this shard finds all n present it merges them
    (``merge``) into the manifest and store an unsharded run writes, holding ``merge_lock()`` (the
    CLI passes the workspace lock) for the merge only."""
    start = time.perf_counter()
    input_root = Path(input_root)
    ws = workspace if isinstance(workspace, Workspace) else Workspace(Path(workspace))
    _check_options(input_root, on_no_face, multi_face, crop, shard)
    check_workspace(ws, input_root, labels_file, new_input=new_input)
    if no_labels and labels_file is not None:
        raise WorkspaceError("--no-labels and --labels exclude each other: prepare the photos with --no-labels, "
                             "then join the label file later with `fercure prepare INPUT -w WS --labels FILE` "
                             "(the crops are reused).")
    samples, rejects, notes, voted = _discover_samples(input_root, labels_file, classes, reporter, no_labels,
                                                       fold_case)
    if samples.empty:
        raise _no_usable_rows(ws, input_root, labels_file, rejects)
    _check_rejected_share(ws, input_root, labels_file, samples, rejects, max_rejected)
    if "label_original" not in samples:  # photos without labels, a vote file's majority: as read
        samples = samples.assign(label_original=samples["label"])
    if voted is not None and shard is not None:
        raise WorkspaceError(f"{labels_file} has several labels per image; prepare it without --shard (a vote "
                             "file is not split into shards yet).")
    if image_size is None:  # before the shards split: every shard decides the same size
        image_size = crop_size_for(_header_sizes(input_root, samples, workers), notes)
        reporter.log(notes[-1])
    settings = PrepareSettings(image_size, on_no_face, multi_face, float(min_face_size), float(min_score), crop=crop)
    if shard is not None:
        check_shard_count(shard, len(samples), input_root)
    claim(ws.root)  # creates the folder; marks it fercure's when it was new or empty
    # The manifest's row order is discovery order, whichever shard processed a row.
    samples = samples.assign(_order=np.arange(len(samples)))
    shard_dir = None
    if shard is None:
        ws.remove_stale_temps()  # under the caller's lock; a shard holds none while it works
    else:
        shard_dir = ws.faces_dir / "shards" / _shard_set_key(samples, settings, shard[1])
        notes.extend(_other_input_sets(ws, shard_dir, shard[1]))
        samples = samples[shard_of(samples["sample_id"], shard[1]) == shard[0]]
        _remove_own_temps(shard_dir, shard[0])
    samples = _with_file_identity(samples, input_root, workers)
    n_notes = len(notes)
    reused_rows, reused_crops, todo = _reuse_previous(ws, settings, input_root, samples, notes)
    for note in notes[n_notes:]:
        reporter.log(note)
    part_dir = _part_dir(ws, settings, shard_dir, shard)

    timings: Counter = Counter()
    frames, crop_chunks = ([reused_rows], [reused_crops]) if len(reused_rows) else ([], [])
    if len(todo):
        label = "prepare" if shard is None else f"prepare shard {shard[0]}/{shard[1]}"
        detect = dict(device=device, batch_size=batch_size, min_face_size=min_face_size, workers=workers)
        _process_todo(todo, input_root, part_dir, settings, detect, chunk_size, label, frames, crop_chunks,
                      timings, reporter)

    # crop_pos in reused rows was relative to reused_crops, which sits first: offsets line up.
    if frames:
        rows_df = pd.concat(frames, ignore_index=True)
    else:  # a shard that drew no sample
        rows_df = samples.drop(columns="_fs_path").assign(
            crop_pos=pd.Series(dtype=np.int64), face_status=pd.Series(dtype=object))
    meta = _manifest_meta(input_root, labels_file, classes, settings)
    if no_labels:
        meta["no_labels"] = True
    if voted is not None:
        meta["classes_given"] = meta["classes_given"] or voted.classes
    reused = len(reused_rows)
    if shard is not None:
        return _finish_shard(ws, shard, shard_dir, part_dir, rows_df, crop_chunks, rejects, meta, image_size,
                             merge, merge_lock, notes, reporter, start, timings, reused)
    manifest, conflicts = _finish(ws, rows_df, _Concat(crop_chunks), rejects, meta, image_size, timings, voted)
    shutil.rmtree(ws.prepare_parts, ignore_errors=True)
    if no_labels:  # no audit and no report to list them: the summary does
        notes.append(_face_problems_note(manifest, ws))
    return _summary(ws, manifest, rejects, reused, conflicts, notes + face_notes(manifest, asdict(settings)),
                    timings, start)


def _face_problems_note(manifest: pd.DataFrame, ws: Workspace, shown: int = 5) -> str:
    """The face problems of photos prepared without labels, by status, with the first few files."""
    odd = manifest[manifest["face_status"] != "ok"]
    if odd.empty:
        return f"Every one of the {len(manifest)} photos has one clear face."
    counts = ", ".join(f"{s}: {n}" for s, n in odd["face_status"].value_counts().sort_index().items())
    first = "; ".join(f"{p} ({s}{': ' + r if r else ''})" for p, s, r in
                      zip(odd["source_path"][:shown], odd["face_status"][:shown], odd["reason"].fillna("")[:shown]))
    return (f"Face problems in {len(odd)} of {len(manifest)} photos ({counts}): {first}"
            + (f"; and {len(odd) - shown} more" if len(odd) > shown else "")
            + f". All of them: {ws.manifest} (face_status, reason).")


def _manifest_meta(input_root: Path, labels_file: Path | str | None, classes: list[str] | None,
                   settings: PrepareSettings) -> dict:
    return {
        "classes_given": list(classes) if classes else None, "input_root": str(input_root.resolve()),
        "labels_file": str(Path(labels_file).resolve()) if labels_file else None,
        "settings": asdict(settings), "settings_fingerprint": settings.fingerprint(),
    }


def _check_options(input_root: Path, on_no_face: str, multi_face: str, crop: str,
                   shard: tuple[int, int] | None) -> None:
    if not input_root.is_dir():
        raise WorkspaceError(f"Input folder {input_root} does not exist or is not a folder.")
    if on_no_face not in NO_FACE_POLICIES:
        raise WorkspaceError(f"--on-no-face must be {' or '.join(NO_FACE_POLICIES)}, not {on_no_face!r}.")
    if multi_face not in MULTI_FACE_POLICIES:
        raise WorkspaceError(f"--multi-face must be {', '.join(MULTI_FACE_POLICIES[:-1])} or {MULTI_FACE_POLICIES[-1]}, "
                             f"not {multi_face!r}.")
    if crop not in align.CROP_MODES:
        raise WorkspaceError(f"--crop must be {', '.join(align.CROP_MODES)}, not {crop!r}.")
    if shard is not None:
        check_shard(*shard)


def _discover_samples(input_root: Path, labels_file: Path | str | None, classes: list[str] | None,
                      reporter: Reporter, no_labels: bool = False, fold_case: bool = True
                      ) -> tuple[pd.DataFrame, pd.DataFrame, list[str], vote_files.VoteFile | None]:
    """The labelled images under ``input_root`` (every image, unlabelled, with ``no_labels``), the
    rejected rows, notes (already logged) and, for a vote file, its annotations."""
    voted = None
    if no_labels:
        samples, rejects = discover_photos(input_root)
        if samples.empty:
            raise WorkspaceError(f"No image files found under {input_root} (extensions: .jpg, .png, ...).")
        samples.attrs["notes"] = [f"{len(samples)} photos without labels: faces, quality and duplicates are judged; "
                                  "train and audit-labels need labels (join a label file later with "
                                  "`fercure prepare INPUT -w WS --labels FILE`, which reuses the crops)."]
    elif labels_file is not None and vote_files.sniff(labels_file):
        voted = vote_files.read_vote_file(input_root, Path(labels_file), classes)
        samples, rejects = voted.samples[["sample_id", "source_path", "label", "split"]].copy(), voted.rejects
        samples.attrs["notes"] = list(voted.notes)
    else:
        samples, rejects = discover(input_root, Path(labels_file) if labels_file else None, classes,
                                    fold_case=fold_case)
    if classes and voted is None and not no_labels:
        check_classes(classes, samples, rejects, Path(labels_file) if labels_file else None)
    notes = list(samples.attrs.get("notes", []))
    for note in notes:
        reporter.log(note)
    return samples, rejects, notes, voted


SHOWN_REJECTS = 5  # rejects an error message lists (path and why); the table holds them all


def rejects_listing(rejects: pd.DataFrame, limit: int = SHOWN_REJECTS) -> str:
    """The first rejects as lines a user can act on: where (file row, path), what, and the fix."""
    lines = []
    for r in rejects.head(limit).itertuples(index=False):
        where = f"{r.file} row {r.row}: " if r.file and int(r.row) >= 0 else ""
        lines.append(f"  {where}{_display_path(str(r.source_path))}: {r.problem}" + (f" ({r.hint})" if r.hint else ""))
    if len(rejects) > limit:
        lines.append(f"  ... and {len(rejects) - limit:,} more")
    return "\n".join(lines)


def crop_size_for(sizes: list[tuple[int, int] | None], notes: list[str]) -> int:
    """The crop store's side when --image-size is not given: a pre-cropped dataset's own side
    (``quality.pre_cropped_side``, up to DEFAULT_CROP_SIZE), so an as-given face is stored as it is,
    never upsampled (a 48 px FER2013 face at 112 px and back lost ~10 % of its edge energy); else
    DEFAULT_CROP_SIZE. Adds a note saying which."""
    known = [s for s in sizes if s is not None]
    side = quality.pre_cropped_side([s[0] for s in known], [s[1] for s in known], max_side=DEFAULT_CROP_SIZE)
    if side is not None and side >= MIN_CROP_SIZE:
        n = sum(1 for s in known if s == (side, side))
        notes.append(f"crops stored at {side} px, the size of {n:,} of the {len(known):,} images (pre-cropped "
                     "faces: kept at their own size, not resampled); --image-size sets another.")
        return side
    notes.append(f"crops stored at {DEFAULT_CROP_SIZE} px (the images are not crops of one size up to "
                 f"{DEFAULT_CROP_SIZE} px); --image-size sets another.")
    return DEFAULT_CROP_SIZE


def _header_sizes(input_root: Path, samples: pd.DataFrame, workers: int) -> list[tuple[int, int] | None]:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(header_size, [input_root / p for p in samples["source_path"]]))


def _check_rejected_share(ws: Workspace, input_root: Path, labels_file: Path | str | None,
                          samples: pd.DataFrame, rejects: pd.DataFrame, max_rejected: float) -> None:
    """Refuse an input of which more than ``max_rejected`` of the rows were rejected: a run on what
    is left would pass for the dataset (43 % of a new user's rows were lost to one cause, exit 0)."""
    total = len(samples) + len(rejects)
    if total and len(rejects) / total > max_rejected:
        raise _no_usable_rows(ws, input_root, labels_file, rejects, total=total, max_rejected=max_rejected)


def _no_usable_rows(ws: Workspace, input_root: Path, labels_file: Path | str | None,
                    rejects: pd.DataFrame, *, total: int | None = None,
                    max_rejected: float | None = None) -> WorkspaceError:
    """The error for an input of which no row is usable: the first rejects' reasons in the message
    itself, and the whole table in WS/rejects.parquet (written when the workspace holds no earlier
    manifest it would belong with, so the user keeps it after the failure)."""
    where = (f" with labels from {labels_file}" if labels_file
             else " (expected class subfolders: INPUT/<class>/<image>)")
    kept = ""
    if len(rejects) and not ws.manifest.exists():
        claim(ws.root)
        table = rejects.reindex(columns=REJECT_COLUMNS)
        for col in ("file", "source_path"):
            table[col] = table[col].astype(object).map(lambda v: _display_path(v) if isinstance(v, str) else v)
        write_table(table, ws.rejects, {"input_root": str(input_root.resolve())}, table=schema.REJECTS)
        kept = f" All of them, with a hint each, are in {ws.rejects}."
    counts = ", ".join(f"{k}: {v:,}" for k, v in rejects["problem"].value_counts().head(5).items()) if len(rejects) else ""
    if total is not None:  # some rows are usable, but too few
        head = (f"{len(rejects):,} of the {total:,} rows under {input_root}{where} were rejected "
                f"({len(rejects) / total:.0%}, more than --max-rejected {max_rejected:g} allows"
                + (f"; {counts}" if counts else "") + "). Fix them, or pass --max-rejected 1 to prepare the "
                "rest anyway.")
    else:
        head = (f"No usable images found under {input_root}{where}; {len(rejects):,} rows were rejected"
                + (f" ({counts})" if counts else "") + ".")
    err = WorkspaceError(head + kept + (f" The first:\n{rejects_listing(rejects)}" if len(rejects) else ""))
    # for --json's error object: where the first reject is, and what fixes it
    first = rejects.iloc[0] if len(rejects) else None
    err.file = (first["file"] or str(input_root)) if first is not None else str(input_root)
    err.row = int(first["row"]) if first is not None and int(first["row"]) >= 0 else None
    err.hint = first["hint"] if first is not None and first["hint"] else None
    return err


def _with_file_identity(samples: pd.DataFrame, input_root: Path, workers: int) -> pd.DataFrame:
    """Each file's size, mtime and content hash (what reuse of an earlier run compares)."""
    paths = [input_root / p for p in samples["source_path"]]
    stamps = [_file_stamp(p) for p in paths]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        hashes = list(pool.map(_content_hash, paths))
    return samples.assign(
        file_size=[s[0] for s in stamps], file_mtime_ns=[s[1] for s in stamps], content_hash=hashes,
        # Parquet strings must be valid UTF-8: keep the on-disk name for opening the file, and a
        # readable (backslash-escaped) form in the tables. sample_id was derived from the original.
        _fs_path=samples["source_path"], source_path=samples["source_path"].map(_display_path),
    )


def _reuse_previous(ws: Workspace, settings: PrepareSettings, input_root: Path, samples: pd.DataFrame,
                    notes: list[str]) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Rows and crops of a finished earlier run for unchanged files, and the samples still to do."""
    size = settings.image_size
    reused_rows, reused_crops = pd.DataFrame(), np.zeros((0, size, size, 3), np.uint8)
    previous = _reusable_rows(ws, settings, input_root, notes)
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


def _part_dir(ws: Workspace, settings: PrepareSettings, shard_dir: Path | None,
              shard: tuple[int, int] | None) -> Path:
    """Where finished chunks are kept so an interrupted run resumes from them."""
    if shard is not None:
        return shard_dir / f"parts-{shard[0]:05d}"
    part_dir = ws.prepare_parts / settings.fingerprint()
    # Parts from other settings can never be resumed: remove them.
    if ws.prepare_parts.exists():
        for other in ws.prepare_parts.iterdir():
            if other != part_dir:
                shutil.rmtree(other, ignore_errors=True)
    return part_dir


def _process_todo(todo: pd.DataFrame, input_root: Path, part_dir: Path, settings: PrepareSettings,
                  detect: dict, chunk_size: int, label: str, frames: list, crop_chunks: list,
                  timings: Counter, reporter: Reporter) -> None:
    """Detect, align and judge ``todo`` chunk by chunk (a chunk saved by an interrupted run is
    loaded instead), appending each chunk's rows and crops to ``frames`` / ``crop_chunks``."""
    resolved = str(resolve_device(detect["device"]))
    detector = None
    task = reporter.task(f"{label} ({resolved})", len(todo))
    with ThreadPoolExecutor(max_workers=max(1, detect["workers"])) as pool:
        for k, lo in enumerate(range(0, len(todo), chunk_size)):
            rows = todo.iloc[lo : lo + chunk_size]
            loaded = _load_part(part_dir, k, rows["sample_id"].tolist(), rows["content_hash"].tolist())
            if loaded is None:
                if detector is None:
                    detector = FaceDetector(device=resolved, batch_size=detect["batch_size"],
                                            min_face_size=int(detect["min_face_size"]))
                df, crops = _process_chunk(rows, input_root, detector, settings, pool, timings)
                t = time.perf_counter()
                _save_part(part_dir, k, df, crops)
                timings["write"] += time.perf_counter() - t
            else:
                df, crops = loaded
                # labels are not part of a chunk's work: an interrupted run may have had others
                df = df.assign(label=rows["label"].to_numpy(), split=rows["split"].to_numpy())
            offset = sum(len(c) for c in crop_chunks)
            df = df.copy()
            df.loc[df["crop_pos"] >= 0, "crop_pos"] += offset
            frames.append(df)
            crop_chunks.append(crops)
            task.advance(len(rows))
    task.close()


def _finish_shard(ws: Workspace, shard: tuple[int, int], shard_dir: Path, part_dir: Path, rows_df: pd.DataFrame,
                  crop_chunks: list, rejects: pd.DataFrame, meta: dict, image_size: int, merge: bool,
                  merge_lock: Callable[[], ContextManager] | None, notes: list[str], reporter: Reporter,
                  start: float, timings: Counter, reused: int) -> PrepareSummary:
    """Write this shard; merge all of them when it is the last one done (and ``merge``)."""
    t = time.perf_counter()
    _write_shard(shard_dir, shard, rows_df, crop_chunks, rejects, meta, image_size)
    shutil.rmtree(part_dir, ignore_errors=True)
    timings["write"] += time.perf_counter() - t
    missing = missing_shards(shard_dir, shard[1])
    if missing or not merge:
        waiting = (f"waiting for shard(s) {', '.join(map(str, missing))} of {shard[1]}; each merges "
                   "when it finds the others done" if missing else "merging switched off for this run")
        notes.append(f"Shard {shard[0]}/{shard[1]} written to {shard_dir}; {waiting} "
                     f"(or run `fercure prepare --merge -w {ws.root}` once all are).")
        return _summary(ws, rows_df.rename(columns={"crop_pos": "store_index"}), rejects, reused, 0, notes,
                        timings, start)
    with (merge_lock() if merge_lock is not None else contextlib.nullcontext()):
        return _merge_locked(ws, shard_dir, shard[1], notes, reporter, start, timings, reused)


# ---------------------------------------------------------------------------------------------
# The manifest and store from processed rows (one run, or the merge of its shards)


class _Concat:
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


def _finish(ws: Workspace, rows_df: pd.DataFrame, crops: _Concat, rejects: pd.DataFrame, meta: dict,
            image_size: int, timings: Counter, voted: vote_files.VoteFile | None = None) -> tuple[pd.DataFrame, int]:
    """Order rows (discovery order), mark duplicates over the whole set, write the store in
    manifest order, the annotations of a vote file, the manifest and the rejects. ``crop_pos``
    indexes ``crops``."""
    manifest = rows_df.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)
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
            yield crops.take(gather[lo : lo + 4096])

    write_store(ws.store, chunks(), int(has.sum()), image_size)
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
    rejects = rejects.reindex(columns=REJECT_COLUMNS)
    for col in ("file", "source_path"):
        rejects[col] = rejects[col].astype(object).map(lambda v: _display_path(v) if isinstance(v, str) else v)
    write_table(rejects, ws.rejects, {"input_root": meta["input_root"]}, table=schema.REJECTS)
    timings["write"] += time.perf_counter() - t
    if not has.any():
        # The tables are written (every row with its reason) but there is nothing to train on.
        raise WorkspaceError(
            f"None of the {len(manifest)} images under {meta['input_root']} could be used "
            f"({', '.join(f'{k}: {v}' for k, v in manifest['face_status'].value_counts().items())}). "
            f"The reasons are in {ws.manifest} (column 'reason')."
        )
    return manifest, conflicts


SHOWN_FILES = 10  # files a summary note names before "and N more"


def face_notes(manifest: pd.DataFrame, settings: dict) -> list[str]:
    """What the face stage decided that a user should hear: faces the detector missed on a
    pre-cropped dataset's crops (kept as given, not listed for review), photos with no face at all
    (named: kept whole, they train as an expression), and photos with several faces (one kept)."""
    out = []
    status = manifest["face_status"].astype(str).to_numpy()
    width = pd.to_numeric(manifest.get("width"), errors="coerce") if "width" in manifest else np.full(len(status), np.nan)
    height = pd.to_numeric(manifest.get("height"), errors="coerce") if "height" in manifest else np.full(len(status), np.nan)
    missed = quality.missed_on_crop(status, width, height)
    if missed.any():
        out.append(f"{int(missed.sum()):,} pre-cropped faces got no detection (a profile, an open mouth, a hand): kept "
                   "as given, audited like any other; the report does not list them as face problems "
                   "(audit-labels --list-missed-faces does).")
    photos = (status == "no_face") & ~missed
    if photos.any() and settings.get("on_no_face", "keep") == "keep":
        paths = manifest.loc[photos, "source_path"].astype(str).tolist()
        named = ", ".join(paths[:SHOWN_FILES]) + (f" and {len(paths) - SHOWN_FILES:,} more" if len(paths) > SHOWN_FILES else "")
        out.append(f"{len(paths):,} images have no face at all: {named}. They are kept whole and will train as their "
                   "label's expression; pass --on-no-face drop to leave them out (or drop them in the report).")
    several = (pd.to_numeric(manifest.get("face_count"), errors="coerce").fillna(0).to_numpy() > 1) & (status == "ok") \
        if "face_count" in manifest else np.zeros(len(status), bool)
    if several.any():
        policy = settings.get("multi_face", "largest")
        out.append(f"{int(several.sum()):,} images show several faces: status ok, the {policy.replace('-', ' ')} one "
                   "kept (--multi-face most-central or drop for another choice).")
    return out


def _summary(ws: Workspace, manifest: pd.DataFrame, rejects: pd.DataFrame, reused: int, conflicts: int,
             notes: list[str], timings: Counter, start: float) -> PrepareSummary:
    has = manifest["store_index"].to_numpy() >= 0
    return PrepareSummary(
        workspace=ws.root,
        n_samples=len(manifest),
        n_rejects=len(rejects),
        status_counts={s: int(c) for s, c in manifest["face_status"].value_counts().items()},
        class_counts={c: int(n) for c, n in manifest["label"].value_counts().sort_index().items()},
        n_with_crop=int(has.sum()),
        n_reused=reused,
        conflicting_duplicates=conflicts,
        rejects_by_problem={str(k): int(v) for k, v in rejects["problem"].value_counts().items()} if len(rejects) else {},
        notes=notes,
        stage_seconds={k: round(v, 3) for k, v in timings.items()},
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------------------------
# Shards: --shard I/N writes WS/faces/shards/<set>/shard-I-of-N.{npy,parquet}; the merge combines


def check_shard(i: int, n: int) -> None:
    if n < 1 or not 0 <= i < n:
        raise WorkspaceError(f"--shard {i}/{n}: the shard index must be 0..N-1 for N >= 1 shards "
                             "(e.g. --shard 0/4 ... --shard 3/4).")


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' → (I, N), 0 <= I < N."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise WorkspaceError(f"--shard {text!r}: write it as I/N, e.g. 0/4 for the first of four shards.") from None
    check_shard(i, n)
    return i, n


def shard_of(sample_ids: pd.Series, n: int) -> np.ndarray:
    """Shard (0..n-1) of each sample: a hash of its sample_id, so the split is the same on every
    machine and balanced whatever the folder layout."""
    return np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big") % n
                     for s in sample_ids], dtype=np.int64)


def _shard_set_key(samples: pd.DataFrame, settings: PrepareSettings, n: int) -> str:
    """Names the set of shards one input, one set of settings and one N make: shards of another
    input or settings never mix with these. The input is every sample's id, label and split, so a
    label file edited between two shards' runs makes a new set instead of a mixed manifest."""
    h = hashlib.sha1()
    for sid, label, split in zip(samples["sample_id"], samples["label"], samples["split"]):
        h.update(f"{sid}\t{label}\t{split}\n".encode("utf-8", "surrogateescape"))
    return f"{settings.fingerprint()}-{h.hexdigest()[:12]}-of-{n}"


def check_shard_count(shard: tuple[int, int], n_samples: int, input_root: Path) -> None:
    """More shards than samples leaves shards with nothing to do, and N itself costs work (the
    merge looks for N files): refuse, so the work stays bounded by the number of samples."""
    if shard[1] > n_samples:
        raise WorkspaceError(f"--shard {shard[0]}/{shard[1]}: {shard[1]:,} shards for {n_samples:,} samples under "
                             f"{input_root}; use at most {n_samples:,} shards (e.g. one per machine or GPU).")


def _other_input_sets(ws: Workspace, shard_dir: Path, n: int) -> list[str]:
    """A note for each unmerged shard set of the same N and settings made from other inputs (the
    label file or the folder changed between shard runs): those shards are never merged with these."""
    prefix = shard_dir.name.split("-", 1)[0]
    others = [d for d in _shard_sets(ws) if d != shard_dir and d.name.startswith(prefix + "-")
              and d.name.endswith(f"-of-{n}")]
    return [f"warning: the shards in {d} were prepared from other inputs (the label file or the images changed "
            f"since); they are not merged with this run's. Run every shard 0..{n - 1} again with the current "
            f"inputs, and delete {d}." for d in others]


def _shard_name(i: int, n: int) -> str:
    return f"shard-{i:05d}-of-{n:05d}"


def missing_shards(shard_dir: Path, n: int) -> list[int]:
    return [i for i in range(n) if not (shard_dir / f"{_shard_name(i, n)}.parquet").exists()]


def _remove_own_temps(shard_dir: Path, i: int) -> None:
    """Temporary files a killed run of this shard left (never another shard's: they may be live)."""
    if shard_dir.is_dir():
        for tmp in shard_dir.glob(f".{_shard_name(i, 0)[:11]}*.tmp"):
            tmp.unlink(missing_ok=True)


def _write_shard(shard_dir: Path, shard: tuple[int, int], rows_df: pd.DataFrame, crop_chunks: list,
                 rejects: pd.DataFrame, meta: dict, image_size: int) -> None:
    name = _shard_name(*shard)
    crops = _Concat(crop_chunks)
    total = int(crops.starts[-1])

    def chunks():
        for lo in range(0, total, 4096):
            yield crops.take(np.arange(lo, min(lo + 4096, total)))

    write_store(shard_dir / f"{name}.npy", chunks(), total, image_size)
    write_table(rejects, shard_dir / f"{name}-rejects.parquet")
    # The rows file is written last: its presence marks the shard complete.
    write_table(rows_df.drop(columns=["_fs_path"], errors="ignore"), shard_dir / f"{name}.parquet",
                {**meta, "shard": list(shard)})


def _shard_sets(ws: Workspace) -> list[Path]:
    root = ws.faces_dir / "shards"
    return sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []


def merge_prepare_shards(workspace: Workspace | Path | str, *, reporter: Reporter = NULL) -> PrepareSummary:
    """`fercure prepare --merge`: combine a complete set of shards into the manifest and store
    (the caller holds the workspace lock). Fails, naming what is missing, when no set is complete."""
    start = time.perf_counter()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(Path(workspace))
    sets = _shard_sets(ws)
    if not sets:
        raise WorkspaceError(f"No prepare shards in {ws.faces_dir / 'shards'}: run `fercure prepare INPUT -w "
                             f"{ws.root} --shard I/N` for every I first.")
    complete, waiting = [], []
    for d in sets:
        n = int(d.name.rsplit("-of-", 1)[1])
        missing = missing_shards(d, n)
        (waiting.append(f"{d.name}: shard(s) {', '.join(map(str, missing))} of {n} missing") if missing
         else complete.append((d, n)))
    if not complete:
        raise WorkspaceError("No complete set of prepare shards to merge (" + "; ".join(waiting) +
                             "). Run the missing shards, then merge.")
    d, n = max(complete, key=lambda x: x[0].stat().st_mtime)
    return _merge_locked(ws, d, n, [], reporter, start, Counter(), 0)


def _merge_locked(ws: Workspace, shard_dir: Path, n: int, notes: list[str], reporter: Reporter,
                  start: float, timings: Counter, reused: int) -> PrepareSummary:
    """Merge a complete shard set (under the workspace lock): the rows of all shards, crop
    positions offset into their concatenation, then what an unsharded run writes."""
    if missing_shards(shard_dir, n):  # another shard merged it between our check and the lock
        notes.append(f"Shards of {shard_dir.name} were merged by another shard's run.")
        manifest = read_table(ws.manifest)
        rejects = read_table(ws.rejects)
        return _summary(ws, manifest, rejects, reused, 0, notes, timings, start)
    ws.remove_stale_temps()
    frames, chunks, metas = [], [], []
    for i in range(n):
        name = _shard_name(i, n)
        try:
            df = read_table(shard_dir / f"{name}.parquet")
            meta = read_metadata(shard_dir / f"{name}.parquet")
            crops = open_store(shard_dir / f"{name}.npy")
        except (DamagedFileError, WorkspaceError) as e:
            raise WorkspaceError(f"Shard {i}/{n} in {shard_dir} cannot be read ({e}); run `fercure prepare "
                                 f"INPUT -w {ws.root} --shard {i}/{n}` again, then merge.") from e
        offset = sum(len(c) for c in chunks)
        df.loc[df["crop_pos"] >= 0, "crop_pos"] += offset
        if len(df):  # an empty shard adds no rows (and no dtypes to reconcile)
            frames.append(df)
        chunks.append(crops)
        metas.append({k: v for k, v in meta.items() if k not in ("shard", "fercure_version", "schema_version")})
    if any(m != metas[0] for m in metas[1:]):
        raise WorkspaceError(f"The shards in {shard_dir} were prepared with different settings or inputs; "
                             "run them again with one command line.")
    rejects = read_table(shard_dir / f"{_shard_name(0, n)}-rejects.parquet")
    rows_df = pd.concat(frames, ignore_index=True)
    size = int(metas[0]["settings"]["image_size"])
    reporter.log(f"prepare: merging {n} shards ({len(rows_df)} samples) into {ws.manifest} and {ws.store}.")
    manifest, conflicts = _finish(ws, rows_df, _Concat(chunks), rejects, metas[0], size, timings)
    del chunks
    shutil.rmtree(shard_dir, ignore_errors=True)
    notes.append(f"Merged {n} shards into {ws.manifest}.")
    notes.extend(face_notes(manifest, metas[0]["settings"]))
    return _summary(ws, manifest, rejects, reused, conflicts, notes, timings, start)

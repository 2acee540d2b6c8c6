"""The face pass: each sample decoded, its faces detected, the face aligned (or the image kept as
given) and the crop judged, chunk by chunk.

``process_todo(run, job, todo, done)`` works through ``todo`` in chunks of ``FacePass.chunk_size``
rows. Each finished chunk is saved under ``FacePass.part_dir`` (crops + rows, written atomically),
so an interrupted run resumes at the first unfinished chunk: a saved chunk is loaded instead of
processed again when its samples and their content hashes are the same. ``PrepareSettings`` holds
everything that changes a sample's row or crop; its fingerprint names the parts and the reuse of a
finished run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fercure import __version__
from fercure.device import resolve_device
from fercure.faces import align, quality
from fercure.faces.detect import Detection, FaceDetector, detect_with_padding
from fercure.images import load_rgb
from fercure.prepare.summary import PrepareRun
from fercure.workspace import Workspace, atomic_path, disk_full_as_error, read_table, write_table

DEFAULT_CROP_SIZE = 112  # the crop store's side for photos of several sizes


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


@dataclass(frozen=True)
class FacePass:
    """How one run's face pass goes: where the images are, what changes a row or crop, where
    finished chunks are kept (``part_dir``), the detector's options, the chunk size and the
    progress bar's label."""

    input_root: Path
    settings: PrepareSettings
    part_dir: Path
    device: str
    batch_size: int
    workers: int
    min_face_size: float
    chunk_size: int
    label: str


@dataclass
class Processed:
    """Rows and crops as the chunks come: ``crop_pos`` in ``frames`` indexes the concatenation of
    ``crops`` (a reused run's rows and crops, when there are any, come first)."""

    frames: list[pd.DataFrame] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)

    def add(self, df: pd.DataFrame, crops: np.ndarray) -> None:
        """Append one chunk, its ``crop_pos`` shifted past the crops already held."""
        offset = sum(len(c) for c in self.crops)
        df = df.copy()
        df.loc[df["crop_pos"] >= 0, "crop_pos"] += offset
        self.frames.append(df)
        self.crops.append(crops)


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


def _process_chunk(job: FacePass, rows: pd.DataFrame, detector: FaceDetector, pool: ThreadPoolExecutor,
                   timings: Counter) -> tuple[pd.DataFrame, np.ndarray]:
    """Decode, detect, align and score one chunk, one decode window at a time (see DECODE_BUDGET).
    Returns its manifest rows and crops (in row order of the rows that got a crop; ``crop_pos``
    says which)."""
    settings = job.settings
    size = settings.image_size
    paths = [job.input_root / p for p in rows["_fs_path"]]
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


def part_dir(ws: Workspace, settings: PrepareSettings, shard_dir: Path | None,
             shard: tuple[int, int] | None) -> Path:
    """Where finished chunks are kept so an interrupted run resumes from them."""
    if shard is not None:
        return shard_dir / f"parts-{shard[0]:05d}"
    parts = ws.prepare_parts / settings.fingerprint()
    # Parts from other settings can never be resumed: remove them.
    if ws.prepare_parts.exists():
        for other in ws.prepare_parts.iterdir():
            if other != parts:
                shutil.rmtree(other, ignore_errors=True)
    return parts


def process_todo(run: PrepareRun, job: FacePass, todo: pd.DataFrame, done: Processed) -> None:
    """Detect, align and judge ``todo`` chunk by chunk (a chunk saved by an interrupted run is
    loaded instead), adding each chunk's rows and crops to ``done``."""
    resolved = str(resolve_device(job.device))
    detector = None
    task = run.reporter.task(f"{job.label} ({resolved})", len(todo))
    with ThreadPoolExecutor(max_workers=max(1, job.workers)) as pool:
        for k, lo in enumerate(range(0, len(todo), job.chunk_size)):
            rows = todo.iloc[lo : lo + job.chunk_size]
            loaded = _load_part(job.part_dir, k, rows["sample_id"].tolist(), rows["content_hash"].tolist())
            if loaded is None:
                if detector is None:
                    detector = FaceDetector(device=resolved, batch_size=job.batch_size,
                                            min_face_size=int(job.min_face_size))
                df, crops = _process_chunk(job, rows, detector, pool, run.timings)
                t = time.perf_counter()
                _save_part(job.part_dir, k, df, crops)
                run.timings["write"] += time.perf_counter() - t
            else:
                df, crops = loaded
                # labels are not part of a chunk's work: an interrupted run may have had others
                df = df.assign(label=rows["label"].to_numpy(), split=rows["split"].to_numpy())
            done.add(df, crops)
            task.advance(len(rows))
    task.close()

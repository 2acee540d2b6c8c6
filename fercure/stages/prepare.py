"""Stage 1: raw images + labels → aligned face crops (WS/faces/crops.npy) and WS/manifest.parquet.

``run_prepare`` checks the options and the workspace, finds the samples (``fercure.ingest``, a vote
file, or photos without labels), decides the crop size, then runs its steps with one
``PrepareRun`` (fercure/prepare/summary.py) they share: reuse of a finished run's unchanged rows
and crops (fercure/prepare/manifest.py), the face pass over the rest (fercure/prepare/facepass.py),
and the manifest, store and rejects written from them, or this shard's share written and merged
(fercure/prepare/shards.py).

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

import hashlib
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
import pandas as pd

from fercure import schema
from fercure import votes as vote_files
from fercure.faces import align, quality
from fercure.faces.quality import MULTI_FACE_POLICIES, NO_FACE_POLICIES
from fercure.images import header_size
from fercure.ingest import MAX_REJECTED_SHARE, discover
from fercure.label_rules import check_classes
from fercure.photos import discover_photos
from fercure.prepare.facepass import DEFAULT_CROP_SIZE, FacePass, PrepareSettings, Processed, part_dir, process_todo
from fercure.prepare.manifest import CropChunks, Prepared, display_path, reuse_previous, write_outputs, write_rejects
from fercure.prepare.shards import (check_shard_count, finish_shard, merge_locked, missing_shards, other_input_sets,
                                    remove_own_temps, shard_of, shard_set_key, shard_sets)
from fercure.prepare.summary import PrepareRun, PrepareSummary, face_notes, face_problems_note
from fercure.progress import NULL, Reporter
from fercure.workspace import DamagedFileError, Workspace, WorkspaceError, check_output_path, claim

STATUSES = schema.FACE_STATUSES  # the manifest's face_status values (declared in schema.py)
CHUNK_SIZE = 512
MIN_CROP_SIZE = 16  # --image-size's least value


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
        shard_dir = ws.faces_dir / "shards" / shard_set_key(samples, settings, shard[1])
        notes.extend(other_input_sets(ws, shard_dir, shard[1]))
        samples = samples[shard_of(samples["sample_id"], shard[1]) == shard[0]]
        remove_own_temps(shard_dir, shard[0])
    samples = _with_file_identity(samples, input_root, workers)
    run = PrepareRun(ws, reporter, notes, start=start)
    n_notes = len(notes)
    reused_rows, reused_crops, todo = reuse_previous(run, settings, input_root, samples)
    for note in notes[n_notes:]:
        reporter.log(note)
    run.reused = len(reused_rows)
    job = FacePass(input_root, settings, part_dir(ws, settings, shard_dir, shard), device=device,
                   batch_size=batch_size, workers=workers, min_face_size=min_face_size, chunk_size=chunk_size,
                   label="prepare" if shard is None else f"prepare shard {shard[0]}/{shard[1]}")

    done = Processed([reused_rows], [reused_crops]) if len(reused_rows) else Processed()
    if len(todo):
        process_todo(run, job, todo, done)

    # crop_pos in reused rows was relative to reused_crops, which sits first: offsets line up.
    if done.frames:
        rows_df = pd.concat(done.frames, ignore_index=True)
    else:  # a shard that drew no sample
        rows_df = samples.drop(columns="_fs_path").assign(
            crop_pos=pd.Series(dtype=np.int64), face_status=pd.Series(dtype=object))
    meta = _manifest_meta(input_root, labels_file, classes, settings)
    if no_labels:
        meta["no_labels"] = True
    if voted is not None:
        meta["classes_given"] = meta["classes_given"] or voted.classes
    prepared = Prepared(rows_df, CropChunks(done.crops), rejects, meta)
    if shard is not None:
        return finish_shard(run, shard, shard_dir, job.part_dir, prepared, merge=merge, merge_lock=merge_lock)
    manifest, conflicts = write_outputs(run, prepared, voted)
    shutil.rmtree(ws.prepare_parts, ignore_errors=True)
    if no_labels:  # no audit and no report to list them: the summary does
        run.notes.append(face_problems_note(manifest, ws))
    run.notes.extend(face_notes(manifest, asdict(settings)))
    return run.summary(manifest, rejects, conflicts)


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
        lines.append(f"  {where}{display_path(str(r.source_path))}: {r.problem}" + (f" ({r.hint})" if r.hint else ""))
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
        write_rejects(ws, rejects, str(input_root.resolve()))
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
        _fs_path=samples["source_path"], source_path=samples["source_path"].map(display_path),
    )


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


def merge_prepare_shards(workspace: Workspace | Path | str, *, reporter: Reporter = NULL) -> PrepareSummary:
    """`fercure prepare --merge`: combine a complete set of shards into the manifest and store
    (the caller holds the workspace lock). Fails, naming what is missing, when no set is complete."""
    start = time.perf_counter()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(Path(workspace))
    sets = shard_sets(ws)
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
    return merge_locked(PrepareRun(ws, reporter, start=start), d, n)

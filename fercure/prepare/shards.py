"""``prepare --shard I/N``: which samples a shard does, writing its share, and merging a complete set.

A shard processes the samples whose blake2b(sample_id) mod N is I into
WS/faces/shards/<settings>-<input>-of-N/shard-I-of-N.{npy,parquet} (+ its rejects; rows carry their
discovery position ``_order``), without the workspace lock. The shard that then finds all N rows
files merges them under the lock (``merge_locked``: the same ordering, duplicate marking and store
writing as an unsharded run) and removes the set.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import time
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
import pandas as pd

from fercure.prepare.facepass import PrepareSettings
from fercure.prepare.manifest import CropChunks, Prepared, write_outputs
from fercure.prepare.summary import PrepareRun, PrepareSummary, face_notes
from fercure.store import open_store, write_store
from fercure.workspace import DamagedFileError, Workspace, WorkspaceError, read_metadata, read_table, write_table


def shard_of(sample_ids: pd.Series, n: int) -> np.ndarray:
    """Shard (0..n-1) of each sample: a hash of its sample_id, so the split is the same on every
    machine and balanced whatever the folder layout."""
    return np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big") % n
                     for s in sample_ids], dtype=np.int64)


def shard_set_key(samples: pd.DataFrame, settings: PrepareSettings, n: int) -> str:
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


def other_input_sets(ws: Workspace, shard_dir: Path, n: int) -> list[str]:
    """A note for each unmerged shard set of the same N and settings made from other inputs (the
    label file or the folder changed between shard runs): those shards are never merged with these."""
    prefix = shard_dir.name.split("-", 1)[0]
    others = [d for d in shard_sets(ws) if d != shard_dir and d.name.startswith(prefix + "-")
              and d.name.endswith(f"-of-{n}")]
    return [f"warning: the shards in {d} were prepared from other inputs (the label file or the images changed "
            f"since); they are not merged with this run's. Run every shard 0..{n - 1} again with the current "
            f"inputs, and delete {d}." for d in others]


def _shard_name(i: int, n: int) -> str:
    return f"shard-{i:05d}-of-{n:05d}"


def missing_shards(shard_dir: Path, n: int) -> list[int]:
    return [i for i in range(n) if not (shard_dir / f"{_shard_name(i, n)}.parquet").exists()]


def remove_own_temps(shard_dir: Path, i: int) -> None:
    """Temporary files a killed run of this shard left (never another shard's: they may be live)."""
    if shard_dir.is_dir():
        for tmp in shard_dir.glob(f".{_shard_name(i, 0)[:11]}*.tmp"):
            tmp.unlink(missing_ok=True)


def _write_shard(shard_dir: Path, shard: tuple[int, int], prepared: Prepared) -> None:
    name = _shard_name(*shard)
    crops = prepared.crops
    total = int(crops.starts[-1])

    def chunks():
        for lo in range(0, total, 4096):
            yield crops.take(np.arange(lo, min(lo + 4096, total)))

    write_store(shard_dir / f"{name}.npy", chunks(), total, prepared.image_size)
    write_table(prepared.rejects, shard_dir / f"{name}-rejects.parquet")
    # The rows file is written last: its presence marks the shard complete.
    write_table(prepared.rows.drop(columns=["_fs_path"], errors="ignore"), shard_dir / f"{name}.parquet",
                {**prepared.meta, "shard": list(shard)})


def shard_sets(ws: Workspace) -> list[Path]:
    root = ws.faces_dir / "shards"
    return sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []


def finish_shard(run: PrepareRun, shard: tuple[int, int], shard_dir: Path, part_dir: Path, prepared: Prepared, *,
                 merge: bool = True, merge_lock: Callable[[], ContextManager] | None = None) -> PrepareSummary:
    """Write this shard; merge all of them when it is the last one done (and ``merge``), holding
    ``merge_lock()`` for the merge only."""
    t = time.perf_counter()
    _write_shard(shard_dir, shard, prepared)
    shutil.rmtree(part_dir, ignore_errors=True)
    run.timings["write"] += time.perf_counter() - t
    missing = missing_shards(shard_dir, shard[1])
    if missing or not merge:
        waiting = (f"waiting for shard(s) {', '.join(map(str, missing))} of {shard[1]}; each merges "
                   "when it finds the others done" if missing else "merging switched off for this run")
        run.notes.append(f"Shard {shard[0]}/{shard[1]} written to {shard_dir}; {waiting} "
                         f"(or run `fercure prepare --merge -w {run.ws.root}` once all are).")
        return run.summary(prepared.rows.rename(columns={"crop_pos": "store_index"}), prepared.rejects, 0)
    with (merge_lock() if merge_lock is not None else contextlib.nullcontext()):
        return merge_locked(run, shard_dir, shard[1])


def merge_locked(run: PrepareRun, shard_dir: Path, n: int) -> PrepareSummary:
    """Merge a complete shard set (under the workspace lock): the rows of all shards, crop
    positions offset into their concatenation, then what an unsharded run writes."""
    ws = run.ws
    if missing_shards(shard_dir, n):  # another shard merged it between our check and the lock
        run.notes.append(f"Shards of {shard_dir.name} were merged by another shard's run.")
        manifest = read_table(ws.manifest)
        rejects = read_table(ws.rejects)
        return run.summary(manifest, rejects, 0)
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
    prepared = Prepared(pd.concat(frames, ignore_index=True), CropChunks(chunks), rejects, metas[0])
    run.reporter.log(f"prepare: merging {n} shards ({len(prepared.rows)} samples) into {ws.manifest} and {ws.store}.")
    manifest, conflicts = write_outputs(run, prepared)
    del prepared, chunks
    shutil.rmtree(shard_dir, ignore_errors=True)
    run.notes.append(f"Merged {n} shards into {ws.manifest}.")
    run.notes.extend(face_notes(manifest, metas[0]["settings"]))
    return run.summary(manifest, rejects, conflicts)

"""The packed crop store: one uint8 array (N, S, S, 3) in a .npy file.

A .npy file is memory-mappable (``np.load(mmap_mode="r")``), needs no extra dependency, and a whole
FER-sized dataset (27k × 112² × 3 ≈ 1 GB) moves to the GPU in one copy for training.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from fercure.errors import WorkspaceError, damaged
from fercure.files import atomic_path


def write_store(path: Path | str, chunks: Iterable[np.ndarray], total: int, size: int) -> None:
    """Write ``total`` crops of ``size``×``size``×3 from ``chunks`` into ``path`` atomically.

    Crops are streamed into a memory-mapped temporary file, so the whole array never has to sit in
    RAM at once; the file only appears under its name once it is complete.
    """
    shape = (total, size, size, 3)
    needed = total * size * size * 3 + 4096  # + the .npy header (at most a few hundred bytes)
    # atomic_path refuses up front when the filesystem has less free space: writing pages of a
    # memory map past a full disk kills the process with SIGBUS, not an OSError.
    with atomic_path(path, size=needed) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        _reserve(tmp)
        offset = 0
        for chunk in chunks:
            n = len(chunk)
            if n == 0:
                continue
            if chunk.shape[1:] != shape[1:] or chunk.dtype != np.uint8:
                raise ValueError(f"crop chunk of shape {chunk.shape} {chunk.dtype}, expected (*, {size}, {size}, 3) uint8")
            arr[offset : offset + n] = chunk
            offset += n
        if offset != total:
            raise ValueError(f"wrote {offset} crops, expected {total}")
        arr.flush()
        del arr


def _reserve(path: Path) -> None:
    """Allocate the memory-mapped file's blocks now (it is sparse), so that space taken by someone
    else since the free-space check fails here with ENOSPC instead of SIGBUS mid-write."""
    if not hasattr(os, "posix_fallocate"):
        return  # macOS: the free-space check is all there is
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise  # ENOSPC: atomic_path turns it into the disk-full message
    finally:
        os.close(fd)


def open_store(path: Path | str) -> np.ndarray:
    """Memory-map the crop store read-only."""
    path = Path(path)
    if not path.exists():
        raise WorkspaceError(f"{path} does not exist. Run `fercure prepare` first.")
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:  # truncated: the header promises more than is there
        raise damaged(path, e) from e
    if arr.ndim != 4 or arr.shape[3] != 3 or arr.dtype != np.uint8:
        raise WorkspaceError(f"{path} holds {arr.shape} {arr.dtype}, not uint8 (N, S, S, 3) crops. Re-run `fercure prepare`.")
    return arr

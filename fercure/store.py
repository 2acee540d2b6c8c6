"""The packed crop store: one uint8 array (N, S, S, 3) in a .npy file.

A .npy file is memory-mappable (``np.load(mmap_mode="r")``), needs no extra dependency, and a whole
FER-sized dataset (27k × 112² × 3 ≈ 1 GB) moves to the GPU in one copy for training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from fercure.workspace import WorkspaceError, atomic_path, damaged


def write_store(path: Path | str, chunks: Iterable[np.ndarray], total: int, size: int) -> None:
    """Write ``total`` crops of ``size``×``size``×3 from ``chunks`` into ``path`` atomically.

    Crops are streamed into a memory-mapped temporary file, so the whole array never has to sit in
    RAM at once; the file only appears under its name once it is complete.
    """
    with atomic_path(path) as tmp:
        # np.lib.format.open_memmap appends nothing to the name when it ends in .npy; our temp
        # name ends in .tmp, so open the file object ourselves.
        shape = (total, size, size, 3)
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
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

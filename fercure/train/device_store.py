"""Where a fit's crops live: resident on the device, or streamed from the memory-mapped store.

Resident (the default while it fits): the uint8 store (or, under data parallelism, this rank's
share of it) is copied to the device once and every batch is one gather there. Streaming: the
store stays in the memory-mapped WS/faces/crops.npy and each batch's crops are read from it on a
background thread, a few batches ahead of the step that needs them, then copied to the device,
where the same augmentation runs. Both hand the loop the same uint8 batches, so a streamed fit is
the resident fit, bit for bit, only slower by whatever the reads cost.

``store_mode`` picks between them from the bytes to hold and the device's free memory (host memory
for a CPU device); ``TrainConfig.store`` forces either.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from fercure.train.distributed import SINGLE, World

RESIDENT_SHARE = 0.5  # of the free memory a resident store may take: the model, optimiser and
# activations need the rest (a ResNet-18 step at batch 128 and 112 px takes a few GB on a GPU)
READ_AHEAD = 4  # batches read ahead by the streaming thread


def store_mode(nbytes: int, free_bytes: int | None, forced: str = "auto") -> str:
    """'resident' or 'stream'. ``forced`` (resident | stream) wins; with 'auto' a store streams
    when it would take more than RESIDENT_SHARE of the free memory (unknown free memory: resident,
    the behaviour before streaming existed)."""
    if forced in ("resident", "stream"):
        return forced
    if forced != "auto":
        raise ValueError(f"store must be auto, resident or stream, not {forced!r}")
    if free_bytes is None:
        return "resident"
    return "stream" if nbytes > RESIDENT_SHARE * free_bytes else "resident"


def free_memory(device: torch.device) -> int | None:
    """Free bytes where a resident store would go: the GPU's free memory, or the host's available
    memory for a CPU device (MemAvailable: page cache that can be dropped counts as free)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check(images: Any) -> np.ndarray:
    arr = images if isinstance(images, np.ndarray) else np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N,S,S,3), got {arr.dtype} {arr.shape}")
    return arr


def upload(images: Any, device: torch.device, chunk: int = 4096) -> torch.Tensor:
    """Copy (N,S,S,3) uint8 crops (possibly memory-mapped, possibly strided) to the device in chunks,
    so a memory-mapped store is never duplicated whole in host memory. A tensor is moved as is."""
    if torch.is_tensor(images):
        return images.to(device)
    arr = _check(images)
    out = torch.empty(arr.shape, dtype=torch.uint8, device=device)
    for s in range(0, arr.shape[0], chunk):
        out[s:s + chunk] = torch.from_numpy(np.array(arr[s:s + chunk], copy=True)).to(device)
    return out


class ResidentStore:
    """The crops this rank owns (store rows ≡ rank mod world; all of them in one process) on the
    device; ``take`` maps store rows to local slots."""

    streaming = False

    def __init__(self, images: Any, device: torch.device, world: World = SINGLE) -> None:
        self.device, self.world = device, world
        if torch.is_tensor(images):
            if world.distributed:
                raise ValueError("a device tensor holds the whole store; under data parallelism pass "
                                 "the memory-mapped array so each rank uploads its own share")
            self.data = images.to(device)
            self.shape = tuple(images.shape)
        else:
            arr = _check(images)
            self.shape = arr.shape
            self.data = upload(arr[world.rank::world.size] if world.distributed else arr, device)

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        """(B,S,S,3) uint8 on the device for store ``rows`` (on the device) that this rank owns."""
        if self.world.distributed:
            rows = torch.div(rows, self.world.size, rounding_mode="floor")
        return self.data[rows]

    def batches(self, rows: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> Iterator[torch.Tensor]:
        for s, e in bounds:
            yield self.take(rows[s:e])

    def close(self) -> None:
        pass


class StreamingStore:
    """Crops read from the memory-mapped store per batch on a background thread (sorted reads, for
    locality on disk), a few batches ahead, then copied to the device (pinned, asynchronous on CUDA)."""

    streaming = True

    def __init__(self, images: Any, device: torch.device, world: World = SINGLE,
                 read_ahead: int = READ_AHEAD) -> None:
        if torch.is_tensor(images):
            raise ValueError("a streaming store reads a (memory-mapped) numpy array, not a tensor")
        self.images = _check(images)
        self.shape = self.images.shape
        self.device, self.world, self.read_ahead = device, world, max(1, read_ahead)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fercure-stream")

    @property
    def nbytes(self) -> int:
        return 0  # nothing held on the device between batches

    def _read(self, rows: np.ndarray) -> torch.Tensor:
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows),) + self.shape[1:], dtype=np.uint8)
        out[order] = self.images[rows[order]]
        t = torch.from_numpy(out)
        return t.pin_memory() if self.device.type == "cuda" else t

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True) if self.device.type == "cuda" else t

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        return self._to_device(self._read(rows.cpu().numpy()))

    def batches(self, rows: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> Iterator[torch.Tensor]:
        host = rows.cpu().numpy()  # one host copy of the epoch's order
        pending: list[Future] = []
        nxt = 0
        try:
            for _ in bounds:
                while nxt < len(bounds) and len(pending) < self.read_ahead:
                    s, e = bounds[nxt]
                    pending.append(self.pool.submit(self._read, host[s:e]))
                    nxt += 1
                yield self._to_device(pending.pop(0).result())
        finally:
            for f in pending:
                f.cancel()

    def close(self) -> None:
        self.pool.shutdown(wait=True)


CropStore = ResidentStore | StreamingStore


def open_crop_store(images: Any, device: torch.device, mode: str = "auto", world: World = SINGLE,
                    log: Any = None) -> CropStore:
    """The store a fit (or a whole run) reads its crops from, resident or streaming by
    ``store_mode``; ``log`` (a callable) gets one line saying which and why."""
    if isinstance(images, (ResidentStore, StreamingStore)):
        return images
    if torch.is_tensor(images):  # already on a device: the caller chose
        return ResidentStore(images, device, world)
    arr = _check(images)
    share = -(-arr.shape[0] // world.size) if world.distributed else arr.shape[0]
    nbytes = share * int(np.prod(arr.shape[1:]))
    free = free_memory(device) if mode == "auto" else None
    chosen = store_mode(nbytes, free, mode)
    if log is not None:
        where = f"{device}" + (f" (rank {world.rank} of {world.size})" if world.distributed else "")
        gb = nbytes / 2**30
        why = ("forced by the store setting" if mode != "auto" else
               f"{free / 2**30:.2f} GB free there; resident up to {RESIDENT_SHARE:.0%} of it"
               if free is not None else "free memory unknown")
        log(f"train: crop store {'streams from the memory map' if chosen == 'stream' else 'resident on'} "
            f"{where}: {gb:.2f} GB to hold ({why}).")
    if chosen == "stream":
        return StreamingStore(arr, device, world)
    return ResidentStore(arr, device, world)

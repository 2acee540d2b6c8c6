"""Data-parallel training over torch.distributed: who owns which sample, how a rank's epoch is cut
into steps, and the few collectives that keep every rank's per-sample tables whole.

fercure adds no transport of its own: torchrun, ``fercure train --nproc N`` (``fercure.launch``,
which starts the ranks as children that die with it), or any launcher that sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT starts one process per GPU (or CPU slot), and ``setup``
joins them into one process group, NCCL on CUDA and gloo on CPU.

Ownership is by store row: rank r owns the crops whose store row is ≡ r (mod world). It is the same
for every fit of a run (members, folds, the retrain), so a rank uploads (or streams) only its share
of the store once. Every rank draws the same permutation of the fit's samples from a shared
generator and trains on the ones it owns, in that order; the per-sample statistics a rank writes
live in full-length tensors that are zero outside its own rows, so one all_reduce (sum) per epoch
makes them whole on every rank. Labels changed during an epoch (SCN relabelling) and per-sample part
state (ELR targets) are merged the same way before the next epoch starts.

The functions on plain tensors (``owned_mask``, ``rank_steps``) are pure; the collectives are
no-ops in a single process, whose path stays exactly the original loop.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from fercure.errors import DistributedError  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = World()


def env_world(environ: dict[str, str] | None = None) -> World:
    """The world torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK); one process
    when WORLD_SIZE is unset or 1."""
    env = os.environ if environ is None else environ
    try:
        size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise DistributedError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({e}); launch with torchrun.") from e
    if size < 1 or not 0 <= rank < size:
        raise DistributedError(f"RANK={rank} is outside WORLD_SIZE={size}; launch with torchrun.")
    return World(rank, size, local)


def current() -> World:
    """The world of the initialised default process group, else one process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), env_world().local_rank)
    return SINGLE


def rank_device(device: torch.device, world: World) -> torch.device:
    """One GPU per process: a bare 'cuda' becomes cuda:LOCAL_RANK under a launcher."""
    if world.distributed and device.type == "cuda" and device.index is None:
        return torch.device("cuda", world.local_rank)
    return device


def setup(device: torch.device, timeout_minutes: float = 30.0) -> tuple[World, bool]:
    """Join the process group the environment describes (once). Returns the world and whether this
    call created the group (its caller then destroys it with ``teardown``)."""
    world = env_world()
    if not world.distributed:
        return SINGLE, False
    if dist.is_initialized():
        return current(), False
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise DistributedError(f"WORLD_SIZE={world.size} but {key} is not set; launch with torchrun "
                                   "(or `fercure train --nproc N`), which sets it.")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda" and world.local_rank >= torch.cuda.device_count():
        raise DistributedError(f"Local rank {world.local_rank} has no GPU of its own (this machine has "
                               f"{torch.cuda.device_count()}); start at most that many processes per node.")
    if device.type == "cuda":
        torch.cuda.set_device(rank_device(device, world))
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return current(), True


def teardown(created: bool) -> None:
    if created and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Ownership and steps (pure)


def owned_mask(rows: torch.Tensor, world: World) -> torch.Tensor:
    """(n,) bool: which of the fit's samples (given by store row) this rank trains and scores."""
    return torch.remainder(rows, world.size) == world.rank


def rank_counts(rows: np.ndarray, size: int) -> np.ndarray:
    """Samples each rank owns among ``rows`` (every rank can compute every rank's count)."""
    return np.bincount(np.asarray(rows, dtype=np.int64) % size, minlength=size)


def steps_per_epoch(n: int, batch_size: int, counts: np.ndarray) -> int:
    """Optimiser steps per epoch under data parallelism: as many as one process takes with the same
    global batch (ceil(n / batch_size)), but never so many that a rank's batch falls below two
    samples (batch norm needs two). Every rank takes the same number: DDP's all_reduce pairs them."""
    k = max(1, -(-n // batch_size))
    return max(1, min(k, int(counts.min()) // 2))


def rank_steps(n_local: int, steps: int) -> list[tuple[int, int]]:
    """[start, end) of each step over a rank's ``n_local`` samples: ``steps`` near-equal batches
    (sizes differ by at most one), so every sample is seen once per epoch."""
    edges = np.linspace(0, n_local, steps + 1).round().astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


# ---------------------------------------------------------------------------------------------
# Collectives (no-ops in one process)


def merge_owned(t: torch.Tensor, own: torch.Tensor, world: World) -> torch.Tensor:
    """Every rank's values at its own samples, whole on every rank: zero what this rank does not
    own and sum over ranks (each sample is owned by exactly one). ``own`` indexes dim 0."""
    if not world.distributed:
        return t
    kind = t.dtype
    # gloo and NCCL reduce integer and float tensors; bools travel as uint8
    work = t.to(torch.uint8) if kind == torch.bool else t.clone()
    shape = (-1,) + (1,) * (work.ndim - 1)
    work = torch.where(own.view(shape), work, torch.zeros((), dtype=work.dtype, device=work.device))
    dist.all_reduce(work)
    return work.to(kind)


def all_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        t = t.clone()
        dist.all_reduce(t)
    return t


def gather_rows(local: dict[str, torch.Tensor], owner: torch.Tensor, world: World) -> dict[str, torch.Tensor]:
    """Rows each rank computed for the samples it owns (in sample order) → full (n, ...) tensors
    on every rank, rows in sample order. ``owner`` (n,) is the rank that owns each sample (every
    rank knows every rank's share). One all_gather of each rank's rows, padded to the largest
    share: each rank receives about n rows (an all_reduce of a zero-padded n-row tensor moves
    twice that)."""
    if not world.distributed:
        return dict(local)
    counts = torch.bincount(owner, minlength=world.size).tolist()  # host values: not in a step
    width = max(counts)
    out = {}
    for k, v in local.items():
        kind = v.dtype
        work = v.to(torch.uint8) if kind == torch.bool else v  # gloo and NCCL move no bools
        pad = work.new_zeros((width,) + tuple(work.shape[1:]))
        pad[:work.shape[0]] = work
        parts = [torch.empty_like(pad) for _ in range(world.size)]
        dist.all_gather(parts, pad)
        full = work.new_empty((int(owner.numel()),) + tuple(work.shape[1:]))
        for r in range(world.size):
            full[owner == r] = parts[r][:counts[r]]
        out[k] = full.to(kind)
    return out


def owner_of(rows: torch.Tensor, world: World) -> torch.Tensor:
    """(n,) rank owning each of the fit's samples (given by store row): row mod world size."""
    return torch.remainder(rows, world.size)


def chunk_owner(n: int, chunk: int, world: World, device: torch.device | None = None) -> torch.Tensor:
    """(n,) rank owning each row when rows are dealt to ranks in chunks, round robin (the kNN's
    query chunks)."""
    return torch.div(torch.arange(n, device=device), chunk, rounding_mode="floor") % world.size


def sync_buffers(module: torch.nn.Module, world: World) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank. DDP broadcasts them before
    each forward, and each rank's forward then updates them from its own batch, so after the last
    step they differ between ranks; model.pt is rank 0's, and every rank must score with it."""
    if not world.distributed:
        return
    for b in module.buffers():
        dist.broadcast(b, src=0)


def all_gather_object(obj: Any, world: World) -> list[Any]:
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank (a run id, a decision made once)."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()

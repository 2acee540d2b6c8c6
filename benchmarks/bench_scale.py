"""Scaling figures: training images/second with 1, 2, … data-parallel ranks, and the streaming
crop store against the resident one.

Every measurement is a real `fercure.train.fit` on a synthetic uint8 store (random pixels: the
throughput of a step does not depend on what the pixels show) saved as a .npy file and memory-mapped,
as WS/faces/crops.npy is. Ranks are separate processes started by torchrun on this machine
(`--standalone`): on a CPU they share its cores (each rank gets cores / ranks threads) and talk over
gloo; on a GPU machine each rank takes one GPU (NCCL). The streaming figure reads from the page
cache once the file has been read (this script cannot drop the cache); a store larger than RAM
streams from the disk at whatever the disk gives.

images/s is the median over the epochs after the first (warm-up: allocation, DDP set-up), counted
over all ranks (a global epoch of N images / its seconds). Results go to benchmarks/results/scale.json
under "cpu" or "cuda".

  python benchmarks/bench_scale.py --ranks 1 2 --device cpu          # CPU processes, a few minutes
  python benchmarks/bench_scale.py --ranks 1 2 4 8 --device cuda     # one GPU per rank
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # `common` beside this script

import common  # noqa: E402
import numpy as np  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts to measure (default: 1 2)")
    p.add_argument("--device", default="cpu", help="cpu | cuda (default: cpu)")
    p.add_argument("--images", type=int, default=2048, help="images in the synthetic store")
    p.add_argument("--image-size", type=int, default=64, help="crop and training size (px)")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--batch-size", type=int, default=64, help="global batch (split over the ranks)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per measurement (the first is warm-up)")
    p.add_argument("--skip-stream", action="store_true", help="skip the streaming vs resident comparison")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # internal: one torchrun worker
    p.add_argument("--store", default="resident", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker(a: argparse.Namespace) -> None:
    """One rank of a measurement (under torchrun): fit on the memory-mapped store, rank 0 writes
    the epoch history."""
    import torch.distributed as dist

    from fercure.train import distributed as dd
    from fercure.train.config import TrainConfig
    from fercure.train.loop import fit, resolve_device

    world, created = dd.setup(resolve_device(a.device))
    store = np.load(a.worker, mmap_mode="r")
    labels = np.arange(len(store)) % 7
    cfg = TrainConfig(backbone=a.backbone, image_size=a.image_size, epochs=a.epochs, batch_size=a.batch_size,
                      device=a.device, store=a.store)
    res = fit(store, labels, [str(c) for c in range(7)], cfg)
    if world.main:
        a.result.write_text(json.dumps({"history": res.history, "world_size": world.size,
                                        "device": res.device}))
    if created:
        dist.barrier()
    dd.teardown(created)


def measure(a: argparse.Namespace, store_path: Path, ranks: int, store: str) -> dict:
    cores = os.cpu_count() or 1
    threads = max(1, cores // ranks) if a.device == "cpu" else 1
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               str(Path(__file__).resolve()), "--worker", str(store_path), "--result", str(result),
               "--device", a.device, "--backbone", a.backbone, "--image-size", str(a.image_size),
               "--batch-size", str(a.batch_size), "--epochs", str(a.epochs), "--store", store]
        subprocess.run(cmd, env=env, check=True)
        out = json.loads(result.read_text())
    rates = [h["images_per_s"] for h in out["history"][1:]] or [out["history"][-1]["images_per_s"]]
    return {"ranks": ranks, "store": store, "threads_per_rank": threads,
            "images_per_s": float(np.median(rates)), "epoch_images_per_s": [h["images_per_s"] for h in out["history"]],
            "device": out["device"]}


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.worker is not None:
        worker(a)
        return
    rng = np.random.default_rng(0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        store_path = Path(tmp) / "crops.npy"
        np.save(store_path, rng.integers(0, 256, (a.images, a.image_size, a.image_size, 3), dtype=np.uint8))
        for r in a.ranks:
            results.append(measure(a, store_path, r, "resident"))
            print(f"{r} rank(s), resident: {results[-1]['images_per_s']:.1f} images/s", flush=True)
        if not a.skip_stream:
            results.append(measure(a, store_path, 1, "stream"))
            print(f"1 rank, streaming: {results[-1]['images_per_s']:.1f} images/s", flush=True)
    payload = {
        "date": common.today(), **common.git_commit(), "device": common.device_name(a.device),
        "command": "python benchmarks/bench_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cores": os.cpu_count(), "images": a.images, "image_size": a.image_size, "backbone": a.backbone,
        "batch_size": a.batch_size, "epochs": a.epochs,
        "ranks_are": "processes on one machine (torchrun --standalone)", "results": results,
    }
    common.merge_results(a.out, common.device_kind(a.device), payload)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

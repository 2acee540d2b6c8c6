"""The kNN label-agreement signal at scale: time and peak memory of fercure's blocked exact search
(``fercure.train.signals.knn_label_distribution``) on synthetic embeddings, and of the all-pairs
version it replaced (one chunk × N similarity block per chunk) where that fits.

Each (N, method) runs in its own process, so its peak resident memory (CPU) or peak allocated
device memory (CUDA) is its own; "search" is the peak during the search minus what the process
held when it began (the embeddings, torch itself), sampled from /proc on the CPU. Exact search costs N² dot products whatever the blocking; at
large N the time is measured on the first ``--queries`` query rows against all N keys and scaled
by N / queries (every query row costs the same), and the result says so. The memory is measured
on that run: the embeddings, one similarity block and the running top-k; the votes and the
neighbour table of the full N (N·(k·12 + C·4) bytes) are added by arithmetic and shown apart.

  OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_knn.py               # 100k and 1M on the CPU
  python benchmarks/bench_knn.py --n 100000 1000000 10000000 --device cuda --queries 0   # a GPU, all queries
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000], help="sample counts (default: %(default)s)")
    p.add_argument("--dim", type=int, default=512, help="embedding width (ResNet-18's is 512)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--classes", type=int, default=7)
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--chunk", type=int, default=2048, help="query rows per block")
    p.add_argument("--key-block", type=int, default=65536, help="key rows per block")
    p.add_argument("--queries", type=int, default=8192,
                   help="query rows timed when N is larger (0: all; time scaled by N/queries)")
    p.add_argument("--old-up-to", type=int, default=100_000,
                   help="also run the all-pairs version for N up to this (its block is chunk × N floats)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "knn.json")
    p.add_argument("--one", nargs=2, metavar=("N", "METHOD"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


class RssSampler:
    """Peak resident memory of this process while it runs (read from /proc every 5 ms on a
    thread; torch's matrix products release the GIL). ru_maxrss would also count the peak of
    making the data, before the search."""

    def __init__(self) -> None:
        import threading

        self.page = os.sysconf("SC_PAGE_SIZE")
        self.before = self.peak = self.rss()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self.done.wait(0.005):
            self.peak = max(self.peak, self.rss())

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return max(self.peak, self.rss())


def old_knn(e, y, num_classes, k, chunk, queries):
    """The all-pairs kNN signal as it was before issue 19 (a chunk × N block), for comparison."""
    import torch

    n = e.shape[0]
    out = torch.zeros(len(queries), num_classes, device=e.device)
    for s in range(0, len(queries), chunk):
        q = queries[s:s + chunk]
        sim = e[q] @ e.T
        sim[torch.arange(len(q), device=e.device), q] = -2.0
        val, nb = sim.topk(k, dim=1)
        out[s:s + len(q)].scatter_add_(1, y[nb], val.clamp_min(0.0) + 1e-6)
    return out


def run_one(args: argparse.Namespace, n: int, method: str) -> dict:
    import torch
    import torch.nn.functional as F

    from fercure.train import signals as sg

    dev = torch.device(args.device)
    gen = torch.Generator(device=dev).manual_seed(0)
    # clustered embeddings (7 class centres + noise), normalised once on the device
    centres = torch.randn(args.classes, args.dim, generator=gen, device=dev)
    y = torch.randint(0, args.classes, (n,), generator=gen, device=dev)
    e = centres[y]
    e.add_(torch.randn(n, args.dim, generator=gen, device=dev), alpha=2.0)
    e = F.normalize(e, dim=1)
    q = n if args.queries <= 0 else min(n, args.queries)
    queries = torch.arange(q, device=dev)
    del centres
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated(dev)
    else:
        float(e.sum())
        sampler = RssSampler()
        before = sampler.before
    t0 = time.perf_counter()
    if method == "blocked":
        val, nb = sg.knn_neighbours(e, args.k, queries, chunk=args.chunk, key_block=args.key_block)
        votes = torch.zeros(q, args.classes, device=dev).scatter_add_(1, y[nb], val.clamp_min(0.0) + 1e-6)
    else:
        votes = old_knn(e, y, args.classes, args.k, args.chunk, queries)
    float(votes.sum())  # waits for the device
    secs = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else sampler.stop()
    return {"n": n, "method": method, "device": args.device, "dim": args.dim, "k": args.k,
            "chunk": args.chunk, "key_block": args.key_block if method == "blocked" else None,
            "queries_timed": q, "seconds_measured": round(secs, 3),
            "seconds_all_queries": round(secs * n / q, 1), "extrapolated": q < n,
            "peak_bytes": int(peak), "before_search_bytes": int(before),
            "search_bytes": int(peak - before), "embedding_bytes": n * args.dim * 4,
            "output_bytes_full_n": n * (args.k * 12 + args.classes * 4),
            "block_bytes": min(args.chunk, q) * (min(args.key_block, n) if method == "blocked" else n) * 4,
            "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args, int(args.one[0]), args.one[1])))
        return 0
    rows = []
    for n in args.n:
        for method in (["old"] if n <= args.old_up_to else []) + ["blocked"]:
            cmd = [sys.executable, __file__, "--one", str(n), method, "--dim", str(args.dim), "--k", str(args.k),
                   "--classes", str(args.classes), "--device", args.device, "--chunk", str(args.chunk),
                   "--key-block", str(args.key_block), "--queries", str(args.queries)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(res.stderr, file=sys.stderr)
                return 1
            row = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"N={n:>10,} {method:8s} {row['seconds_all_queries']:>10.1f} s"
                  f"{' (extrapolated from ' + str(row['queries_timed']) + ' queries)' if row['extrapolated'] else ''}"
                  f"  peak {row['peak_bytes'] / 2**30:.2f} GiB, search {row['search_bytes'] / 2**30:.2f} GiB (embeddings {row['embedding_bytes'] / 2**30:.2f} GiB,"
                  f" block {row['block_bytes'] / 2**30:.2f} GiB)", flush=True)
    blocked = [r for r in rows if r["method"] == "blocked"]
    plan = {}
    if blocked:
        big = max(blocked, key=lambda r: r["n"])
        n10 = 10_000_000
        plan = {"n": n10, "basis_n": big["n"], "device": big["device"],
                "seconds_one_process": round(big["seconds_all_queries"] * (n10 / big["n"]) ** 2),
                "embedding_bytes": n10 * args.dim * 4, "block_bytes": big["block_bytes"],
                "output_bytes": n10 * (args.k * 12 + args.classes * 4),
                "note": "exact search: time grows with N² (scaled from the largest measured N), memory with N·(D+k)"}
    out = {"command": " ".join([Path(sys.executable).name, "benchmarks/bench_knn.py"] + (argv or sys.argv[1:])),
           "date": time.strftime("%Y-%m-%d"), "rows": rows, "extrapolation_10m": plan,
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".partial.json")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

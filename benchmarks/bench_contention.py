"""`train` beside other work: the same small training run idle and beside one other busy torch
process, with the OpenMP wait policy unset (libgomp's default: threads spin before they sleep) or
PASSIVE (they sleep at once), and with a thread count that leaves a core free.

Each configuration trains the same synthetic workspace in a fresh subprocess that calls
``fercure.stages.train.run_train`` directly (not the CLI, so the CLI's own default does not
apply); the configurations run interleaved, round after round, so a change in the machine's load
falls on all of them. The competitor is a torch process multiplying matrices with torch's default
threads and wait policy, like another training job. Wall and CPU seconds per run, the load
average before each, and the median over rounds go to the JSON.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_contention.py --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

TRAIN = r"""
import sys, time
from pathlib import Path
from fercure.stages.train import run_train
from fercure.train.config import TrainConfig
ws, epochs, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
run_train(Path(ws), TrainConfig(backbone="resnet18", image_size=size, epochs=epochs, batch_size=64,
                                device="cpu", retrain=False, knn=0))
"""

COMPETITOR = r"""
import torch
a = torch.randn(384, 384)
while True:
    b = a @ a
"""

CONFIGS = {
    # name: (environment changes, beside a competitor)
    "idle, wait policy unset": ({"OMP_WAIT_POLICY": None}, False),
    "idle, PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, False),
    "busy, wait policy unset": ({"OMP_WAIT_POLICY": None}, True),
    "busy, PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, True),
    "busy, PASSIVE, threads = cores - 1": ({"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "CORES-1"}, True),
}


def make_workspace(root: Path, n: int, size: int) -> None:
    import numpy as np
    import pandas as pd

    from fercure.workspace import Workspace, sample_id, write_table

    ws = Workspace(root)
    ws.faces_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    classes = ["angry", "happy", "neutral", "sad"]
    y = np.arange(n) % len(classes)
    imgs = rng.normal(110, 30, (n, size, size, 3))
    for i, k in enumerate(y):
        imgs[i, :, :, k % 3] += 40 * (1 + k // 3)
    np.save(ws.store, np.clip(imgs, 0, 255).astype(np.uint8))
    paths = [f"img/{i:04d}.png" for i in range(n)]
    write_table(pd.DataFrame({"sample_id": [sample_id(p) for p in paths], "source_path": paths,
                              "label": np.array(classes, dtype=object)[y], "split": "train",
                              "face_status": "ok", "store_index": np.arange(n)}), ws.manifest, {"classes": classes})


def env_for(changes: dict[str, str | None]) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for key in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS"):
        env.pop(key, None)
    for key, value in changes.items():
        if value == "CORES-1":
            value = str(max(1, (os.cpu_count() or 2) - 1))
        if value is not None:
            env[key] = value
    return env


def timed_run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, CPU s of the child) for one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512, help="synthetic samples in the workspace")
    ap.add_argument("--size", type=int, default=48, help="crop side in pixels")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds over all configurations")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "contention.json")
    args = ap.parse_args(argv)

    results: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="fercure-contention-") as tmp:
        make_workspace(Path(tmp) / "ws", args.n, args.size)
        for r in range(args.rounds):
            for name, (changes, busy) in CONFIGS.items():
                competitor = None
                if busy:  # a torch job with torch's defaults (all cores, wait policy unset)
                    competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=env_for({}))
                    time.sleep(3)  # let it start spinning
                try:
                    load = os.getloadavg()[0]
                    wall, cpu = timed_run([sys.executable, "-c", TRAIN, str(Path(tmp) / "ws"), str(args.epochs),
                                           str(args.size)], env_for(changes))
                finally:
                    if competitor is not None:
                        competitor.kill()
                        competitor.wait()
                results[name].append({"round": r, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                                      "load_1min_before": round(load, 2)})
                print(f"round {r} {name}: {wall:.1f} s wall, {cpu:.1f} s CPU (load {load:.2f})", flush=True)
    summary = {name: {"median_wall_s": round(statistics.median(x["wall_s"] for x in runs), 2),
                      "median_cpu_s": round(statistics.median(x["cpu_s"] for x in runs), 2)}
               for name, runs in results.items()}
    out = {"command": " ".join(["python", "benchmarks/bench_contention.py", *(argv if argv is not None else sys.argv[1:])]),
           "cores": os.cpu_count(), "n": args.n, "size": args.size, "epochs": args.epochs,
           "date": time.strftime("%Y-%m-%d"), "runs": results, "median": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

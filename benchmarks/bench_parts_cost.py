"""Cost of each training part per epoch, against the plain core, measured in one process.

Every configuration trains with fercure's own loop (``fercure.train.fit``) on the same random uint8
crops; rounds interleave the configurations (plain, jigsaw, in-painting, APP, and a small ViT plain
and with ATP), so a machine that slows down mid-run slows every configuration alike. The figure is
the median over rounds of each fit's fastest epoch after the first (warm-up), and its ratio to the
plain core's (the ViT+ATP row against the plain ViT).

    python benchmarks/bench_parts_cost.py --device cpu            # 48 px, as the CPU reference scale
    python benchmarks/bench_parts_cost.py --device cuda --image-size 112 --images 8192

Results merge into benchmarks/results/parts_cost.json under "cpu" or "cuda".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import common  # noqa: E402
from bench_label_noise import VIT  # noqa: E402  (the label-noise benchmark's small ViT)
CONFIGS = {  # name → (TrainConfig overrides, the row it is compared with)
    "plain": ({}, "plain"),
    "jigsaw": ({"jigsaw": True}, "plain"),
    "inpaint": ({"inpaint": True}, "plain"),
    "jigsaw+inpaint": ({"jigsaw": True, "inpaint": True}, "plain"),
    "app": ({"pool": "app"}, "plain"),
    "vit": (VIT, "vit"),
    "vit+atp": ({**VIT, "pool": "atp"}, "vit"),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--image-size", type=int, default=48)
    ap.add_argument("--images", type=int, default=512, help="crops per epoch")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3, help="per fit; the first is warm-up")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(CONFIGS))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "parts_cost.json")
    args = ap.parse_args(argv)
    if args.epochs < 2:
        ap.error("--epochs must be >= 2 (the first epoch is warm-up)")

    import numpy as np

    from fercure.device import resolve_device
    from fercure.train.config import TrainConfig
    from fercure.train.loop import fit

    device = str(resolve_device(args.device))
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(CONFIGS)
    for n in names:
        if n not in CONFIGS:
            ap.error(f"--only: unknown {n!r}")
        base = CONFIGS[n][1]
        if base not in names:
            names.insert(0, base)
    rng = np.random.default_rng(0)
    s = args.image_size
    images = rng.integers(0, 256, (args.images, s, s, 3), dtype=np.uint8)
    labels = rng.integers(0, 7, args.images)
    classes = [str(i) for i in range(7)]
    t0 = time.perf_counter()
    per: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names:
            config = TrainConfig(image_size=s, epochs=args.epochs, batch_size=args.batch_size, device=device,
                                 seed=r, **CONFIGS[n][0])
            res = fit(images, labels, classes, config)
            per[n].append(min(h["seconds"] for h in res.history[1:]))
            print(f"round {r + 1}/{args.rounds} {n}: {per[n][-1]:.2f} s/epoch", flush=True)
    rows = {}
    for n in names:
        sec = statistics.median(per[n])
        base = statistics.median(per[CONFIGS[n][1]])
        rows[n] = {"seconds_per_epoch": sec, "images_per_s": args.images / sec, "vs": CONFIGS[n][1],
                   "ratio": sec / base, "per_round": per[n], "overrides": CONFIGS[n][0]}
    payload = {"device_name": common.device_name(device), "date": common.today(), **common.git_commit(),
               "command": ["python", *sys.argv], "settings": vars(args) | {"out": str(args.out)},
               "configs": rows, "total_seconds": time.perf_counter() - t0}
    common.merge_results(args.out, common.device_kind(device), payload)
    print(f"\n{'config':16s} {'s/epoch':>8s} {'img/s':>8s}  ratio")
    for n, v in rows.items():
        print(f"{n:16s} {v['seconds_per_epoch']:8.2f} {v['images_per_s']:8.0f}  {v['ratio']:.2f}x {v['vs']}")
    print(f"results merged into {args.out} under {common.device_kind(device)!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

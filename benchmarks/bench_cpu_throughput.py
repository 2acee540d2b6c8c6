"""CPU training throughput at small crop sizes: images per CPU-second of one training step
(forward, backward, AdamW step) for a few timm backbones, one torch thread.

CPU-seconds, not wall seconds: the figure holds on a machine shared with other work (a loaded
machine stretches the wall time, much less the CPU time a step needs). Two idle cores train at
most about twice this figure.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_cpu_throughput.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_cpu_throughput.py --size 48 --batch 64 \\
        --backbone resnet18 --backbone resnet18:channels=[32,64,128,256]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

DEFAULT_BACKBONES = ["resnet18", "resnet18:channels_last", "resnet18:channels=[32,64,128,256]",
                     "resnet18:channels=[48,96,192,384]", "resnet10t", "resnet14t"]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def parse_backbone(spec: str) -> tuple[str, dict, bool]:
    """``name[:key=json][:channels_last]`` → (timm name, create_model kwargs, channels_last)."""
    name, *rest = spec.split(":")
    kwargs, channels_last = {}, False
    for item in rest:
        if item == "channels_last":
            channels_last = True
        else:
            key, _, raw = item.partition("=")
            kwargs[key] = json.loads(raw)
    return name, kwargs, channels_last


def images_per_cpu_second(spec: str, size: int, batch: int, steps: int, warmup: int = 2) -> float:
    import timm
    import torch

    name, kwargs, channels_last = parse_backbone(spec)
    model = timm.create_model(name, pretrained=False, num_classes=7, **kwargs)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, size, size, generator=gen), torch.randint(0, 7, (batch,), generator=gen)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(warmup):
        step()
    start = cpu_seconds()
    for _ in range(steps):
        step()
    return batch * steps / (cpu_seconds() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", action="append", default=None,
                    help="timm name[:key=json-value][:channels_last], repeatable (default: a ResNet-18 family)")
    ap.add_argument("--size", type=int, default=48, help="crop side in pixels (default: 48)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cpu_throughput.json")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = []
    for spec in args.backbone or DEFAULT_BACKBONES:
        rate = images_per_cpu_second(spec, args.size, args.batch, args.steps)
        rows.append({"backbone": spec, "images_per_cpu_second": round(rate, 1)})
        print(f"{spec:40s} {rate:7.0f} images per CPU-second", flush=True)
    import common

    record = {"size": args.size, "batch": args.batch, "steps": args.steps, "threads": 1, "rows": rows,
              "device": common.device_name("cpu"), "date": common.today(), **common.git_commit()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

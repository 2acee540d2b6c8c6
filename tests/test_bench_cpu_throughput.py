"""benchmarks/bench_cpu_throughput.py: its backbone specs parse, and a step is timed."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_cpu_throughput as b  # noqa: E402


def test_a_backbone_spec_names_its_timm_kwargs_and_layout():
    assert b.parse_backbone("resnet18") == ("resnet18", {}, False)
    assert b.parse_backbone("resnet18:channels=[32,64,128,256]:channels_last") == (
        "resnet18", {"channels": [32, 64, 128, 256]}, True)


def test_a_training_step_is_timed_in_images_per_cpu_second():
    assert b.images_per_cpu_second("test_resnet", size=16, batch=4, steps=1, warmup=1) > 0

"""The CUDA path, on a GPU (skipped without one; benchmarks/gpu_check.sh runs these first on a GPU
machine): bf16 autocast agrees with fp32, the detector finds on CUDA the faces it finds on the
CPU, and two NCCL ranks write the tables one process writes (with two GPUs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fercure.train.config import TrainConfig
from fercure.train.loop import apply_cuda_backend_flags, cuda_backend_flags, fit, predict
from fercure.train.model import build_model

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU (this machine has none); benchmarks/gpu_check.sh runs these on a GPU machine")]


def _images(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    imgs = rng.normal(100, 25, (n, size, size, 3))
    for i, k in enumerate(y):
        imgs[i, ..., k] += 60  # class = dominant colour channel
    return np.clip(imgs, 0, 255).astype(np.uint8), y


def test_bf16_backbone_agrees_with_fp32():
    """The same ResNet-18 weights scoring 256 crops at 112 px: bf16 autocast (the CUDA default)
    vs fp32 on the GPU vs fp32 on the CPU. bf16 keeps 8 bits of mantissa, so probabilities
    move by up to ~1e-2; the tolerance is 0.03 on any probability and 97 % of argmaxes kept.
    fp32 on the GPU (TF32 off with amp='off') matches the CPU within 1e-3."""
    images, _ = _images(256, 112)
    config = TrainConfig(backbone="resnet18", image_size=112, device="cuda", amp="off")
    apply_cuda_backend_flags(cuda_backend_flags(config))
    torch.manual_seed(0)
    model = build_model(config, 3).cuda().to(memory_format=torch.channels_last)
    fp32 = predict(model, images, config)["probs"]
    model.amp = torch.bfloat16
    bf16 = predict(model, images, config)["probs"]
    model.amp = None
    cpu = predict(model.cpu(), images, TrainConfig(backbone="resnet18", image_size=112, device="cpu"))["probs"]
    assert np.abs(fp32 - cpu).max() <= 1e-3
    assert np.abs(bf16 - fp32).max() <= 0.03
    assert (bf16.argmax(1) == fp32.argmax(1)).mean() >= 0.97


def test_bf16_training_agrees_with_fp32_training():
    """Two 3-epoch fits of a toy set that differ only in amp: both learn it (train accuracy ≥ 0.9)
    and their final p(given) agree within 0.1 on 95 % of samples."""
    images, y = _images(384, 32)
    base = dict(backbone="test_resnet", image_size=32, epochs=3, batch_size=64, device="cuda", knn=0)
    a = fit(images, y, ["a", "b", "c"], TrainConfig(amp="auto", **base))
    b = fit(images, y, ["a", "b", "c"], TrainConfig(amp="off", **base))
    assert a.final_train_accuracy >= 0.9 and b.final_train_accuracy >= 0.9
    close = np.abs(a.dynamics["p_given"][-1] - b.dynamics["p_given"][-1]) <= 0.1
    assert close.mean() >= 0.95


def _cuda_syncs(n: int, batch_size: int) -> int:
    import warnings

    images, y = _images(n, 32)
    soft = np.full((n, 3), 1 / 3, np.float32)
    config = TrainConfig(backbone="test_resnet", image_size=32, epochs=2, batch_size=batch_size, device="cuda",
                         selfcure=True, relabel_epoch=1, relabel_scope="all", reliability=True, elr=True,
                         jigsaw=True, inpaint=True, pool="app", distill_generations=1, knn=0)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            fit(images, y, ["a", "b", "c"], config, soft_targets=soft)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in seen)


def test_no_host_sync_inside_a_cuda_step():
    """torch's own sync detector on the real device, every part on: a fit with 12 steps per epoch
    synchronises exactly as often as one with 4 (the per-epoch host copies), so never in a step."""
    _cuda_syncs(48, 12)  # warm-up: per-process constants, cuDNN autotuning
    assert _cuda_syncs(96, 8) == _cuda_syncs(96, 24)


def test_detector_on_cuda_finds_the_faces_it_finds_on_cpu():
    from PIL import Image

    from fercure.faces.detect import FaceDetector

    wild = REPO / "sample_data" / "wild"
    images = [np.asarray(Image.open(wild / f"{n}.png").convert("RGB")) for n in ("astronaut", "chelsea", "coffee")]
    labels = pd.read_csv(REPO / "sample_data" / "labels.csv")
    for rel in labels["path"].head(24):
        g = np.asarray(Image.open(REPO / "sample_data" / "images" / rel).convert("L").resize((160, 160)))
        images.append(np.repeat(np.pad(g, 48, mode="edge")[:, :, None], 3, axis=2))
    cpu = FaceDetector(device="cpu", batch_size=8).detect(images)
    gpu = FaceDetector(device="cuda", batch_size=8).detect(images)
    for i, (a, b) in enumerate(zip(gpu, cpu)):
        assert len(a) == len(b), i
        # cuDNN and oneDNN sum in other orders: boxes and landmarks within half a pixel
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.5, err_msg=str(i))
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=0.5, err_msg=str(i))
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-3, err_msg=str(i))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (this machine has fewer)")
def test_two_nccl_ranks_write_the_tables_of_one_process(tmp_path):
    """`fercure train --nproc 2 --device cuda` vs one process on one GPU: same rows, no gaps, and
    flagged sets that agree as closely as two seeds do (test_distributed's gloo check, on NCCL)."""
    from test_distributed import CLASSES, make_noisy_workspace  # noqa: F401

    from fercure.stages.audit import run_audit

    env = dict(os.environ, PYTHONPATH=str(REPO))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    args = ["--backbone", "test_resnet", "--image-size", "24", "--epochs", "6", "--batch-size", "16",
            "--device", "cuda"]
    audits = {}
    for key, extra in (("one", []), ("two", ["--nproc", "2"])):
        ws, wrong = make_noisy_workspace(tmp_path / key)
        proc = subprocess.run([sys.executable, "-m", "fercure", "train", "-w", str(ws.root), *args, *extra],
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        if key == "two":
            assert "NCCL" in proc.stdout + proc.stderr
        run = ws.run_dir(ws.latest_run())
        pred = pd.read_parquet(run / "predictions.parquet")
        assert pred.notna().sum().min() > 0
        run_audit(ws, write_report=False)
        audits[key] = (pred, pd.read_parquet(ws.audit))
    (p1, a1), (p2, a2) = audits["one"], audits["two"]
    assert p1["sample_id"].equals(p2["sample_id"]) and list(p1.columns) == list(p2.columns)
    assert p2.notna().sum().equals(p1.notna().sum())
    f1, f2 = set(np.flatnonzero(a1["is_label_issue"])), set(np.flatnonzero(a2["is_label_issue"]))
    assert len(f1 & f2) / max(1, len(f1 | f2)) >= 0.8

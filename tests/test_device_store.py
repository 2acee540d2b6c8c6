"""The crop store a fit reads from: resident on the device or streamed from the memory map, chosen
by size against free memory; a streamed fit is the resident fit, bit for bit (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fercure.progress import NullReporter
from fercure.stages.train import run_train
from fercure.train.config import TrainConfig
from fercure.train.device_store import (RESIDENT_SHARE, ResidentStore, StreamingStore, open_crop_store,
                                        store_mode)
from fercure.train.loop import fit, predict

from test_train_stage import make_workspace


def test_store_mode_switches_on_free_memory():
    gb = 2**30
    assert store_mode(1 * gb, 10 * gb) == "resident"
    assert store_mode(int(RESIDENT_SHARE * 10 * gb) + 1, 10 * gb) == "stream"
    assert store_mode(100 * gb, None) == "resident"  # unknown free memory: the old behaviour
    assert store_mode(1, 10 * gb, "stream") == "stream" and store_mode(100 * gb, 1, "resident") == "resident"
    with pytest.raises(ValueError, match="auto, resident or stream"):
        store_mode(1, 1, "disk")


@pytest.fixture()
def mapped(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "crops.npy", rng.integers(0, 256, (40, 20, 20, 3), dtype=np.uint8))
    return np.load(tmp_path / "crops.npy", mmap_mode="r")


def test_streaming_batches_are_the_resident_batches(mapped):
    dev = torch.device("cpu")
    res, stream = ResidentStore(mapped, dev), StreamingStore(mapped, dev, read_ahead=2)
    rows = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    bounds = [(0, 7), (7, 19), (19, 33), (33, 40)]
    got = list(stream.batches(rows, bounds))
    assert len(got) == 4
    for (s, e), a, b in zip(bounds, res.batches(rows, bounds), got):
        assert torch.equal(a, b) and torch.equal(b, torch.from_numpy(np.asarray(mapped)[rows[s:e].numpy()]))
    stream.close()


def test_open_crop_store_logs_its_choice(mapped):
    lines: list[str] = []
    s = open_crop_store(mapped, torch.device("cpu"), "stream", log=lines.append)
    assert isinstance(s, StreamingStore) and "streams from the memory map" in lines[0]
    assert "forced" in lines[0]
    s.close()
    r = open_crop_store(mapped, torch.device("cpu"), "auto", log=lines.append)
    assert isinstance(r, ResidentStore) and "resident on cpu" in lines[1] and "GB free" in lines[1]


def test_a_streamed_fit_is_the_resident_fit(mapped):
    labels = np.arange(40) % 3
    base = dict(backbone="test_resnet", image_size=16, epochs=2, batch_size=8, device="cpu",
                elr=True, erase_p=0.5)
    fits = {mode: fit(mapped, labels, ["a", "b", "c"], TrainConfig(store=mode, **base),
                      index=np.arange(3, 40)) for mode in ("resident", "stream")}
    a, b = fits["resident"], fits["stream"]
    for k in a.dynamics:
        assert np.array_equal(a.dynamics[k], b.dynamics[k]), k
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(v, w), k
    cfg = TrainConfig(store="stream", **base)
    pa, pb = predict(a.model, mapped, cfg, index=np.arange(40)), predict(b.model, mapped, cfg, index=np.arange(40))
    assert np.array_equal(pa["logits"], pb["logits"])


def test_run_train_streams_when_told(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    logs: list[str] = []

    class Log(NullReporter):
        def log(self, line: str) -> None:
            logs.append(line)

    s = run_train(ws, TrainConfig(backbone="test_resnet", image_size=24, epochs=1, batch_size=16,
                                  device="cpu", store="stream"), reporter=Log())
    assert any("streams from the memory map" in line for line in logs), logs
    assert (s.run_dir / "predictions.parquet").exists()

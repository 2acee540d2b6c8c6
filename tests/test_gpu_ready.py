"""Issue 19 on the CPU: what the CUDA path needs that a CPU test can see (no host sync inside a
step, one jigsaw upload, channels_last kept, one compiled graph), the kNN's O(N·k) memory and its
agreement with the all-pairs version, and finished fits written once instead of every epoch."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from fercure.train import augment, loop
from fercure.train import signals as sg
from fercure.train.config import TrainConfig
from fercure.train.loop import _eval_outputs, cuda_backend_flags, fit, forward_with_aux, step_layout
from fercure.train.model import build_model
from fercure.train.parts import build_parts


# --- kNN ------------------------------------------------------------------------------------------

def _knn_all_pairs(embedding, labels, num_classes, k):
    """The kNN signal as it was (one chunk × N similarity block per chunk), with the tie rule made
    explicit: equal similarities go to the smaller index."""
    e = F.normalize(torch.as_tensor(embedding, dtype=torch.float32), dim=1)
    y = torch.as_tensor(labels)
    n = len(e)
    sim = (e @ e.T).double().numpy()
    np.fill_diagonal(sim, -2.0)
    nb = np.stack([np.lexsort((np.arange(n), -sim[i]))[:k] for i in range(n)])
    val = np.take_along_axis(sim, nb, 1)
    out = np.zeros((n, num_classes))
    for i in range(n):
        np.add.at(out[i], y[nb[i]].numpy(), np.clip(val[i], 0, None) + 1e-6)
    return nb, out / out.sum(1, keepdims=True)


def test_blocked_knn_equals_the_all_pairs_signal():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(157, 12)).astype(np.float32)
    labels = rng.integers(0, 4, 157)
    nb_ref, ref = _knn_all_pairs(emb, labels, 4, 7)
    e = F.normalize(torch.from_numpy(emb), dim=1)
    for chunk, block in [(2048, 65536), (16, 23), (5, 7)]:  # one block; many blocks to merge
        _, nb = sg.knn_neighbours(e, 7, torch.arange(157), chunk=chunk, key_block=block)
        assert (nb.numpy() == nb_ref).all()
        got = sg.knn_label_distribution(emb, labels, 4, k=7, chunk=chunk, key_block=block, device="cpu")
        np.testing.assert_allclose(got, ref, atol=1e-5)


def test_knn_ties_go_to_the_smaller_index_whatever_the_blocks():
    # 4 copies of each of 6 directions, each with four entries of ±1 (norm 2: normalising and
    # every dot product are exact), so the neighbour sets are decided by exact ties
    rng = np.random.default_rng(1)
    base = np.zeros((6, 8), np.float32)
    for row in base:
        row[rng.permutation(8)[:4]] = rng.choice([-1.0, 1.0], 4)
    emb = np.repeat(base, 4, axis=0)[rng.permutation(24)]
    labels = np.arange(24) % 3
    nb_ref, ref = _knn_all_pairs(emb, labels, 3, 5)
    e = F.normalize(torch.from_numpy(emb), dim=1)
    for chunk, block in [(64, 64), (3, 5), (7, 4)]:
        _, nb = sg.knn_neighbours(e, 5, torch.arange(24), chunk=chunk, key_block=block)
        assert (nb.numpy() == nb_ref).all()
        np.testing.assert_allclose(sg.knn_label_distribution(emb, labels, 3, k=5, chunk=chunk, key_block=block,
                                                             device="cpu"), ref, atol=1e-6)
    exact = np.eye(4, dtype=np.float32)[[0, 0, 0, 1, 1, 2, 3, 0]]
    _, nb = sg.knn_neighbours(torch.from_numpy(exact), 2, torch.arange(8), chunk=3, key_block=2)
    assert nb[0].tolist() == [1, 2] and nb[7].tolist() == [0, 1] and nb[3].tolist() == [4, 0]


class _LargestMatmul(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm):
            self.largest = max(self.largest, out.numel())
        return out


def test_knn_never_builds_an_n_by_n_block():
    emb = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    with _LargestMatmul() as mode:
        sg.knn_label_distribution(emb, np.arange(300) % 3, 3, k=5, chunk=32, key_block=50, device="cpu")
    assert 0 < mode.largest <= 32 * 50


# --- the training step ---------------------------------------------------------------------------

SYNC_METHODS = {"item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__", "nonzero"}


class _SyncCounter(TorchFunctionMode):
    """Counts what makes a CUDA stream wait for the host: values read back (item, tolist, numpy,
    bool/int/float of a tensor, nonzero's data-dependent size) and device transfers (.cpu, .to a
    device)."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        kwargs = kwargs or {}
        if name in SYNC_METHODS:
            self.calls.append(name)
        elif name == "to" and (any(isinstance(a, (torch.device, str)) for a in args[1:]) or "device" in kwargs):
            self.calls.append("to(device)")
        return func(*args, **kwargs)


def _all_parts_config(**kw):
    base = dict(backbone="test_resnet", image_size=32, epochs=2, batch_size=8, device="cpu",
                selfcure=True, relabel_epoch=1, relabel_scope="all", reliability=True, elr=True,
                jigsaw=True, inpaint=True, pool="app", distill_generations=1, knn=0)
    base.update(kw)
    return TrainConfig(**base)


def _syncs_in_fit(n: int, batch_size: int, **kw) -> list[str]:
    augment.normalize(torch.zeros(1, 3, 2, 2))  # its per-device constants are made once per process
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, n)
    soft = rng.dirichlet(np.ones(3), n).astype(np.float32)
    with _SyncCounter() as counter:
        fit(images, labels, ["a", "b", "c"], _all_parts_config(batch_size=batch_size, **kw), soft_targets=soft)
    return counter.calls


def test_training_steps_never_wait_for_the_host(monkeypatch):
    """Every part on (SCN, ARBEx, ELR, jigsaw, in-painting, APP pooling, distillation): the host
    reads and transfers of a fit do not grow with its number of steps (4 vs 12 per epoch), so
    there are none inside a step; what remains happens once per epoch or once per fit. The
    optimiser is the one CUDA gets (fused AdamW); the CPU's default AdamW reads its step count
    with .item() every step, which is no sync on a CPU."""
    real = loop.make_optimizer
    monkeypatch.setattr(loop, "make_optimizer", lambda model, config, device: real(model, config, torch.device("cuda")))
    few, many = _syncs_in_fit(48, 12), _syncs_in_fit(48, 4)
    assert len(few) > 0  # the counter sees the per-epoch reads
    assert sorted(few) == sorted(many), (sorted(few), sorted(many))


def test_jigsaw_permutations_go_to_the_device_once():
    config = TrainConfig(image_size=32, jigsaw=True, device="cpu")
    part = build_parts(config, 8, 3, torch.device("cpu"))[0]
    gen = torch.Generator().manual_seed(0)
    part.aux_inputs(torch.randn(8, 3, 32, 32), gen)
    first = part.perms
    with _SyncCounter() as counter:
        for _ in range(3):
            part.aux_inputs(torch.randn(8, 3, 32, 32), gen)
    assert part.perms is first and counter.calls == []


class _Recorder(torch.nn.Module):
    """Stands in for FerNet and records the memory layout of every input it is given."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.layouts = inner, []

    def forward(self, x):
        self.layouts.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return self.inner(x)


def test_channels_last_survives_the_pretext_rows_and_the_mirror_pass():
    config = TrainConfig(image_size=32, jigsaw=True, inpaint=True, device="cpu")
    parts = build_parts(config, 8, 3, torch.device("cpu"))
    model = _Recorder(build_model(config, 3, parts))
    x = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    forward_with_aux(model, x, parts, torch.Generator().manual_seed(0))
    model.eval()
    crops = torch.randint(0, 255, (4, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        _eval_outputs(model, crops, config, parts, flip=True, channels_last=True)
    assert model.layouts == [True, True, True]  # the concatenated batch, the image, its mirror


def test_cuda_backend_choices():
    assert cuda_backend_flags(TrainConfig()) == {"cudnn_benchmark": True, "cudnn_tf32": True, "matmul_tf32": False}
    assert cuda_backend_flags(TrainConfig(amp="off"))["cudnn_tf32"] is False


# --- torch.compile ---------------------------------------------------------------------------------

def test_step_layout_fills_a_short_step_with_the_epochs_first_samples():
    pos, steps, fresh = step_layout([(0, 4), (4, 8), (8, 10)], fixed=True)
    assert steps == [(0, 4), (4, 8), (8, 12)] and fresh == [4, 4, 2]
    assert pos.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    pos, steps, fresh = step_layout([(0, 4), (4, 9)], fixed=False)
    assert pos.tolist() == list(range(9)) and steps == [(0, 4), (4, 9)] and fresh == [4, 5]


def _tables(res):
    return {"labels": res.labels, "mean_probs": res.mean_probs, **res.dynamics}


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("FERCURE_SLOW_TESTS"),
                    reason="torch.compile on the 2-core CPU takes minutes (8 under load); set FERCURE_SLOW_TESTS=1 "
                           "(benchmarks/gpu_check.sh does)")
def test_compiled_fit_gives_the_tables_of_an_eager_one(monkeypatch):
    """One epoch, 22 samples in steps of 8 (the last filled from 6 to 8), compiled by inductor
    (gcc) vs the same fit with torch.compile replaced by the identity: the same tables within
    1e-4 (inductor fuses and reorders float sums)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (22, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 22)
    config = TrainConfig(backbone="test_resnet", image_size=32, epochs=1, batch_size=8, device="cpu",
                         compile=True, knn=0)
    compiled = fit(images, labels, ["a", "b", "c"], config)
    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)
    eager = fit(images, labels, ["a", "b", "c"], config)
    for key, want in _tables(eager).items():
        got = _tables(compiled)[key]
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got, want, atol=1e-4, err_msg=key)
        else:
            assert (got == want).all(), key
    assert (compiled.dynamics["p_given"] > 0).all()  # every sample recorded once, fill rows not lost


def test_compile_wraps_the_module_once_and_a_filled_step_records_each_sample_once(monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (22, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 22)
    wrapped = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: (wrapped.append((type(model).__name__, kw)), model)[1])
    res = fit(images, labels, ["a", "b", "c"], TrainConfig(backbone="test_resnet", image_size=32, epochs=2,
                                                           batch_size=8, device="cpu", compile=True, knn=0))
    assert wrapped == [("FerNet", {"dynamic": False})]  # the module, not a DDP wrapper; fixed shapes
    # the mean of the epochs' probabilities sums to one per sample: none added twice, none missed
    np.testing.assert_allclose(res.mean_probs.sum(1), 1.0, atol=1e-5)
    assert (res.dynamics["p_given"] > 0).all()


# --- checkpoints ---------------------------------------------------------------------------------

def test_finished_fits_are_written_once_not_with_every_epoch(tmp_path, monkeypatch):
    """A 2-member run: once member 0 is finished, every later checkpoint names its record (written
    once to fits/g0m0.pt) instead of pickling its embeddings again; --resume reads the file."""
    from test_train_stage import make_workspace

    from fercure.stages import train as st

    saved: list[dict] = []
    real_save = st._save_checkpoint
    monkeypatch.setattr(st, "_save_checkpoint", lambda path, ckpt: (saved.append(ckpt), real_save(path, ckpt)))
    written: list[str] = []
    real_torch_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (written.append(str(f)), real_torch_save(obj, f, *a, **k)))
    ws = make_workspace(tmp_path / "ws")
    cfg = TrainConfig(backbone="test_resnet", image_size=24, epochs=2, batch_size=16, device="cpu",
                      ensemble=2, retrain=False, knn=3)

    class Stop(Exception):
        pass

    def stop_after_g1(ckpt):  # interrupt member 1 after its first epoch
        if ckpt["current"] and ckpt["current"]["key"] == "g0m1":
            raise Stop
    monkeypatch.setattr(st, "_save_checkpoint",
                        lambda path, ckpt: (saved.append(ckpt), real_save(path, ckpt), stop_after_g1(ckpt)))
    with pytest.raises(Stop):
        st.run_train(ws, cfg)
    later = [c for c in saved if "g0m0" in c["done"]]
    assert later and all(c["done"]["g0m0"] == st.FIT_FILE for c in later)
    assert sum(".g0m0.pt." in w for w in written) == 1  # the record's one write (a temp file, renamed)
    run_dir = next((ws.runs_dir).iterdir())
    assert (run_dir / "fits" / "g0m0.pt").exists()

    monkeypatch.setattr(st, "_save_checkpoint", real_save)
    summary = st.run_train(ws, cfg, resume=True)
    assert summary.run_dir == run_dir and (run_dir / "predictions.parquet").exists()
    assert not (run_dir / "fits").exists() and not (run_dir / "checkpoint.pt").exists()


# --- two gloo ranks ------------------------------------------------------------------------------

def _two_rank_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from fercure.train import distributed as dd

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    world = dd.World(rank, 2)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 24, 24, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 40)
    res = fit(images, labels, ["a", "b", "c"], TrainConfig(backbone="test_resnet", image_size=24, epochs=1,
                                                           batch_size=8, device="cpu", knn=0))
    emb = rng.normal(size=(90, 6)).astype(np.float32)
    reduces = []
    real = dist.all_reduce
    dist.all_reduce = lambda *a, **k: (reduces.append(1), real(*a, **k))[1]
    try:
        rows = torch.tensor([4, 7, 1, 2, 9, 6, 3])
        own = dd.owned_mask(rows, world)
        gathered = dd.gather_rows({"x": rows[own].float().view(-1, 1).repeat(1, 3), "f": own[own]},
                                  dd.owner_of(rows, world), world)
        knn = sg.knn_label_distribution(emb, np.arange(90) % 4, 4, k=5, chunk=16, device="cpu")
    finally:
        dist.all_reduce = real
    torch.save({"buffers": {k: v for k, v in res.model.state_dict().items() if "running" in k},
                "gathered": gathered, "knn": torch.from_numpy(knn), "reduces": len(reduces)}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_two_gloo_ranks_share_bn_buffers_gather_rows_and_split_the_knn(tmp_path):
    """After a 2-rank fit both ranks hold rank 0's batch-norm statistics (what model.pt holds);
    gather_rows puts every rank's rows in sample order with all_gather (no all_reduce); the kNN
    split over the ranks' query chunks gives the one-process votes."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_two_rank_worker, args=(port, str(tmp_path / "res")), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"res.{r}", weights_only=True) for r in (0, 1))
    assert r0["buffers"] and all(torch.equal(r0["buffers"][k], r1["buffers"][k]) for k in r0["buffers"])
    rows = torch.tensor([4, 7, 1, 2, 9, 6, 3]).float()
    emb = np.random.default_rng(0)
    emb.integers(0, 255, (40, 24, 24, 3), dtype=np.uint8), emb.integers(0, 3, 40)  # the worker's draws
    one = sg.knn_label_distribution(emb.normal(size=(90, 6)).astype(np.float32), np.arange(90) % 4, 4, k=5,
                                    chunk=16, device="cpu")
    for r in (r0, r1):
        assert torch.equal(r["gathered"]["x"], rows.view(-1, 1).repeat(1, 3))
        assert r["gathered"]["f"].dtype == torch.bool and bool(r["gathered"]["f"].all())
        assert r["reduces"] == 0
        np.testing.assert_allclose(r["knn"].numpy(), one, atol=1e-6)

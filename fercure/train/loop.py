"""The training loop: a plain cross-entropy core that records per-sample dynamics, with the
method parts (``fercure.train.parts``) plugged in through their hooks.

Read top to bottom: ``fit`` uploads the uint8 store to the device once, then for every epoch draws
a permutation, and for every batch gathers crops from the device store, augments them on the
device, runs the model (backbone under bf16 autocast where enabled, heads in fp32), takes an
optimiser step, and writes the batch's per-sample statistics (p(label), margin, prediction, SCN α,
relabel events) into device tensors. Nothing inside the step waits for the device; the statistics
come to the host once per epoch.

Everything a resumed fit needs lives in one ``FitState`` (model, optimiser, random streams,
current labels, running sums, dynamics, part states), saved after every epoch; on CPU a resumed
fit is bit-identical to an uninterrupted one.

Under torchrun (``fercure.train.distributed``) the same loop runs data-parallel: the model is
wrapped in DistributedDataParallel (one forward of the wrapped model per step), each rank trains
the samples it owns in the shared permutation's order, and once per epoch the per-sample tensors
are merged so every rank holds the whole of them. The crops come from a ``fercure.train.device_store``
store: resident on the device, or streamed from the memory map when they do not fit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from fercure.device import resolve_device
from fercure.progress import NULL, Reporter
from fercure.train import augment
from fercure.train import distributed as dd
from fercure.train.config import TrainConfig
from fercure.train.device_store import open_crop_store
from fercure.train.model import FerNet, build_model
from fercure.train.parts import Part, Step, build_parts
from fercure.errors import TrainingDivergedError  # noqa: F401  (re-exported)

DYNAMICS_KEYS = ("p_given", "margin", "alpha", "predicted", "current_index", "relabeled")


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Batch [start, end) pairs covering all n samples; a last batch of one sample is merged into
    the previous one (batch norm and the rank split need at least two)."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < 2:
        last = bounds.pop()
        bounds[-1] = (bounds[-1][0], last[1])
    return bounds


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up, then cosine decay to 1% of the peak (per optimiser step)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


def make_optimizer(model: FerNet, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # No weight decay on biases, norms, anchors and memory tokens (anchors are compared by cosine;
    # decay would only shrink them and raise their effective learning rate).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(("anchors", "memory")) else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kw: dict[str, Any] = {"lr": config.lr}
    if device.type == "cuda":
        kw["fused"] = True
    return torch.optim.AdamW(groups, **kw)


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast for the backbone: on CUDA by default, on CPU only with amp='bf16'. A dtype,
    not a context factory: FerNet enters ``torch.autocast`` itself, which torch.compile traces."""
    if config.amp == "off" or (config.amp == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def cuda_backend_flags(config: TrainConfig) -> dict[str, bool]:
    """The CUDA library choices a fit makes. cudnn.benchmark: the training batches have one shape
    (two with a short last batch), so the autotuned convolution pays off from the first epoch.
    TF32: convolutions may use it when the backbone runs under bf16 autocast anyway (it only
    touches what autocast leaves in fp32); never for matmuls, so the fp32 heads (and every
    probability) match the CPU path; and nowhere with amp='off', which asks for fp32."""
    return {"cudnn_benchmark": True, "cudnn_tf32": config.amp != "off", "matmul_tf32": False}


def apply_cuda_backend_flags(flags: dict[str, bool]) -> None:
    torch.backends.cudnn.benchmark = flags["cudnn_benchmark"]
    torch.backends.cudnn.allow_tf32 = flags["cudnn_tf32"]
    torch.backends.cuda.matmul.allow_tf32 = flags["matmul_tf32"]


def step_layout(bounds: list[tuple[int, int]], fixed: bool) -> tuple[np.ndarray, list[tuple[int, int]], list[int]]:
    """Positions into an epoch's order for every step, the steps' [start, end) in that list, and
    how many of each step's rows are new this epoch.

    With ``fixed`` (torch.compile, which would otherwise compile once more for a short batch)
    every step has the widest step's size: a short step is filled with the epoch's first samples,
    trained once more but not recorded again (the fill rows sit after the new ones). Without it
    the positions are the order itself."""
    width = max((e - s for s, e in bounds), default=0)
    pos, out, fresh, at = [], [], [], 0
    for s, e in bounds:
        pad = width - (e - s) if fixed else 0  # pad < width <= the epoch's sample count
        pos.append(np.concatenate([np.arange(s, e), np.arange(pad)]))
        out.append((at, at + e - s + pad))
        fresh.append(e - s)
        at += e - s + pad
    return (np.concatenate(pos) if pos else np.zeros(0, np.int64)).astype(np.int64), out, fresh


def with_format_of(y: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``y`` in channels_last when ``ref`` is (torch.cat of mixed layouts and torch.flip return
    the default layout, and the backbone's convolutions would convert back on every call)."""
    if ref.dim() == 4 and not ref.is_contiguous() and ref.is_contiguous(memory_format=torch.channels_last):
        return y.contiguous(memory_format=torch.channels_last)
    return y


@dataclass
class FitResult:
    model: FerNet
    classes: list[str]
    labels: np.ndarray  # (N,) current labels after SCN relabelling
    relabel_count: np.ndarray  # (N,)
    dynamics: dict[str, np.ndarray]  # each (E,N): DYNAMICS_KEYS (+ p_given_eval with epoch_eval)
    mean_probs: np.ndarray  # (N,C) mean over epochs of the training-time probabilities
    parts: list[Part] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    device: str = "cpu"
    seconds: float = 0.0  # wall time of the training epochs
    images_per_s: float = 0.0

    @property
    def final_train_accuracy(self) -> float:
        return float(self.history[-1]["train_accuracy"]) if self.history else float("nan")


class FitState:
    """Everything a fit carries from one epoch to the next, with one save/load pair."""

    def __init__(self, model: FerNet, opt: torch.optim.Optimizer, gen: torch.Generator,
                 parts: list[Part], labels: torch.Tensor, n_classes: int, *, device: torch.device,
                 aug_gen: torch.Generator | None = None, world: dd.World = dd.SINGLE) -> None:
        n = int(labels.numel())
        self.model, self.opt, self.gen, self.parts = model, opt, gen, parts
        # One process draws permutation and augmentation from one stream; under data parallelism
        # the permutation stream is shared by all ranks and each rank augments from its own.
        self.aug_gen = gen if aug_gen is None else aug_gen
        self.device, self.world = device, world
        self.current = labels.clone()
        self.relabel_count = torch.zeros(n, dtype=torch.long, device=device)
        self.sum_probs = torch.zeros(n, n_classes, dtype=torch.float32, device=device)
        self.dyn: dict[str, list[np.ndarray]] = {}
        self.history: list[dict[str, float]] = []
        self.epoch = -1  # last finished epoch
        self.train_seconds, self.seen = 0.0, 0

    def save(self, seed: int) -> dict[str, Any]:
        """A CPU snapshot (torch-saveable with weights_only=True); the live tensors keep training."""
        cuda = self.device.type == "cuda"
        return {
            "epoch": self.epoch, "model": _snapshot(self.model.state_dict()),
            "optimizer": _snapshot(self.opt.state_dict()),
            "generator": self.gen.get_state(), "cpu_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if cuda else None,
            "current": _snapshot(self.current), "relabel_count": _snapshot(self.relabel_count),
            "sum_probs": _snapshot(self.sum_probs),
            "parts": {p.name: _snapshot(p.state()) for p in self.parts},
            # tensors, not numpy arrays, so the checkpoint loads with weights_only=True
            "dynamics": {k: [torch.from_numpy(a) for a in v] for k, v in self.dyn.items()},
            "history": list(self.history), "train_seconds": self.train_seconds, "seen": self.seen,
            "seed": seed, "n": int(self.current.numel()),
            **self._rank_streams(),
        }

    def _rank_streams(self) -> dict[str, Any]:
        """Each rank's own random streams (collective: every rank calls it), so a resume with the
        same number of ranks continues exactly; nothing in a single process."""
        if not self.world.distributed:
            return {}
        cuda = self.device.type == "cuda"
        mine = {"aug_generator": self.aug_gen.get_state(), "cpu_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.device) if cuda else None}
        return {"world_size": self.world.size, "ranks": dd.all_gather_object(mine, self.world)}

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"].to(self.gen.get_state().device))
        torch.set_rng_state(state["cpu_rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        # copies: these are updated in place and must not alter the caller's state
        self.current = state["current"].to(self.device, copy=True)
        self.relabel_count = state["relabel_count"].to(self.device, copy=True)
        self.sum_probs = state["sum_probs"].to(self.device, copy=True)
        for p in self.parts:
            p.load_state(state.get("parts", {}).get(p.name, {}))
        self.dyn = {k: [torch.as_tensor(a).numpy() for a in v] for k, v in state["dynamics"].items()}
        self.history = list(state["history"])
        self.train_seconds, self.seen = state["train_seconds"], state["seen"]
        self.epoch = int(state["epoch"])
        ranks = state.get("ranks")
        if self.world.distributed and ranks and len(ranks) == self.world.size:
            mine = ranks[self.world.rank]
            self.aug_gen.set_state(mine["aug_generator"].to(self.aug_gen.get_state().device))
            torch.set_rng_state(mine["cpu_rng"])
            if self.device.type == "cuda" and mine.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(mine["cuda_rng"], self.device)
        # Another number of ranks: the shared permutation stream continues, each rank's
        # augmentation stream starts from its seed (training continues, not bit for bit).


def fit(images: Any, labels: Any, classes: list[str], config: TrainConfig, *,
        index: np.ndarray | None = None, seed: int | None = None,
        soft_targets: np.ndarray | torch.Tensor | None = None,
        vote_targets: np.ndarray | torch.Tensor | None = None,
        record_labels: Any = None,
        resume_state: dict[str, Any] | None = None,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
        reporter: Reporter = NULL, description: str = "train") -> FitResult:
    """Train one model.

    Parameters
    ----------
    images : (N,S,S,3) uint8 array, memory map, a uint8 tensor already on the device, or a
        ``fercure.train.device_store`` store (what a run shares between its fits).
    labels : (N,) integer training labels (indices into ``classes``), indexed by store row.
    index : store rows to train on (default all); dynamics are returned for these rows.
    seed : overrides ``config.seed`` (ensemble members, folds).
    soft_targets : (len(index),C) teacher probabilities for a distillation student.
    vote_targets : (len(index),C) the annotators' vote distribution (``config.soft_labels``).
    record_labels : (N,) labels whose p(label) the dynamics record (default ``labels``).
    resume_state : a state passed to ``on_epoch_end`` earlier; training continues after its epoch.
    on_epoch_end : called with a checkpoint state (torch-saveable dict) after every epoch (on
        rank 0 only under data parallelism; every rank takes part in building the state).

    Under an initialised process group every rank calls ``fit`` with the same arguments and gets
    the same, whole result.
    """
    seed = config.seed if seed is None else seed
    config = config.at_size(_store_side(images))
    run = _start(images, labels, classes, config, index=index, seed=seed, soft_targets=soft_targets,
                 record_labels=record_labels, vote_targets=vote_targets)
    if resume_state is not None:
        run.st.load(resume_state)
    bar = reporter.task(description, total=config.epochs)
    bar.advance(run.st.epoch + 1)
    for epoch in range(run.st.epoch + 1, config.epochs):
        t0 = time.perf_counter()
        ep, loss_sum, correct = _train_epoch(run, epoch)
        if run.world.distributed:
            loss_sum, correct = _merge_ranks(run, ep, loss_sum, correct)
        host = _record_dynamics(run, ep)
        epoch_loss = float(loss_sum) / run.n  # the epoch's one sync already happened in _record_dynamics
        _check_finite(epoch_loss, host, epoch, description, config)
        _log_epoch(run, epoch, epoch_loss, correct, host, time.perf_counter() - t0)
        _checkpoint(run, seed, on_epoch_end)
        bar.advance(1)  # after the checkpoint: a bar at k means k epochs are safe on disk
    bar.close()
    if run.store is not images:
        run.store.close()
    return _result(run, classes)


@dataclass
class _Run:
    """What one fit's epochs share: the data, the model and its wrapped training form, the parts,
    the state that is checkpointed (``st``) and the step schedule."""
    config: TrainConfig
    world: dd.World
    device: torch.device
    store: Any
    rows: torch.Tensor  # store rows trained on, in fit position order
    rec_y: torch.Tensor  # labels whose p(label) the dynamics record
    parts: list[Part]
    model: FerNet
    step_model: Any  # the model as a training step calls it (compiled, DDP-wrapped)
    st: FitState
    own: torch.Tensor  # fit positions this rank trains (all in one process)
    bounds: list[tuple[int, int]]
    steps: list[tuple[int, int]]
    fresh: list[int]
    positions: torch.Tensor
    ce_weight: float

    @property
    def n(self) -> int:
        return int(self.rows.numel())


def _start(images: Any, labels: Any, classes: list[str], config: TrainConfig, *, index: Any, seed: int,
           soft_targets: Any, record_labels: Any, vote_targets: Any = None) -> _Run:
    """Open the store, build parts, model, optimiser, random streams and the step schedule."""
    world = dd.current()
    device = dd.rank_device(resolve_device(config.device), world)
    store = open_crop_store(images, device, config.store, world)
    rows = torch.arange(store.shape[0], device=device) if index is None else \
        torch.tensor(np.asarray(index, dtype=np.int64), device=device)
    n, c = int(rows.numel()), len(classes)
    train_y = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)[rows]
    rec_y = train_y if record_labels is None else \
        torch.as_tensor(np.asarray(record_labels), dtype=torch.long, device=device)[rows]
    soft = None if soft_targets is None else torch.as_tensor(soft_targets, dtype=torch.float32,
                                                              device=device)

    torch.manual_seed(seed)  # model init and dropout
    votes = None if vote_targets is None else torch.as_tensor(vote_targets, dtype=torch.float32, device=device)
    parts = build_parts(config, n, c, device, soft_targets=soft, vote_targets=votes)
    model, step_model, opt = _build_model(config, c, parts, device, world)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed + 7919)  # augmentation + permutation stream, separate from init
    aug_gen = None
    if world.distributed:
        aug_gen = torch.Generator(device=device)
        aug_gen.manual_seed(seed + 7919 + 1_000_003 * (world.rank + 1))
    st = FitState(model, opt, gen, parts, train_y, c, device=device, aug_gen=aug_gen, world=world)
    own, bounds = _rank_bounds(rows, n, config, world)
    positions, steps, fresh = step_layout(bounds, fixed=config.compile)
    positions = torch.from_numpy(positions).to(device)  # once per fit: the same every epoch
    return _Run(config=config, world=world, device=device, store=store, rows=rows, rec_y=rec_y, parts=parts,
                model=model, step_model=step_model, st=st, own=own, bounds=bounds, steps=steps, fresh=fresh,
                positions=positions, ce_weight=math.prod(p.ce_weight for p in parts))


def _build_model(config: TrainConfig, c: int, parts: list[Part], device: torch.device, world: dd.World
                 ) -> tuple[FerNet, Any, torch.optim.Optimizer]:
    """The model (with the parts' heads), its optimiser, and the form a training step calls."""
    model = build_model(config, c, parts).to(device)
    model.amp = autocast_dtype(config, device)
    cuda = device.type == "cuda"
    if cuda:
        apply_cuda_backend_flags(cuda_backend_flags(config))
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, config, device)
    step_model: Any = model
    if config.compile:
        # Compiled once, around the module: the raw model (its state_dict, predict, the saved
        # model.pt) stays eager; every training step has one shape (step_layout), so one graph.
        step_model = torch.compile(model, dynamic=False)
    if world.distributed:  # broadcasts rank 0's weights, then averages gradients every step
        step_model = torch.nn.parallel.DistributedDataParallel(
            step_model, device_ids=[device.index] if cuda else None)
    return model, step_model, opt


def _rank_bounds(rows: torch.Tensor, n: int, config: TrainConfig, world: dd.World
                 ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The fit positions this rank owns and its batches' [start, end) over them."""
    own = dd.owned_mask(rows, world)  # all True in one process
    if world.distributed:
        counts = dd.rank_counts(rows.cpu().numpy(), world.size)
        bounds = dd.rank_steps(int(counts[world.rank]), dd.steps_per_epoch(n, config.batch_size, counts))
    elif config.compile:  # a short last batch is filled to full size (step_layout), not merged
        bounds = [(s, min(s + config.batch_size, n)) for s in range(0, n, config.batch_size)]
    else:
        bounds = batch_bounds(n, config.batch_size)
    return own, bounds


def _train_epoch(run: _Run, epoch: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """One pass over this rank's samples; returns the epoch's per-sample statistics (device
    tensors), the summed loss and the count of correct predictions."""
    st, n, device, config = run.st, run.n, run.device, run.config
    run.model.train()
    perm = torch.randperm(n, generator=st.gen, device=device)
    order = perm[run.own[perm]] if run.world.distributed else perm  # this rank's samples, shared order
    order = order[run.positions]  # the identity unless short steps are filled (step_layout)
    ep = {
        "p_given": torch.zeros(n, device=device), "margin": torch.zeros(n, device=device),
        "alpha": torch.ones(n, device=device),
        "predicted": torch.zeros(n, dtype=torch.long, device=device),
        "relabeled": torch.zeros(n, dtype=torch.bool, device=device),
    }
    sums = [torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device)]
    total_steps = config.epochs * len(run.bounds)
    warmup = max(1, min(len(run.bounds), total_steps // 10))
    aug = augment.AugmentConfig(erase_p=config.erase_p)
    batches = run.store.batches(run.rows[order], run.steps)
    for b, ((s, e), m, crops) in enumerate(zip(run.steps, run.fresh, batches)):
        for g in st.opt.param_groups:
            g["lr"] = lr_at(epoch * len(run.bounds) + b, total_steps, warmup, config.lr)
        x = augment.train_batch(crops, config.image_size, st.aug_gen, aug, run.model.mean, run.model.std)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        _train_step(run, x, order[s:e], m, epoch, ep, sums)
    return ep, sums[0], sums[1]


def _train_step(run: _Run, x: torch.Tensor, idx: torch.Tensor, m: int, epoch: int,
                ep: dict[str, torch.Tensor], sums: list[torch.Tensor]) -> None:
    """Forward, the core cross-entropy plus every part's terms, an optimiser step, then the batch's
    per-sample statistics and relabelling (its first ``m`` rows are new this epoch)."""
    st, parts = run.st, run.parts
    # pretext draws come from the rank's own stream: the shared one must stay in step
    out, aux = forward_with_aux(run.step_model, x, parts, st.aug_gen)
    weight = sample_weight(parts, out)
    step = Step(idx=idx, labels=st.current[idx], epoch=epoch, weight=None if weight is None else weight.detach(),
                fresh=m)
    z = out["logits"]
    for p in parts:
        z = p.transform_logits(out, z)
    loss = run.ce_weight * F.cross_entropy(z, step.labels, label_smoothing=run.config.label_smoothing)
    for p in parts:
        extra = p.loss(out, z, step)
        if extra is not None:
            loss = loss + extra
    for p, aux_out in aux:
        loss = loss + p.aux_loss(aux_out, step)
    st.opt.zero_grad(set_to_none=True)
    loss.backward()
    st.opt.step()

    with torch.no_grad():  # per-sample statistics of this (augmented) forward pass
        # fill rows (step_layout) are not recorded
        probs = torch.softmax(out["logits"].detach()[:m], dim=1)
        new_idx = idx[:m]
        _record(ep, new_idx, probs, run.rec_y[new_idx])
        if weight is not None:
            ep["alpha"][new_idx] = weight.detach()[:m]
        st.sum_probs[new_idx] += probs
        sums[0] += loss.detach() * m
        sums[1] += (probs.argmax(dim=1) == step.labels[:m]).sum()
        for p in parts:
            change = p.relabel(out, out["logits"], step)
            if change is not None:
                new, mask = change[0][:m], change[1][:m]
                st.current[new_idx] = new
                st.relabel_count[new_idx] += mask.long()
                ep["relabeled"][new_idx] |= mask


def _merge_ranks(run: _Run, ep: dict[str, torch.Tensor], loss_sum: torch.Tensor, correct: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's samples, whole on every rank, before the next epoch (``ep`` in place)."""
    st, own, world = run.st, run.own, run.world
    dd.sync_buffers(run.model, world)  # rank 0's BN statistics: what model.pt and checkpoints hold
    for k in list(ep):
        ep[k] = dd.merge_owned(ep[k], own, world)
    st.current = dd.merge_owned(st.current, own, world)
    st.relabel_count = dd.merge_owned(st.relabel_count, own, world)
    st.sum_probs = dd.merge_owned(st.sum_probs, own, world)
    for p in run.parts:
        for t in p.per_sample_state().values():
            t.copy_(dd.merge_owned(t, own, world))
    return dd.all_sum(loss_sum, world), dd.all_sum(correct, world)


def _record_dynamics(run: _Run, ep: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The epoch's statistics to the host, appended to the fit's dynamics (one host copy per
    epoch: also the epoch's only synchronisation)."""
    st, n = run.st, run.n
    host = {k: v.cpu().numpy() for k, v in ep.items()}
    host["current_index"] = st.current.cpu().numpy().copy()  # on CPU .cpu() aliases `current`
    if run.config.epoch_eval:
        pe = predict(run.model, run.store, run.config, index=run.rows.cpu().numpy(), flip=True)["probs"]
        host["p_given_eval"] = pe[np.arange(n), run.rec_y.cpu().numpy()]
    for k, v in host.items():
        st.dyn.setdefault(k, []).append(v.astype(np.float32) if v.dtype.kind == "f" else v)
    return host


def _check_finite(epoch_loss: float, host: dict[str, np.ndarray], epoch: int, description: str,
                  config: TrainConfig) -> None:
    if not math.isfinite(epoch_loss) or not np.isfinite(host["p_given"]).all():
        raise TrainingDivergedError(
            f"Training diverged in epoch {epoch + 1} of {description!r} (the loss is {epoch_loss}): every "
            f"prediction after this is NaN, so there is nothing to audit. Lower the learning rate "
            f"(--lr, now {config.lr:g}) and start a new run.")


def _log_epoch(run: _Run, epoch: int, epoch_loss: float, correct: torch.Tensor, host: dict[str, np.ndarray],
               secs: float) -> None:
    """The epoch's history record, and the finished epoch in the fit state."""
    st, n = run.st, run.n
    st.train_seconds += secs
    st.seen += n
    st.epoch = epoch
    rec = {"epoch": epoch, "loss": epoch_loss, "train_accuracy": float(correct) / n,
           "relabeled": int(host["relabeled"].sum()), "seconds": secs, "images_per_s": n / secs}
    for p in run.parts:
        rec.update(p.epoch_record())
    st.history.append(rec)


def _checkpoint(run: _Run, seed: int, on_epoch_end: Callable[[dict[str, Any]], None] | None) -> None:
    if on_epoch_end is not None:
        state = run.st.save(seed)  # collective under data parallelism: every rank builds it
        if run.world.main:
            on_epoch_end(state)


def _result(run: _Run, classes: list[str]) -> FitResult:
    st = run.st
    epochs_done = max(1, len(st.dyn.get("p_given", [])))
    return FitResult(
        model=run.model, classes=list(classes), labels=st.current.cpu().numpy(),
        relabel_count=st.relabel_count.cpu().numpy(),
        dynamics={k: np.stack(v) for k, v in st.dyn.items()},
        mean_probs=(st.sum_probs / epochs_done).cpu().numpy(), parts=run.parts, history=st.history,
        device=str(run.device), seconds=st.train_seconds,
        images_per_s=st.seen / st.train_seconds if st.train_seconds > 0 else 0.0)


def sample_weight(parts: list[Part], out: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The batch's per-sample weights: the product of what the parts give (None: all 1)."""
    weight = None
    for p in parts:
        w = p.sample_weight(out)
        if w is not None:
            weight = w if weight is None else weight * w
    return weight


def forward_with_aux(model: Any, x: torch.Tensor, parts: list[Part], gen: torch.Generator
                     ) -> tuple[dict[str, torch.Tensor], list[tuple[Part, dict[str, torch.Tensor]]]]:
    """One forward pass over the batch and every part's pretext inputs concatenated; returns the
    batch's outputs and each part's own rows of the outputs, with the targets its ``aux_inputs``
    made for them (so a part keeps nothing on itself between the two hooks)."""
    made = [(p, p.aux_inputs(x, gen)) for p in parts]
    extra = [(p, a[0], a[1]) for p, a in made if a is not None]
    if not extra:
        return model(x), []
    out_all = model(with_format_of(torch.cat([x] + [a for _, a, _ in extra]), x))
    bounds, at = [], x.shape[0]
    for p, a, targets in extra:
        bounds.append((p, at, at + a.shape[0], targets))
        at += a.shape[0]
    b = x.shape[0]
    out = {k: v[:b] for k, v in out_all.items()}
    return out, [(p, {**{k: v[s:e] for k, v in out_all.items()}, **targets}) for p, s, e, targets in bounds]


def _record(ep: dict[str, torch.Tensor], idx: torch.Tensor, probs: torch.Tensor, y: torch.Tensor) -> None:
    p_y = probs.gather(1, y.view(-1, 1)).squeeze(1)
    others = probs.scatter(1, y.view(-1, 1), -1.0).amax(dim=1)
    ep["p_given"][idx] = p_y
    ep["margin"][idx] = p_y - others
    ep["predicted"][idx] = probs.argmax(dim=1)


def _snapshot(obj: Any) -> Any:
    """Deep copy of a (nested) state dict with every tensor cloned to the CPU."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_snapshot(v) for v in obj)
    return obj


@torch.no_grad()
def predict(model: FerNet, images: Any, config: TrainConfig, *, index: np.ndarray | None = None,
            batch_size: int | None = None, device: torch.device | None = None,
            parts: list[Part] | None = None, flip: bool = False) -> dict[str, np.ndarray]:
    """Eval-mode pass without augmentation. Returns numpy arrays for the selected rows: logits,
    probs (N,C), embedding (N,D), and what the given parts add (SCN alpha; ARBEx rel_probs,
    reliability). With ``flip`` the logits and embedding are averaged over the image and its
    mirror image (faces are near-symmetric, so this halves the variance for free).

    Under data parallelism each rank scores the rows it owns and every rank gets all of them."""
    world = dd.current()
    device = device or next(model.parameters()).device
    config = config.at_size(_store_side(images))
    store = open_crop_store(images, device, config.store, world)
    rows = torch.arange(store.shape[0], device=device) if index is None else \
        torch.tensor(np.asarray(index, dtype=np.int64), device=device)
    own = dd.owned_mask(rows, world)
    mine = rows[own] if world.distributed else rows
    bs = batch_size or config.eval_batch_size
    was_training = model.training
    model.eval()
    outs: dict[str, list[torch.Tensor]] = {}
    bounds = batch_bounds(int(mine.numel()), bs)
    for crops in store.batches(mine, bounds):
        for k, v in _eval_outputs(model, crops, config, parts, flip).items():
            outs.setdefault(k, []).append(v)
    if not bounds:  # a rank that owns none of the rows still joins the gather, with 0 rows
        blank = torch.zeros((1,) + tuple(store.shape[1:]), dtype=torch.uint8, device=device)
        outs = {k: [v[:0]] for k, v in _eval_outputs(model, blank, config, parts, flip).items()}
    model.train(was_training)
    if store is not images:
        store.close()
    cat = {k: torch.cat(v) for k, v in outs.items()}
    if world.distributed:
        cat = dd.gather_rows(cat, dd.owner_of(rows, world), world)
    res_np = {k: v.cpu().numpy() for k, v in cat.items()}
    res_np["probs"] = F.softmax(torch.from_numpy(res_np["logits"]), dim=1).numpy()
    return res_np


def _store_side(images: Any) -> int:
    """The side of the store's square crops ((N,S,S,3)): the training size when none is set."""
    return int(images.shape[1])


def _eval_outputs(model: FerNet, crops: torch.Tensor, config: TrainConfig, parts: list[Part] | None,
                  flip: bool, channels_last: bool | None = None) -> dict[str, torch.Tensor]:
    x = augment.eval_batch(crops, config.image_size, getattr(model, "mean", augment.MEAN),
                           getattr(model, "std", augment.STD))
    if crops.device.type == "cuda" if channels_last is None else channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = model(x)
    if flip:
        mirrored = model(with_format_of(torch.flip(x, dims=[3]), x))
        out = {k: (v + mirrored[k]) / 2 if v.is_floating_point() else v for k, v in out.items()}
    res = {"logits": out["logits"], "embedding": out["embedding"]}
    for p in parts or []:
        res.update(p.predict(out))
    return {k: v.float() for k, v in res.items()}

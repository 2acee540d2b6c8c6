"""Stage 2: train. WS/manifest.parquet + WS/faces/crops.npy → WS/runs/<run_id>/.

Files of a run:
  config.json        TrainConfig + classes + run facts (written first)
  checkpoint.pt      after every epoch: the running fit's full state + which fits are finished
  fits/<key>.pt      a finished fit's results (predictions, embeddings, dynamics: a
                     fercure.train.records.FitRecord), written once when it finishes
                     (checkpoint.pt and fits/ go when the run finishes)
  model.pt           state_dict of the (first) final model, loadable with weights_only=True
  members/<key>.pt   state_dicts of further final-generation ensemble members
  dynamics.parquet   per sample × epoch × member (docs/ARCHITECTURE.md)
  predictions.parquet per sample (docs/ARCHITECTURE.md); its presence marks the run finished
  metrics.json       per-epoch loss/accuracy/throughput of every fit
then WS/runs/LATEST points at the run.

Under torchrun every rank runs this stage with the same arguments: rank 0 decides the run id and
writes every file (atomically); all ranks train every fit together (fercure.train.distributed) and
hold the same results, so the aggregate is computed alike everywhere and written once.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fercure import __version__, schema
from fercure import trusted as trusted_labels
from fercure import votes as vote_files
from fercure.annotators import vote_shares
from fercure.photos import require_labels
from fercure.progress import NULL, Reporter
from fercure.train import detection as det
from fercure.train import distributed as dd
from fercure.train import dynamics as dyn
from fercure.train import ensemble as ens
from fercure.train.config import TrainConfig
from fercure.train.parts import part_names
from fercure.train.device_store import open_crop_store
from fercure.train.loop import fit, predict, resolve_device
from fercure.train.records import FitRecord
from fercure.workspace import (Workspace, WorkspaceError, atomic_path, atomic_write_json,
                               read_metadata, read_table, write_table)

EXCLUDED_STATUSES = set(schema.UNUSABLE_STATUSES)
CHECKPOINT_FORMAT = 2  # 2: the parts engine (0.2); a format-1 checkpoint cannot be resumed


@dataclass
class TrainSummary:
    run_id: str
    run_dir: Path
    n_samples: int
    epochs: int
    device: str
    seconds: float
    images_per_s: float
    final_train_accuracy: float
    relabeled: int  # samples whose SCN label differs from the given one
    classes: list[str] = field(default_factory=list)
    n_excluded: int = 0  # manifest rows not trained on (no crop, unreadable, duplicate, no label)
    members: int = 1
    generations: int = 0
    folds: int = 0
    temperature: float | None = None  # fitted on out-of-fold logits when folds > 0 (applied to oof_p_given)
    resumed: bool = False
    parts: list[str] = field(default_factory=list)  # method parts switched on (scn, arbex, elr, distill)
    probe_accuracy: float | None = None  # the first model's held-out accuracy on the probe (given labels)
    chance_accuracy: float | None = None  # the probe's most frequent class share
    planted_flips: int = 0  # labels flipped on purpose in the first model (never written anywhere)
    retrained_without: int = 0  # samples the second model did not train on (scored held out)
    reviewed: int = 0  # samples a --trusted file decided (dropped ones included)


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass
class _Data:
    sample_ids: list[str]
    rows: np.ndarray  # store rows of the trained samples
    given: np.ndarray  # class index per trained sample
    classes: list[str]
    store: np.ndarray  # memory-mapped (N,S,S,3)
    n_excluded: int


@dataclass(frozen=True)
class _Run:
    """What the steps of one training run share (as fercure.train.loop's _Run does for a fit): the
    workspace, the trained samples, the configuration, the process world, the reporter and the
    --trusted decisions; once the run is chosen (``started``), its id, its plan and its fits."""
    ws: Workspace
    config: TrainConfig
    data: _Data
    world: dd.World
    reporter: Reporter
    trusted: Any = None
    run_id: str = ""
    plan: det.RunPlan | None = None
    jobs: tuple[ens.Job, ...] = ()

    def started(self, run_id: str, config: TrainConfig, reviewed: np.ndarray) -> _Run:
        """This run under its id and (saved, when resumed) configuration, with its plan and fits."""
        plan = det.plan_run(self.data.given, len(self.data.classes), config, reviewed=reviewed)
        return replace(self, run_id=run_id, config=config, plan=plan, jobs=tuple(ens.plan_jobs(config)))

    @property
    def run_dir(self) -> Path:
        return self.ws.run_dir(self.run_id)

    def generation(self, done: dict[str, FitRecord], generation: int) -> list[FitRecord]:
        """The finished records of a generation's ensemble members, in member order."""
        return [done[ens.member_key(generation, i)] for i in range(self.config.ensemble)]


def _load_inputs(ws: Workspace, reporter: Reporter) -> _Data:
    ws.require(ws.manifest, "prepare")
    ws.require(ws.store, "prepare")
    df = read_table(ws.manifest)
    for col in ("sample_id", "label", "face_status", "store_index"):
        if col not in df.columns:
            raise WorkspaceError(f"{ws.manifest} has no column {col!r}; re-run `fercure prepare`.")
    require_labels(ws.manifest, "train", df)
    meta_classes = read_metadata(ws.manifest).get("classes")
    use = (df["store_index"].fillna(-1).astype(np.int64) >= 0) & ~df["face_status"].isin(EXCLUDED_STATUSES)
    labelled = df["label"].notna() & (df["label"].astype(str).str.len() > 0)
    if meta_classes:
        classes = [str(c) for c in meta_classes]
    else:
        classes = sorted(df.loc[labelled, "label"].astype(str).unique().tolist())
    known = df["label"].astype(str).isin(classes) & labelled
    unknown = use & ~known
    if unknown.any():
        bad = df.loc[unknown, "label"].astype(str).unique()[:5].tolist()
        reporter.log(f"train: {int(unknown.sum())} samples have no label or one outside the class list "
                     f"(e.g. {bad}); they are left out.")
    sel = df[use & known]
    if len(sel) == 0:
        raise WorkspaceError(f"{ws.manifest} has no sample with a face crop and a known label; "
                             "nothing to train on. Check `fercure prepare` output (face_status).")
    if len(classes) < 2:
        raise WorkspaceError(f"Training needs at least two classes; {ws.manifest} has {classes}.")
    store = np.load(ws.store, mmap_mode="r")
    if store.ndim != 4 or store.shape[-1] != 3 or store.dtype != np.uint8:
        raise WorkspaceError(f"{ws.store} is {store.dtype} {store.shape}, not uint8 (N,S,S,3); "
                             "re-run `fercure prepare`.")
    rows = sel["store_index"].astype(np.int64).to_numpy()
    if rows.max() >= store.shape[0]:
        raise WorkspaceError(f"{ws.manifest} points at crop {rows.max()} but {ws.store} holds "
                             f"{store.shape[0]}; the two files are out of step. Re-run `fercure prepare`.")
    index = {c: i for i, c in enumerate(classes)}
    given = sel["label"].astype(str).map(index).to_numpy().astype(np.int64)
    return _Data(sel["sample_id"].astype(str).tolist(), rows, given, classes, store,
                 int(len(df) - len(sel)))


def _load_trusted(ws: Workspace, files: list[str], classes: list[str], reporter: Reporter,
                  world: dd.World) -> Any:
    """The --trusted decisions, read and parsed once by rank 0 and handed to the other ranks: each
    rank reading the files itself would train on different tables if a file changed during start-up."""
    outcome: tuple[Any, str | None] = (None, None)
    if world.main:
        try:
            outcome = (trusted_labels.load(ws, files, classes, reporter), None)
        except WorkspaceError as e:
            if not world.distributed:
                raise
            outcome = (None, str(e))
    trusted, error = dd.broadcast_object(outcome, world)
    if error is not None:
        raise WorkspaceError(error)
    return trusted


# Samples a rank must own in a data-parallel run: batch norm needs two per step, and the probe,
# the folds and the retrain each take a share away.
MIN_PER_RANK = 8


def _check_trainable(ws: Workspace, data: _Data, dropped: bool, world: dd.World) -> None:
    """What is left to train after the --trusted drops (``dropped``: decisions were applied):
    samples of at least two classes (a classifier of one class learns nothing, and an empty run
    divides by zero), and a sample per rank."""
    counts = np.bincount(data.given, minlength=len(data.classes))
    left = [(c, int(n)) for c, n in zip(data.classes, counts) if n]
    why = ("the --trusted decisions leave" if dropped else f"{ws.manifest} leaves")
    if len(data.sample_ids) < 2 or len(left) < 2:
        shown = ", ".join(f"{n} {c}" for c, n in left) or "no sample"
        raise WorkspaceError(f"{why} {shown} to train on; training needs samples of at least two classes. "
                             "Drop fewer samples (check the --trusted files' drop rows), or add data.")
    own = dd.rank_counts(data.rows, world.size)
    if world.distributed and int(own.min()) < MIN_PER_RANK:
        fits = max(1, int(len(data.rows) // MIN_PER_RANK))
        raise WorkspaceError(
            f"{world.size} processes for {len(data.rows)} samples: each process trains on a share of its own, and "
            f"one would get {int(own.min())} (a batch needs {MIN_PER_RANK // 2}, every fit a few). Use --nproc "
            f"{min(fits, world.size - 1)} or fewer" + (" (or leave --nproc out)." if fits <= 1 else "."))


def _reviewed_digest(data: _Data, reviewed: np.ndarray) -> str:
    """The reviewed samples (never planted, never flagged) and their trained labels: what a resumed run must share."""
    h = hashlib.sha1()
    h.update("\n".join(s for s, r in zip(data.sample_ids, reviewed) if r).encode())
    h.update(data.given[reviewed].tobytes())
    return h.hexdigest()


def _fingerprint(data: _Data) -> str:
    h = hashlib.sha1()
    h.update("\n".join(data.sample_ids).encode())
    h.update(data.given.tobytes())
    h.update(data.rows.tobytes())
    h.update(json.dumps(data.classes).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Run directory bookkeeping


def _new_run_id(config: TrainConfig) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.backbone)
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{secrets.token_hex(2)}"


def check_resume_world(saved: dict[str, Any], size: int, run_id: str, root: Path) -> None:
    """A run resumes only with the number of processes it started with: each rank's sample share
    and random streams are in the checkpoint, so another count would continue neither run."""
    started = int(saved.get("world_size", 1) or 1)
    if started != size:
        how = "with `--nproc {0}`" if started > 1 else "in one process (without --nproc)"
        raise WorkspaceError(
            f"Run {run_id} was started {how.format(started)} and cannot be resumed with {size} "
            f"process{'es' if size != 1 else ''}: its checkpoint holds {started} rank(s)' state, so the result "
            f"would match neither run. Resume it with `fercure train -w {root} --resume"
            f"{f' --nproc {started}' if started > 1 else ''}`, or start a new run without --resume.")


def _unfinished_run(ws: Workspace) -> str | None:
    if not ws.runs_dir.exists():
        return None
    cands = [d for d in ws.runs_dir.iterdir()
             if d.is_dir() and (d / "checkpoint.pt").exists() and not (d / "predictions.parquet").exists()]
    if not cands:
        return None
    return max(cands, key=lambda d: (d / "checkpoint.pt").stat().st_mtime).name


def _log_epoch(reporter: Reporter, desc: str, state: dict[str, Any], epochs: int) -> None:
    """One line per finished epoch for a reporter that asks for them (output that is not a
    terminal, where a progress bar shows nothing until the end)."""
    if not getattr(reporter, "log_epochs", False) or not state.get("history"):
        return
    h = state["history"][-1]
    reporter.log(f"{desc}: epoch {h['epoch'] + 1}/{epochs} loss {h['loss']:.4f} "
                 f"accuracy {h['train_accuracy']:.3f} ({h['images_per_s']:.0f} images/s)")


def _save_checkpoint(path: Path, ckpt: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


class _CheckpointWriter:
    """Writes checkpoint.pt on a background thread, so the next epoch trains while the last one
    is written (a ResNet-18 + AdamW checkpoint is ~135 MB); one write in flight at most, and
    close() waits for it, also when training was interrupted."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fercure-ckpt")
        self.pending: Future | None = None

    def submit(self, ckpt: dict[str, Any]) -> None:
        self.wait()
        # shallow copies: the caller keeps mutating its dicts while this one is pickled
        snap = {**ckpt, "done": dict(ckpt["done"])}
        self.pending = self.pool.submit(_save_checkpoint, self.path, snap)

    def wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.pool.shutdown(wait=True)


class _NoWriter:
    """What ranks other than 0 hold in place of the checkpoint writer: rank 0 writes."""

    def submit(self, ckpt: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


FIT_FILE = "fits/"  # checkpoint["done"][key]: the finished fit's record is in runs/<id>/fits/<key>.pt


def _fit_file(run_dir: Path, key: str) -> Path:
    return run_dir / "fits" / f"{key}.pt"


def _done_record(run_dir: Path, key: str, value: Any, jobs: tuple[ens.Job, ...]) -> FitRecord:
    """A finished fit's record from a checkpoint: in its own file (written once when the fit
    finished), or inline (checkpoints written before fits had their own files). The file's name
    comes from the run's own job list, never from the checkpoint's text."""
    if value != FIT_FILE:
        try:
            return FitRecord.from_checkpoint(value)
        except ValueError as exc:
            raise WorkspaceError(f"{run_dir / 'checkpoint.pt'} holds a finished fit {key!r} that cannot be read "
                                 f"({exc}); start a new run without --resume.") from None
    if key not in {j.key for j in jobs}:
        raise WorkspaceError(f"{run_dir / 'checkpoint.pt'} names a finished fit {key!r} this run does not "
                             "have; start a new run without --resume.")
    path = _fit_file(run_dir, key)
    try:
        return FitRecord.from_checkpoint(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:
        raise WorkspaceError(f"{path} (finished fit {key} of this run) cannot be read ({exc}); "
                             "start a new run without --resume.") from exc


# ---------------------------------------------------------------------------------------------
# The stage


def run_train(workspace: Workspace | Path, config: TrainConfig, *, resume: bool = False,
              reporter: Reporter = NULL) -> TrainSummary:
    """Train on the workspace's crops and write a run (see module docstring).

    With ``resume=True`` the newest unfinished run (checkpoint.pt without predictions.parquet)
    continues from its last completed epoch with its own saved config; on CPU the result is
    identical to an uninterrupted run with the same seed. Without one, a new run starts, after
    removing earlier runs that failed before their first checkpoint.

    A run that fails (or is interrupted) with no checkpoint to resume from gets runs/<id>/FAILED,
    the error in one line, so a folder holding only config.json is never taken for a live run.

    Launched by torchrun (WORLD_SIZE > 1 in the environment), it joins the process group first
    (NCCL on CUDA, gloo on CPU) and trains data-parallel; every rank returns the same summary."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace(Path(workspace))
    world, created = dd.setup(resolve_device(config.device))
    started: list[str] = []
    try:
        return _run_train(ws, config, resume, reporter, started, world)
    except BaseException as exc:
        if started and world.main:
            ws.mark_run_failed(started[0], exc)
        raise
    finally:
        dd.teardown(created)


def _run_train(ws: Workspace, config: TrainConfig, resume: bool, reporter: Reporter,
               started: list[str], world: dd.World = dd.SINGLE) -> TrainSummary:
    """run_train's body; appends the run's id to ``started`` once its folder exists."""
    t_start = time.perf_counter()
    # A run killed mid-checkpoint (SIGTERM, SIGKILL) leaves runs/<id>/.checkpoint.pt.*.tmp. The CLI
    # holds the workspace lock here, so no temp file of a live command is taken for stale.
    if world.main:
        ws.remove_stale_temps()
    resolve_device(config.device)  # fail before a run folder exists when the device is missing
    data = _load_inputs(ws, reporter)
    config = config.at_size(data.store.shape[1])  # no size given: the crop store's (config.json records it)
    # Rank 0 picks the run (the others cannot see a folder it has not made yet, and a new id is random).
    run_id = _unfinished_run(ws) if resume and world.main else None
    run_id = dd.broadcast_object(run_id, world)
    resumed = run_id is not None
    if resumed:
        started.append(run_id)
        saved = json.loads((ws.run_dir(run_id) / "config.json").read_text())
        saved_trusted = TrainConfig.from_dict(saved).trusted
        if config.trusted and config.trusted != saved_trusted:
            raise WorkspaceError(
                f"--resume continues run {run_id} with the --trusted files it started with ("
                + (", ".join(saved_trusted) or "none") + f"); it cannot take {', '.join(config.trusted)} as well. "
                f"Resume without --trusted (`fercure train -w {ws.root} --resume`), or start a new run with the "
                "new file (without --resume).")
        trusted = _load_trusted(ws, saved_trusted, data.classes, reporter, world)  # the run's own files
        trusted_labels.check_unchanged(saved, trusted, run_id, ws.root)
    else:
        trusted = _load_trusted(ws, config.trusted, data.classes, reporter, world)
    data, reviewed = trusted_labels.apply_to_data(data, trusted)  # reviewed labels in, dropped samples out
    _check_trainable(ws, data, trusted is not None, world)
    fingerprint = _fingerprint(data)
    reviewed_digest = _reviewed_digest(data, reviewed)
    run = _Run(ws, config, data, world, reporter, trusted)
    if resumed:
        config, ckpt = _resume_run(run, run_id, fingerprint)
        if ckpt.get("reviewed", reviewed_digest) != reviewed_digest:
            raise WorkspaceError(f"The reviewed samples of run {run_id} are not the ones it started with (its "
                                 "--trusted decisions read differently now); it cannot be resumed. Start a new run "
                                 "without --resume.")
    else:
        run_id = _new_run(run, resume, fingerprint, started)
        ckpt = {"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "reviewed": reviewed_digest, "done": {},
                "current": None}
    run = run.started(run_id, config, reviewed)
    votes = _vote_targets(ws, data, reviewed) if config.soft_labels else None

    device = dd.rank_device(resolve_device(config.device), world)
    if world.distributed:
        reporter.log(f"train: data-parallel over {world.size} processes "
                     f"({'NCCL' if device.type == 'cuda' else 'gloo'}); rank 0 writes the run.")
    # The crops go to the device once (this rank's share of them), or stream when they do not fit.
    store = open_crop_store(data.store, device, config.store, world, log=reporter.log)
    try:
        done = _run_jobs(run, store, ckpt, votes)
    finally:
        store.close()
    tables = _tables(run, done)
    if world.main:  # every rank holds the same tables; one writes them
        _write_run(run, done, tables)
    dd.barrier(world)  # no rank reports the run before its files are there
    finals = run.generation(done, config.distill_generations)
    seconds_train = sum(r.seconds for r in done.values())
    seen = sum(r.seen for r in done.values())
    cols, strength, plan = tables.signals, tables.strength, run.plan
    return TrainSummary(
        run_id=run_id, run_dir=run.run_dir, n_samples=len(data.rows), epochs=config.epochs, device=str(device),
        seconds=time.perf_counter() - t_start,
        images_per_s=seen / seconds_train if seconds_train > 0 else 0.0,
        final_train_accuracy=float(np.mean([m.history[-1]["train_accuracy"] for m in finals])),
        relabeled=int((tables.scn != data.given).sum()),
        classes=data.classes, n_excluded=data.n_excluded, members=config.ensemble,
        generations=config.distill_generations, folds=config.folds, temperature=tables.meta["temperature"],
        resumed=resumed, parts=part_names(config), probe_accuracy=strength.get("holdout_accuracy"),
        chance_accuracy=strength.get("chance_accuracy"), planted_flips=int(plan.planted.sum()),
        retrained_without=int(cols["retrain_held_out"].sum()) if "retrain_held_out" in cols else 0,
        reviewed=len(trusted.table) if trusted is not None else 0)


def _resume_run(run: _Run, run_id: str, fingerprint: str) -> tuple[TrainConfig, dict[str, Any]]:
    """The unfinished run's saved config and checkpoint, refused when they cannot continue."""
    ws, reporter = run.ws, run.reporter
    run_dir = ws.run_dir(run_id)
    saved = json.loads((run_dir / "config.json").read_text())
    check_resume_world(saved, run.world.size, run_id, ws.root)
    saved_cfg = TrainConfig.from_dict(saved)
    if saved_cfg.to_dict() != run.config.to_dict():
        reporter.log(f"train: resuming {run_id} with its saved configuration.")
    try:
        ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WorkspaceError(f"{run_dir / 'checkpoint.pt'} cannot be read ({exc}); "
                             "start a new run without --resume.") from exc
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise WorkspaceError(f"{run_dir / 'checkpoint.pt'} was written by another fercure version "
                             f"(checkpoint format {ckpt.get('format')}, this one reads "
                             f"{CHECKPOINT_FORMAT}); start a new run without --resume.")
    if ckpt.get("fingerprint") != fingerprint:
        raise WorkspaceError(f"The manifest or crops changed since run {run_id} started; it "
                             "cannot be resumed. Start a new run without --resume.")
    reporter.log(f"train: resuming run {run_id} ({len(ckpt['done'])} fits done).")
    return saved_cfg, ckpt


def _new_run(run: _Run, resume: bool, fingerprint: str, started: list[str]) -> str:
    """A new run folder with its config.json (made by rank 0; every rank gets its id)."""
    ws, config, data, reporter = run.ws, run.config, run.data, run.reporter
    if resume:
        reporter.log("train: no unfinished run to resume; starting a new one.")
    run_id = None
    if run.world.main:
        if not resume:
            left = _unfinished_run(ws)
            if left is not None:
                reporter.log(f"train: run {left} is unfinished; it is kept as it is (this starts a new run). "
                             f"To continue it instead, stop and run `fercure train -w {ws.root} --resume`; "
                             f"to discard it, delete {ws.run_dir(left)}.")
        removed = ws.remove_dead_runs()
        if removed:
            reporter.log(f"train: removed {removed} run folder(s) in {ws.runs_dir} that failed before "
                         "their first checkpoint (only config.json and/or FAILED; nothing to resume).")
        run_id = _new_run_id(config)
        run_dir = ws.run_dir(run_id)
        run_dir.mkdir(parents=True, exist_ok=False)
        started.append(run_id)
        atomic_write_json(run_dir / "config.json", {
            **config.to_dict(), "classes": data.classes, "run_id": run_id, "parts": part_names(config),
            "n_samples": len(data.sample_ids), "fercure_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "fingerprint": fingerprint,
            "world_size": run.world.size, "trusted_files": trusted_labels.provenance(run.trusted)})
    return dd.broadcast_object(run_id, run.world)


def _vote_targets(ws: Workspace, data: _Data, reviewed: np.ndarray) -> np.ndarray:
    """(n, C) each trained sample's vote distribution over the run's classes (``--soft-labels``); a
    sample without votes in the run's classes, or decided by a reviewer, gets its label one-hot."""
    if not ws.annotations.exists():
        raise WorkspaceError(
            f"--soft-labels learns from several annotators' votes, and {ws.root} has none ({ws.annotations} is "
            "missing): prepare with a vote file (rows of path,annotator,label, or one vote-count column per class), "
            "or train without --soft-labels.")
    ann, _ = vote_files.as_annotations(read_table(ws.annotations), data.sample_ids, data.classes)
    targets = vote_shares(ann.counts())
    one_hot = (targets.sum(axis=1) == 0) | reviewed
    targets[one_hot] = np.eye(len(data.classes))[data.given[one_hot]]
    return targets


def _run_jobs(run: _Run, store: Any, ckpt: dict[str, Any], votes: np.ndarray | None = None) -> dict[str, FitRecord]:
    """Every fit of the run (members, generations, folds, the retrain) not yet done, each recorded
    to its own file and named in the checkpoint; returns every fit's record by key. ``votes``: the
    soft targets of ``--soft-labels`` (by trained sample)."""
    data, plan, config, world, run_dir = run.data, run.plan, run.config, run.world, run.run_dir
    c = len(data.classes)
    labels_full = np.zeros(store.shape[0], dtype=np.int64)
    labels_full[data.rows] = plan.train_labels
    given_full = np.zeros(store.shape[0], dtype=np.int64)
    given_full[data.rows] = data.given
    folds = ens.stratified_folds(data.given, config.folds, config.seed) if config.folds else None
    done = {k: _done_record(run_dir, k, v, run.jobs) for k, v in ckpt["done"].items()}
    fit_pos = np.flatnonzero(~plan.holdout)  # the first models never see the probe
    writer = _CheckpointWriter(run_dir / "checkpoint.pt") if world.main else _NoWriter()
    try:
        for job in run.jobs:
            if job.key in done:
                continue
            resume_state = None
            if ckpt.get("current") and ckpt["current"]["key"] == job.key:
                resume_state = ckpt["current"]["state"]
            soft, labels = None, labels_full
            if job.kind == "member":
                train_pos = fit_pos
                if job.generation > 0:  # students learn the previous generation's ensemble mean
                    soft = np.mean([m.probs for m in run.generation(done, job.generation - 1)], axis=0)[fit_pos]
            elif job.kind == "fold":
                train_pos = np.flatnonzero(folds != job.fold)
                labels = given_full
            else:  # retrain: the given labels, without the first models' most suspect share
                first = det.first_stage_scores(plan, run.generation(done, 0), c)
                train_pos = np.flatnonzero(~det.retrain_excluded(first, plan, config.retrain_drop))
                labels = given_full

            def save(state: dict[str, Any], key: str = job.key) -> None:
                ckpt["current"] = {"key": key, "state": state}
                writer.submit(ckpt)
                _log_epoch(run.reporter, desc, state, config.epochs)

            vote_targets = None
            if votes is not None:
                vote_targets = votes.copy()
                if job.kind == "member":  # planted flips train with their flipped label, not their votes
                    flipped = plan.train_labels != data.given
                    vote_targets[flipped] = np.eye(c)[plan.train_labels[flipped]]
                vote_targets = vote_targets[train_pos]
            desc = "train" if len(run.jobs) == 1 else f"train {job.key}"
            res = fit(store, labels, data.classes, config, index=data.rows[train_pos], seed=job.seed,
                      soft_targets=soft, vote_targets=vote_targets, resume_state=resume_state, on_epoch_end=save,
                      reporter=run.reporter, description=desc)
            held = np.flatnonzero(folds == job.fold) if job.kind == "fold" else None
            done[job.key] = _fit_record(run, job, res, store, train_pos, held)
            if world.main:  # written once; the checkpoint names it instead of re-pickling it every epoch
                with atomic_path(_fit_file(run_dir, job.key)) as tmp:
                    torch.save(done[job.key].to_checkpoint(), tmp)
            ckpt["done"][job.key] = FIT_FILE
            ckpt["current"] = None
            writer.submit(ckpt)
            del res
    finally:
        writer.close()
    return done


def _fit_record(run: _Run, job: ens.Job, res: Any, store: Any, train_pos: np.ndarray,
                held: np.ndarray | None) -> FitRecord:
    """What the run keeps of a finished fit: its history and predictions (a fold model is only
    asked about its held-out fold; the others score every sample); a final member's weights."""
    config, rows = run.config, run.data.rows
    pr = predict(res.model, store, config, index=rows if held is None else rows[held], parts=res.parts, flip=True)
    common = dict(history=res.history, seconds=res.seconds, seen=float(res.images_per_s * res.seconds),
                  trained=train_pos, probs=pr["probs"])
    if job.kind == "fold":
        return FitRecord(**common, held=held, logits=pr["logits"])
    if job.kind != "member":  # the retrain
        return FitRecord(**common, mean_probs=res.mean_probs, dynamics=res.dynamics)
    if job.generation == config.distill_generations and run.world.main:
        target = run.run_dir / "model.pt" if job.key == ens.member_key(config.distill_generations, 0) else \
            run.run_dir / "members" / f"{job.key}.pt"
        with atomic_path(target) as tmp:
            torch.save({k: v.detach().cpu() for k, v in res.model.state_dict().items()}, tmp)
    return FitRecord(**common, logits=pr["logits"], embedding=pr["embedding"],
                     rel_probs=pr.get("rel_probs", pr["probs"]),
                     reliability=pr.get("reliability", pr["probs"].max(axis=1)),
                     labels=res.labels, relabel_count=res.relabel_count,
                     mean_probs=res.mean_probs, dynamics=res.dynamics)


@dataclass
class _Tables:
    """What a run's fits make: its tables with their metadata, and what the summary reports of them."""
    predictions: pd.DataFrame
    dynamics: pd.DataFrame
    meta: dict[str, Any]  # the predictions' and dynamics' metadata
    embedding: pd.DataFrame
    embedding_meta: dict[str, Any]
    signals: dict[str, np.ndarray]  # det.aggregate's per-sample columns
    strength: dict[str, Any]  # the model-strength probe
    scn: np.ndarray  # the SCN label of every trained sample


def _tables(run: _Run, done: dict[str, FitRecord]) -> _Tables:
    """The run's predictions and dynamics tables from its fits; also the table metadata, the
    detection signals, the model-strength probe and the SCN labels (for the summary)."""
    data, plan, config = run.data, run.plan, run.config
    n, c = len(data.rows), len(data.classes)
    fit_pos = np.flatnonzero(~plan.holdout)
    members0 = run.generation(done, 0)
    finals = run.generation(done, config.distill_generations)
    unc = ens.ensemble_uncertainty(np.stack([m.probs for m in finals]))
    oof, temperature = _out_of_fold(run, done)
    scn, relabel_count = data.given.copy(), np.zeros(n, dtype=np.int64)
    scn[fit_pos] = dyn.majority_labels([m.labels for m in members0], c)
    scn[plan.planted] = data.given[plan.planted]  # never report a planted label
    relabel_count[fit_pos] = np.rint(np.mean([m.relabel_count for m in members0], axis=0))
    cols, self_check, strength = det.aggregate(plan, members0, done.get(ens.RETRAIN_KEY), c, config)
    mean_probs = unc["mean"].copy()  # probe samples: the held-out prediction
    mean_probs[fit_pos] = np.mean([m.mean_probs for m in members0], axis=0)

    pred_df = dyn.predictions_frame(
        data.sample_ids, data.classes, data.given, probs=unc["mean"],
        mean_probs=mean_probs, signals=cols,
        relabel_count=relabel_count, scn_index=scn,
        reliability=np.mean([m.reliability for m in finals], axis=0),
        rel_probs=np.mean([m.rel_probs for m in finals], axis=0),
        entropy=unc["entropy"], mutual_info=unc["mutual_info"], oof_p_given=oof)
    # no trace of a flip leaves the run
    pred_df = det.hide_flips(pred_df, plan, data.classes, cols.get("retrain_probs"))
    # Planted and probe samples were not trained with their given label: their dynamics rows
    # would describe a label that is not theirs (or nothing), so dynamics.parquet leaves them out.
    real = ~(plan.planted | plan.holdout)
    dyn_frames = []
    for j in run.jobs:
        if j.kind != "member":
            continue
        pos = done[j.key].trained
        keep = real[pos]
        sel = pos[keep]
        dyn_frames.append(dyn.dynamics_frame([data.sample_ids[i] for i in sel], data.given[sel],
                                             {k: v[:, keep] for k, v in done[j.key].dynamics.items()},
                                             j.member))
    meta = {"run_id": run.run_id, "classes": data.classes, "config": config.to_dict(),
            "temperature": temperature, "self_check": self_check, "model_strength": strength,
            "world_size": run.world.size, "trusted": trusted_labels.provenance(run.trusted)}
    return _Tables(pred_df, pd.concat(dyn_frames, ignore_index=True), meta,
                   embedding_frame(data.sample_ids, cols, plan.planted),
                   {"run_id": run.run_id, "classes": data.classes}, cols, strength, scn)


def embedding_frame(sample_ids, cols: dict[str, np.ndarray], planted: np.ndarray) -> pd.DataFrame:
    """embedding.parquet: each sample's principal components and nearest neighbours (rows of the same
    table). A planted sample's place was learnt with its flip: its row stays blank and no list names it."""
    n = len(sample_ids)
    comps = np.asarray(cols.get("embedding_components", np.zeros((n, 0))), dtype=np.float32)
    comps = np.where(np.asarray(planted, bool)[:, None], np.nan, comps)
    if "neighbour_index" in cols:
        index = np.asarray(cols["neighbour_index"], dtype=np.int64)
        sim = np.asarray(cols["neighbour_similarity"], dtype=np.float32)
        keep = ~np.asarray(planted, bool)[index] & ~np.asarray(planted, bool)[:, None]
        nb = [r[k].astype(np.int32) for r, k in zip(index, keep)]
        ns = [r[k] for r, k in zip(sim, keep)]
    else:
        nb = [np.zeros(0, np.int32)] * n
        ns = [np.zeros(0, np.float32)] * n
    return pd.DataFrame({"sample_id": np.asarray(sample_ids, dtype=object),
                         "components": [r if np.isfinite(r).all() else r[:0] for r in comps],
                         "neighbours": nb, "neighbour_similarity": ns})


def _out_of_fold(run: _Run, done: dict[str, FitRecord]) -> tuple[np.ndarray, float | None]:
    """Cross-fitted p(given) (NaN without folds) and the temperature fitted on the fold logits."""
    data, config = run.data, run.config
    n, c = len(data.rows), len(data.classes)
    oof = np.full(n, np.nan)
    if not config.folds:
        return oof, None
    oof_logits = np.zeros((n, c))
    for k in range(config.folds):
        r = done[ens.fold_key(k)]
        oof_logits[r.held] = r.logits
    temperature = ens.fit_temperature(oof_logits, data.given)
    oof_probs = torch.softmax(torch.from_numpy(oof_logits / temperature), dim=1).numpy()
    return oof_probs[np.arange(n), data.given], temperature


def _write_run(run: _Run, done: dict[str, FitRecord], tables: _Tables) -> None:
    """The run's tables and metrics; predictions.parquet last (it marks the run finished), then
    the files only --resume needed are removed."""
    run_dir, meta = run.run_dir, tables.meta
    write_table(tables.dynamics, run_dir / "dynamics.parquet", meta, table=schema.DYNAMICS)
    write_table(tables.embedding, run_dir / "embedding.parquet", tables.embedding_meta, table=schema.EMBEDDING)
    atomic_write_json(run_dir / "metrics.json", {"fits": {k: r.history for k, r in done.items()},
                                                 "temperature": meta["temperature"],
                                                 "train_seconds": sum(r.seconds for r in done.values())})
    trusted_labels.write(run_dir, run.trusted, {"run_id": run.run_id, "trusted": meta["trusted"]})
    # last: marks the run finished
    write_table(tables.predictions, run_dir / "predictions.parquet", meta, table=schema.PREDICTIONS)
    run.ws.set_latest_run(run.run_id)
    # The checkpoint (model + optimiser state, ~135 MB for ResNet-18) only serves --resume of an
    # unfinished run; a finished run keeps model.pt and its tables.
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)
    for j in run.jobs:
        _fit_file(run_dir, j.key).unlink(missing_ok=True)
    if (run_dir / "fits").is_dir() and not any((run_dir / "fits").iterdir()):
        (run_dir / "fits").rmdir()

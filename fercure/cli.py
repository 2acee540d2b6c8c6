"""The `fercure` command line: parse options, call a stage, render its summary. No logic here.

The commands and their options are here; what every command shares around its stage (the run with
its progress, errors, the summary's tables or JSON) is fercure.cli_output, the demo's steps
fercure.cli_demo. The console entry point is ``fercure.cli:app``."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Optional

# OpenMP threads that wait spin on their core by default; beside other work (another training job,
# a browser) that spinning took the cores the work needed: on the shared 2-core machine `train` took
# about half the CPU time and 23-53 % less wall time with a passive wait (benchmarks/bench_contention.py,
# RESULTS.md). Set before anything imports torch (this module does not); a value the user set stays.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer

from fercure import __version__
from fercure.audit import DEFAULT_SCORE, DEFAULT_THRESHOLD, THRESHOLD_METHODS
from fercure.export import FORMATS, POLICIES
from fercure.handoff import DEFAULT_IMAGE_URL
from fercure.faces.align import CROP_MODES
from fercure.ingest import MAX_REJECTED_SHARE
from fercure.faces.quality import MULTI_FACE_POLICIES, NO_FACE_POLICIES
from fercure.groups import GROUPS_DEFAULT, GroupSettings
from fercure.layouts import IMAGE_SOURCES, LINKS
from fercure.rerank import QUEUE_ORDERS
from fercure.train.config import DEVICES, POOLS, STORE_MODES, TrainConfig
from fercure.errors import FercureError, WorkspaceError
from fercure.cli_output import _emit, _fail, _json_errors, _run
from fercure.cli_demo import DEMO_RESNET18_ARGS, _check_demo_workspace, _demo_stages, find_sample_data
# Names that moved out of this module and that tests and scripts still read here.
from fercure.cli_output import JSON_MAX_LIST, JSON_MAX_MAP, _render, bound_json  # noqa: F401
from fercure.cli_demo import _demo_scorecard  # noqa: F401

app = typer.Typer(
    name="fercure",
    help="Curate facial-expression datasets and clean their noisy labels.\n\n"
    "Four stages over one workspace: prepare → train → audit-labels → export-cleaned. "
    "`fercure demo` runs all four on the bundled sample_data/.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: wraps every line at the terminal width, cuts nothing
)

WorkspaceOpt = typer.Option(..., "--workspace", "-w", help="Workspace folder shared by all stages.")
WaitOpt = typer.Option(False, "--wait", help="When another fercure command is using the workspace, wait for it to finish instead of stopping.")
JsonOpt = typer.Option(False, "--json", help="Print the summary as JSON on stdout (and nothing else there; progress and notes go to stderr).")


def _choices(name: str, values: Iterable[str]) -> Any:
    """A typer choice over values declared where they are checked (member names: '-' → '_')."""
    return Enum(name, [(v.replace("-", "_"), v) for v in values], type=str)


Device = _choices("Device", DEVICES)
Pool = _choices("Pool", POOLS)
NoFace = _choices("NoFace", NO_FACE_POLICIES)
Crop = _choices("Crop", CROP_MODES)
MultiFace = _choices("MultiFace", MULTI_FACE_POLICIES)
Policy = _choices("Policy", POLICIES)
ThresholdMethod = _choices("ThresholdMethod", THRESHOLD_METHODS)
QueueOrder = _choices("QueueOrder", QUEUE_ORDERS)
StoreMode = _choices("StoreMode", STORE_MODES)
Format = _choices("Format", FORMATS)
Images = _choices("Images", IMAGE_SOURCES)
Link = _choices("Link", LINKS)
# TrainConfig's defaults, the train command's defaults: declared once, in fercure/train/config.py.
TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


def _examples(text: str) -> str:
    """An epilog of example commands, each on one line as typed: click rewraps a help paragraph
    to the terminal width unless it starts with \\b, and a wrapped command cannot be pasted."""
    head, _, body = text.partition("\n\n")
    lines = [line[2:] if line.startswith("  ") else line for line in body.split("\n\n") if line.strip()]
    return head + "\n\n\b\n" + "\n".join(lines)


@contextlib.contextmanager
def _locked(workspace: Path, wait: bool, *, create: bool = False):
    """Hold the workspace lock (fercure.workspace.workspace_lock) for a command that writes there;
    exit 1 with the holder's PID when another command has it."""
    from fercure.workspace import workspace_lock

    stack = contextlib.ExitStack()
    try:
        stack.enter_context(workspace_lock(workspace, wait=wait, create=create))
    except FercureError as e:
        _fail(str(e), error=e)
    with stack:
        yield


def _launch_ranks(nproc: int, workspace: Path, wait: bool, device: str = "auto") -> None:
    """`fercure train --nproc N`: the same command as N rank processes on this machine
    (fercure.launch), which die with this command; it holds the workspace lock for them."""
    import sys

    from fercure import launch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _fail("--nproc starts the ranks itself; under torchrun (or another launcher) leave it out.", 2)
    try:
        launch.check_nproc(nproc, device)
    except FercureError as e:
        _fail(str(e))
    args, skip = [], False
    for a in sys.argv[2:]:  # after the program and the `train` subcommand
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    from fercure.console import err_console, text

    with _locked(workspace, wait):
        code = launch.run_ranks(args, nproc, log=lambda line: err_console.print(
            f"[bold red]error:[/] {text(line)}", highlight=False, soft_wrap=True))
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fercure {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _json_errors(False)  # each command says again whether it runs with --json


@app.command(
    epilog=_examples("Examples:\n\n"
    "  # data/images/<class>/*.jpg\n\n  fercure prepare data/images -w ws\n\n"
    "  # labels.csv: path,label[,split]\n\n  fercure prepare data -l data/labels.csv -w ws\n\n"
    "  # several annotators: path,annotator,label rows, or vote counts per class\n\n"
    "  fercure prepare data -l data/votes.csv -w ws\n\n"
    "  # photos without labels (join labels later: -l on the same workspace)\n\n"
    "  fercure prepare photos -w ws --no-labels\n\n"
    "  fercure prepare fer -l labels.csv -w ws --on-no-face keep --device cuda\n\n"
    "  # ... up to --shard 3/4, on any machines sharing ws\n\n  fercure prepare data -w ws --shard 0/4\n\n"
    "  # combine the shards (the last one does it itself)\n\n  fercure prepare --merge -w ws")
)
def prepare(
    input_root: Optional[Path] = typer.Argument(None, help="Folder of class subfolders, or the root that the label file's paths are relative to."),
    workspace: Path = WorkspaceOpt,
    labels: Optional[Path] = typer.Option(None, "--labels", "-l", help="CSV or Parquet with columns path,label[,split]; or several labels per image: path,annotator,label rows, or one vote-count column per class (path,<class>,<class>,...)."),
    no_labels: bool = typer.Option(False, "--no-labels", help="A folder of photos without labels: every image below INPUT_ROOT, label empty. Join labels later with --labels on the same workspace (the crops are reused)."),
    classes: Optional[str] = typer.Option(None, help="Comma-separated class names; other labels are rejected."),
    device: Device = typer.Option(Device.auto, help="Where the face detector runs."),
    batch_size: int = typer.Option(64, min=1, help="Images per detector batch."),
    workers: int = typer.Option(2, min=1, help="Threads decoding images ahead of the detector."),
    image_size: Optional[int] = typer.Option(None, min=16, help="Side of the square crops (pixels). Default: the images' own side when at least 90 % of them are square crops of one size up to 112 px (a pre-cropped dataset: faces kept at their own size, never upsampled), else 112."),
    on_no_face: NoFace = typer.Option(NoFace.keep, help="No face found: keep the whole image (flagged no_face) or drop it."),
    multi_face: MultiFace = typer.Option(MultiFace.largest, help="Several faces: keep the largest, the most central, or drop the image."),
    min_face_size: float = typer.Option(20.0, min=1, help="Faces smaller than this (pixels, shorter box side) get status too_small."),
    min_score: float = typer.Option(0.9, min=0, max=1, help="Detector confidence below this gets status low_confidence."),
    crop: Crop = typer.Option(Crop.auto, help="How to cut the crop: align to the 5-point template, keep the image as given (a square of its shorter side around the face, resized), or auto: as given where the face already fills the frame (a pre-cropped dataset), aligned elsewhere. The manifest's crop_mode says which."),
    chunk_size: int = typer.Option(512, min=1, help="Images per resumable chunk: an interrupted run resumes at the first unfinished chunk."),
    strict_labels: bool = typer.Option(False, "--strict-labels", help="Reject labels that differ from another only in case (Angry beside angry) as look-alikes; by default they are one class, and the manifest's label_original keeps each row's spelling."),
    max_rejected: float = typer.Option(MAX_REJECTED_SHARE, min=0.0, max=1.0, help="Fail when more than this share of the input's rows is rejected (the error lists the first rejects); 1: never."),
    shard: Optional[str] = typer.Option(None, help="I/N: process only shard I (0..N-1) of N, split by sample_id hash, into the workspace's shard files; the shard that finds all N done merges them. Shards run side by side, also on machines sharing the workspace."),
    merge: bool = typer.Option(False, "--merge", help="Combine a complete set of shards into the manifest and store (no INPUT needed)."),
    new_input: bool = typer.Option(False, "--new-input", help="Prepare into a workspace prepared from another input folder (refused without it): its manifest and crops are replaced, and its runs and audit then describe other images."),
    wait: bool = WaitOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Detect, align and score faces; write the crop store and manifest.parquet."""
    _json_errors(json_out)
    from fercure.stages.prepare import check_workspace, merge_prepare_shards, parse_shard, run_prepare
    from fercure.workspace import Workspace, workspace_lock

    if merge:
        if input_root is not None or shard is not None:
            _fail("--merge combines shards already written: give only -w WORKSPACE.", 2)
        with _locked(workspace, wait):
            _run(merge_prepare_shards, "prepare", as_json=json_out, workspace=workspace)
        return
    if input_root is None:
        _fail("Missing argument INPUT_ROOT (the image folder); only --merge runs without it.", 2)
    try:
        shard_of = parse_shard(shard) if shard is not None else None
    except FercureError as e:
        _fail(str(e), 2, error=e)
    class_list = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    if not input_root.is_dir():  # before the lock creates the workspace folder
        _fail(f"Input folder {input_root} does not exist or is not a folder.")
    try:  # before the lock creates the workspace folder: never inside the input folder
        check_workspace(Workspace(workspace), input_root, labels, new_input=new_input)
    except FercureError as e:
        _fail(str(e), error=e)
    kwargs = dict(input_root=input_root, workspace=workspace, labels_file=labels, new_input=new_input,
                  classes=class_list, device=device.value, batch_size=batch_size, workers=workers,
                  image_size=image_size, on_no_face=on_no_face.value, multi_face=multi_face.value,
                  min_face_size=min_face_size, min_score=min_score, crop=crop.value, chunk_size=chunk_size,
                  no_labels=no_labels, fold_case=not strict_labels, max_rejected=max_rejected)
    if shard_of is not None:
        # A shard writes only its own files: no lock while it works (shards must not wait for each
        # other), the workspace lock for the merge only, waiting for whoever holds it.
        Path(workspace).mkdir(parents=True, exist_ok=True)
        _run(run_prepare, "prepare", as_json=json_out, shard=shard_of,
             merge_lock=lambda: workspace_lock(workspace, wait=True), **kwargs)
        return
    with _locked(workspace, wait, create=True):
        _run(run_prepare, "prepare", as_json=json_out, **kwargs)


def parse_backbone_args(items: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` strings → keyword arguments; values are JSON literals where they parse
    (8, 0.1, true, "x") and plain strings otherwise."""
    import json

    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise WorkspaceError(f"--backbone-arg {item!r}: expected KEY=VALUE, e.g. --backbone-arg patch_size=8")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


@app.command(
    epilog=_examples("Examples:\n\n"
    "  fercure train -w ws                      # resnet18 from scratch, 20 epochs\n\n"
    "  fercure train -w ws --epochs 30 --thorough --device cuda\n\n"
    "  fercure train -w ws --selfcure --reliability     # the SCN + ARBEx methods\n\n"
    "  fercure train -w ws --pretrained resnet18.pth    # a local state dict\n\n"
    "  fercure train -w ws --pretrained resnet18.a1_in1k  # hub weights, cached\n\n"
    "  fercure train -w ws --trusted decisions-RUN.csv  # reviewed labels\n\n"
    "  fercure train -w ws --nproc 2                    # data-parallel, 2 processes")
)
# Longer than 80 lines: one parameter per option is the command's interface; the body is short.
def train(
    ctx: typer.Context,
    workspace: Path = WorkspaceOpt,
    epochs: int = typer.Option(TRAIN_DEFAULTS["epochs"], min=1),
    device: Device = typer.Option(Device(TRAIN_DEFAULTS["device"])),
    backbone: str = typer.Option(TRAIN_DEFAULTS["backbone"], help="Any timm model name."),
    image_size: Optional[int] = typer.Option(TRAIN_DEFAULTS["image_size"], min=16, help="Training size in pixels (default: the crop store's, the size prepare cut)."),
    batch_size: int = typer.Option(TRAIN_DEFAULTS["batch_size"], min=2),
    lr: float = typer.Option(TRAIN_DEFAULTS["lr"], help="Peak learning rate (AdamW, cosine schedule)."),
    seed: int = typer.Option(TRAIN_DEFAULTS["seed"]),
    pretrained: Optional[str] = typer.Option(None, help="Starting weights for the backbone: a local file (a state dict or timm checkpoint), or a timm / Hugging Face hub name (e.g. resnet18.a1_in1k, hf-hub:timm/resnet18.a1_in1k) that timm downloads once and caches; the name also sets the backbone."),
    selfcure: bool = typer.Option(TRAIN_DEFAULTS["selfcure"], "--selfcure/--no-selfcure", help="SCN part: importance weights, rank regularisation, relabelling (off by default: measured below the plain core, docs/METHODS.md)."),
    relabel_scope: str = typer.Option(TRAIN_DEFAULTS["relabel_scope"], help="SCN: relabel only the low-importance group (paper) or all samples (official code)."),
    reliability: bool = typer.Option(TRAIN_DEFAULTS["reliability"], "--reliability/--no-reliability", help="ARBEx part: anchors + attention reliability (off by default, see docs/METHODS.md)."),
    elr: bool = typer.Option(TRAIN_DEFAULTS["elr"], "--elr/--no-elr", help="ELR part: early-learning regularisation against memorising wrong labels."),
    jigsaw: bool = typer.Option(TRAIN_DEFAULTS["jigsaw"], "--jigsaw/--no-jigsaw", help="HMTL part: a jigsaw pretext task beside the labels (see docs/METHODS.md for its measured effect)."),
    inpaint: bool = typer.Option(TRAIN_DEFAULTS["inpaint"], "--inpaint/--no-inpaint", help="HMTL part: an in-painting pretext task (CNN backbones)."),
    pool: Pool = typer.Option(Pool(TRAIN_DEFAULTS["pool"]), help="Pooling: avg (the backbone's own), app (APViT attentive patch pooling, CNNs), atp (attentive token pooling, ViTs)."),
    pool_keep: float = typer.Option(TRAIN_DEFAULTS["pool_keep"], min=0.01, max=1.0, help="Share of positions (app) or tokens (atp) kept."),
    backbone_arg: list[str] = typer.Option([], "--backbone-arg", help="KEY=VALUE passed to timm.create_model (repeatable), e.g. patch_size=8."),
    label_smoothing: float = typer.Option(TRAIN_DEFAULTS["label_smoothing"], min=0.0, max=0.5, help="Label smoothing of the core cross-entropy."),
    holdout: float = typer.Option(TRAIN_DEFAULTS["holdout"], min=0.0, max=0.5, help="Share held out of the first model to measure its strength (0: off)."),
    plant_rate: float = typer.Option(TRAIN_DEFAULTS["plant_rate"], min=0.0, max=0.2, help="Share of labels flipped on purpose inside the run: the self-check (0: off)."),
    retrain: bool = typer.Option(TRAIN_DEFAULTS["retrain"], "--retrain/--no-retrain", help="Train a second model without the most suspect share and score that share held out."),
    knn: int = typer.Option(TRAIN_DEFAULTS["knn"], min=0, help="Neighbours for the embedding label-agreement signal (0: off)."),
    amp: str = typer.Option(TRAIN_DEFAULTS["amp"], help="bf16 autocast: auto (CUDA only), bf16 (also on CPU), off."),
    compile: bool = typer.Option(TRAIN_DEFAULTS["compile"], "--compile", help="torch.compile the model's training steps (one graph: a short last batch is filled with the epoch's first samples). Slower start; off until a GPU measurement shows it pays."),
    thorough: bool = typer.Option(False, help="Slower, steadier scores: a 3-model ensemble for the first stage."),
    ensemble: int = typer.Option(TRAIN_DEFAULTS["ensemble"], min=1, help="Deep-ensemble members (uncertainty: entropy, mutual information)."),
    distill_generations: int = typer.Option(TRAIN_DEFAULTS["distill_generations"], min=0, help="Self-distillation generations from the ensemble's soft labels."),
    folds: int = typer.Option(TRAIN_DEFAULTS["folds"], min=0, help="Cross-fitting folds for out-of-sample probabilities (0: off)."),
    soft_labels: bool = typer.Option(TRAIN_DEFAULTS["soft_labels"], "--soft-labels/--no-soft-labels", help="Learn each image's vote distribution (a vote file's annotations) instead of its majority label."),
    resume: bool = typer.Option(False, help="Continue the latest unfinished run from its last epoch checkpoint."),
    store: StoreMode = typer.Option(StoreMode(TRAIN_DEFAULTS["store"]), help="Crops resident on the device, or streamed from the memory-mapped store per batch (auto: stream when they would take over half the free memory)."),
    trusted: list[Path] = typer.Option([], "--trusted", help="A reviewer's decisions (CSV or JSON saved from the review report, a Label Studio JSON export or a CVAT for images 1.1 XML) or a CSV of verified labels (sample_id,label or path,label); repeatable, the later decision for a sample wins. Reviewed samples train with their reviewed label (dropped ones leave the run) and are never flagged again."),
    nproc: int = typer.Option(1, min=1, help="Train data-parallel with this many processes on this machine (fercure starts them and they stop with it; one per GPU, or CPU processes over gloo). For several machines run torchrun yourself (README, Scaling out)."),
    wait: bool = WaitOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Train a timm backbone and record how every sample behaves (the evidence audit-labels judges labels by)."""
    _json_errors(json_out)
    from fercure.stages.train import run_train
    from fercure.train.distributed import DistributedError, env_world
    from fercure.train.model import is_hub_name
    from fercure.workspace import check_input_file

    from fercure.workspace import Workspace

    from fercure import launch

    if nproc > 1:
        _launch_ranks(nproc, workspace, wait, device.value)
    try:
        rank = env_world().rank
    except DistributedError as e:
        _fail(str(e), error=e)
    launch.watch_launcher()
    # Under torchrun rank 0 holds the lock for the whole data-parallel run (under `--nproc N` the
    # launcher does); the other ranks are part of the same command.
    lock = _locked(workspace, wait) if rank == 0 and not launch.launched_rank() else contextlib.nullcontext()
    with lock:  # prepare must not replace the store and manifest mid-run
        try:
            if pretrained is not None and not is_hub_name(pretrained):
                check_input_file(Path(pretrained), option="--pretrained",
                                 hint="Pass a state-dict file saved with torch.save (a regular file, not a pipe or "
                                      "device), or a timm model name such as resnet18.a1_in1k.")
            backbone = _pretrained_backbone(pretrained, backbone, _given(ctx, "backbone"))
            Workspace(workspace).check_readable(resume=resume)
            backbone_args = parse_backbone_args(backbone_arg)
        except FercureError as e:
            _fail(str(e), error=e)
        config = TrainConfig(
            backbone=backbone, image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
            device=device.value, pretrained=pretrained or None, selfcure=selfcure,
            relabel_scope=relabel_scope, reliability=reliability, elr=elr, jigsaw=jigsaw, inpaint=inpaint,
            pool=pool.value, pool_keep=pool_keep, backbone_args=backbone_args, label_smoothing=label_smoothing,
            holdout=holdout, plant_rate=plant_rate, retrain=retrain, knn=knn, amp=amp,
            ensemble=max(ensemble, 3) if thorough else ensemble,
            distill_generations=distill_generations, folds=folds, store=store.value, compile=compile,
            soft_labels=soft_labels,
            trusted=[str(p.resolve()) for p in trusted],
        )
        if trusted and not resume:
            config = _continue_last_run(config, Workspace(workspace), ctx, quiet=rank != 0)
        try:
            _run(run_train, "train", as_json=json_out, quiet=rank != 0, workspace=workspace, config=config,
                 resume=resume)
        except typer.Exit:
            raise
        except Exception:
            # A collective whose peer stopped with a clear message: that message is the one to show.
            if launch.launched_rank() and launch.peer_failed():
                raise typer.Exit(1) from None
            raise


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the user set option ``name`` on the command line (not its default)."""
    source = ctx.get_parameter_source(name)  # typer's own click: compare the member's name
    return source is not None and getattr(source, "name", "") not in ("DEFAULT", "DEFAULT_MAP")


def _pretrained_backbone(pretrained: str | None, backbone: str, backbone_given: bool) -> str:
    """The backbone a hub name implies (its architecture); refused beside another --backbone."""
    from fercure.train.model import is_hub_name

    if not is_hub_name(pretrained):
        return backbone
    name = str(pretrained)
    arch = name if name.startswith("hf-hub:") else name.split(".", 1)[0]
    if backbone_given and backbone not in (name, arch):
        raise WorkspaceError(f"--pretrained {name} are weights for {arch}, not for --backbone {backbone}. Leave "
                             "--backbone out (the name sets it), or pass a local weights file for that backbone.")
    return name


# TrainConfig fields a train option sets under another name (the rest are named as the fields).
_OPTION_OF = {"ensemble": ("ensemble", "thorough")}


def _continue_last_run(config: TrainConfig, ws, ctx: typer.Context, quiet: bool = False) -> TrainConfig:
    """``train --trusted``: a review round continues the last finished run, so every setting not
    given on this command line is that run's; a note names the run and what differs from it."""
    import json

    from fercure.console import err_console, text
    from fercure.train.config import continue_settings

    try:
        run_id = ws.latest_run()
        previous = json.loads((ws.run_dir(run_id) / "config.json").read_text(encoding="utf-8"))
    except (FercureError, OSError, ValueError):
        return config  # no earlier run: this one is the first (the defaults)
    if not isinstance(previous, dict):
        return config
    given = {f.name for f in dataclasses.fields(TrainConfig)
             if any(p in ctx.params and _given(ctx, p) for p in _OPTION_OF.get(f.name, (f.name,)))}
    out, changed = continue_settings(config, given, previous)
    if not quiet:
        err_console.print(text(f"train: continuing run {run_id}'s settings (backbone {out.backbone}, image size "
                               f"{out.image_size}, {out.epochs} epochs)" + (f"; changed on this command line: "
                               f"{', '.join(changed)}" if changed else "") + "."), highlight=False, soft_wrap=True)
    return out


@app.command(
    "audit-labels",
    epilog=_examples("Examples:\n\n  fercure audit-labels -w ws\n\n"
                     "  fercure audit-labels -w ws --report audit.html \\\n\n"
                     "      --run 20261122-1200-resnet18-ab12\n\n"
                     "  # your own model's out-of-fold probabilities and embeddings, no train run\n\n"
                     "  fercure audit-labels -w ws --pred-probs oof.csv --features emb.npy\n\n"
                     "  # decisions saved from the report re-rank the rest, no retraining\n\n"
                     "  fercure audit-labels -w ws --trusted decisions-RUN.csv"),
)
def audit_labels(
    workspace: Path = WorkspaceOpt,
    run: Optional[str] = typer.Option(None, help="Run id under WS/runs (default: the latest; 'none': audit from --pred-probs / --features alone)."),
    report: Optional[Path] = typer.Option(None, help="Where to write the HTML report (default WS/report.html)."),
    pred_probs: Optional[Path] = typer.Option(None, "--pred-probs", help="Your model's out-of-sample class probabilities (Parquet, CSV or .npy): keyed by sample_id or path, one column per class; a .npy in manifest order. Audits without a run, or joins the run's signals."),
    features: Optional[Path] = typer.Option(None, "--features", help="Your model's embeddings (Parquet, CSV or .npy, keyed as --pred-probs): neighbours' label agreement and an outlier score."),
    score: str = typer.Option(DEFAULT_SCORE, help="label_score signal: retrain (first and second model averaged), confidence (mean p(given) over epochs), confidence_variability (mean + std), aum, knn (neighbour label agreement), fusion (fitted on planted flips), eval, last, self_confidence, oof, reliability, importance."),
    threshold_method: ThresholdMethod = typer.Option(ThresholdMethod(DEFAULT_THRESHOLD), help="How is_label_issue is decided without ground truth (docs/METHODS.md)."),
    force: bool = typer.Option(False, help="Overwrite an existing --report file (the default WS/report.html is always rewritten)."),
    trusted: list[Path] = typer.Option([], "--trusted", help="A reviewer's decisions (the files train --trusted reads: CSV or JSON saved from the review report, or a CSV of verified labels); repeatable, the later decision for a sample wins. Applied without retraining: reviewed rows are never flagged again, and once enough are decided they re-rank the rest (see --queue-order)."),
    queue_order: QueueOrder = typer.Option(QueueOrder("auto"), help="The review queue's order (the audit's review_rank column): auto = a model fitted on the reviewed rows when its cross-validated AUROC beats the hand-made order's, else the hand-made order; score = the hand-made order; unambiguous = likely wrong and unambiguous first (cross-entropy to the given label minus entropy)."),
    groups: bool = typer.Option(GROUPS_DEFAULT, "--groups/--no-groups", help="Group flagged look-alikes (near-copies, or close neighbours in the run's embedding, with the same given and suggested label) into one card that one decision covers (README, \"Group cards\")."),
    group_tightness: float = typer.Option(GroupSettings().tightness, min=0.0, max=1.0, help="How close a group member must be to the card's first member: closer than this share of all samples are to their own nearest neighbour."),
    list_missed_faces: bool = typer.Option(False, "--list-missed-faces", help="List pre-cropped faces the detector missed (no_face on a crop of the dataset's size) as face problems in the report; by default they are not (their crop is the face as given)."),
    wait: bool = WaitOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Score every label: wrong or not, what it should be, how sure, ambiguous or not."""
    _json_errors(json_out)
    from fercure.audit import SIGNALS
    from fercure.stages.audit import run_audit
    from fercure.workspace import Workspace

    if score not in SIGNALS:
        _fail(f"--score must be one of {', '.join(SIGNALS)}, not {score!r}.", 2)
    # Checked before the audit runs: a refused report must not cost the audit (or leave it half done).
    ws = Workspace(workspace)
    with _locked(workspace, wait):
        try:
            ws.check_output(report if report is not None else ws.report, force=force, option="--report",
                            may_replace=[ws.report])
            ws.check_readable()
        except FercureError as e:
            _fail(str(e), error=e)
        settings = dataclasses.replace(GroupSettings(), tightness=group_tightness) if groups else None
        _run(run_audit, "audit-labels", as_json=json_out, workspace=workspace, run_id=run, report_path=report,
             method=score, threshold_method=threshold_method.value, pred_probs=pred_probs, features=features,
             trusted_files=[str(p.resolve()) for p in trusted], queue_order=queue_order.value,
             groups=settings, list_missed_faces=list_missed_faces)


@app.command(
    "export-cleaned",
    epilog=_examples("Examples:\n\n  fercure export-cleaned -w ws -o cleaned.parquet\n\n"
    "  fercure export-cleaned -w ws -o cleaned.csv --format csv --policy drop --force\n\n"
    "  # decisions saved from WS/report.html (the file name ends with the run id)\n\n"
    "  fercure export-cleaned -w ws -o cleaned.parquet --decisions decisions-RUN.csv\n\n"
    "  # OUT/<split>/<class>/*.png\n\n"
    "  fercure export-cleaned -w ws -o cleaned-images --format imagefolder\n\n"
    "  fercure export-cleaned -w ws -o cleaned-images --format imagefolder \\\n\n"
    "      --images originals --link copy\n\n"
    "  # for datasets.load_dataset(\"parquet\", ...)\n\n"
    "  fercure export-cleaned -w ws -o cleaned-hf.parquet --format hf\n\n"
    "  # 200 queue cards for Label Studio; its JSON export comes back\n\n"
    "  fercure export-cleaned -w ws -o ls-queue --format label-studio --cards 200\n\n"
    "  fercure export-cleaned -w ws -o cleaned.parquet --decisions ls-export.json"),
)
def export_cleaned(
    workspace: Path = WorkspaceOpt,
    output: Path = typer.Option(..., "--output", "-o", help="File to write (a folder for --format imagefolder, label-studio or cvat)."),
    policy: Policy = typer.Option(Policy.relabel, help="What to do with label issues: relabel, drop, flag (review only), soft (soft labels for ambiguous)."),
    format: Format = typer.Option(Format.parquet, "--format", help="parquet (the cleaned table), csv (with a provenance JSON beside it), imagefolder (OUT/<split>/<class>/ image files for torchvision's ImageFolder and datasets' imagefolder) hf (Parquet with an Image column and ClassLabel names for datasets.load_dataset('parquet')), label-studio (the review queue as Label Studio tasks with fercure's suggestions as scored predictions, and their labelling config) or cvat (the queue as a CVAT for images 1.1 task: images and annotations.xml)."),
    images: Images = typer.Option(Images.crops, "--images", help="imagefolder / hf / label-studio / cvat: the aligned face crops (PNG) or the original files."),
    link: Link = typer.Option(Link.symlink, "--link", help="imagefolder / label-studio / cvat with --images originals: symlink the originals or copy them."),
    cards: Optional[int] = typer.Option(None, "--cards", help="label-studio / cvat: hand over the first N cards of the review queue (default: the whole queue)."),
    image_url: str = typer.Option(DEFAULT_IMAGE_URL, "--image-url", help="label-studio: what each task's image reference starts with, followed by the image's path inside --output (default: Label Studio's local-files URL, with LOCAL_FILES_DOCUMENT_ROOT set to the --output folder; e.g. http://localhost:8081/ for a web server on that folder)."),
    force: bool = typer.Option(False, help="Overwrite an existing output file, or an earlier imagefolder export (never a folder fercure did not write)."),
    decisions: Optional[Path] = typer.Option(None, "--decisions", help="A reviewer's decisions (CSV or JSON saved from the review report, a Label Studio JSON export or a CVAT for images 1.1 XML of a label-studio / cvat export): each overrides fercure's action for its sample; invalid rows are listed and skipped (the export fails when none applies)."),
    strict: bool = typer.Option(False, "--strict", help="Fail, writing nothing, when any --decisions row cannot be applied."),
    allow_weak_drop: bool = typer.Option(False, "--allow-weak-drop", help="With --policy drop on a model the audit judged weak: drop its flagged rows anyway (refused without it)."),
    wait: bool = WaitOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Write cleaned, relabelled annotations with every original label and the reason for each change."""
    _json_errors(json_out)
    from fercure.stages.export import run_export
    from fercure.workspace import is_inside

    # Only an output inside the workspace is a write there; reading needs no lock (atomic renames).
    lock = _locked(workspace, wait) if is_inside(output, workspace) else contextlib.nullcontext()
    with lock:
        try:
            summary = run_export(workspace, output, policy=policy.value, fmt=format.value, force=force,
                                 decisions=decisions, images=images.value, link=link.value, strict=strict,
                                 allow_weak_drop=allow_weak_drop, cards=cards, image_url=image_url)
        except FercureError as e:
            _fail(str(e), error=e)
    _emit(summary, "export-cleaned", workspace, json_out)


@app.command(epilog=_examples("Examples:\n\n  fercure demo -w demo-ws\n\n"
                              "  # 12 images per class, under a minute\n\n  fercure demo -w demo-ws --limit 12 --epochs 5"))
def demo(
    workspace: Path = typer.Option(Path("demo-ws"), "--workspace", "-w"),
    data: Optional[Path] = typer.Option(None, help="Sample data folder: images/, labels.csv and, for the scorecard, ferplus_reference.csv (default: the repo's sample_data/)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Use only the first N images of each class in labels.csv (a quick look; too few to learn from)."),
    epochs: int = typer.Option(15, min=1),
    image_size: int = typer.Option(48, min=16, help="Crop and training size in pixels (the FER2013 crops are 48 px)."),
    batch_size: int = typer.Option(64, min=2),
    backbone: str = typer.Option("resnet18", help="Any timm model name."),
    backbone_arg: list[str] = typer.Option([], "--backbone-arg", help="KEY=VALUE passed to timm.create_model (repeatable). Default for resnet18: channels=[32,64,128,256], a half-width ResNet-18 for 48 px faces; --backbone-arg channels=[64,128,256,512] gives the full width."),
    device: Device = typer.Option(Device.auto),
    force: bool = typer.Option(True, help="Overwrite WS/cleaned.parquet from an earlier demo."),
    wait: bool = WaitOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Run all four stages on sample_data/ (1,800 FER2013 crops: a few minutes on a CPU); export to
    WS/cleaned.parquet, then score the audit against the FER+ votes (WS/scorecard.json)."""
    _json_errors(json_out)
    data = data or find_sample_data()
    if data is None or not (data / "labels.csv").exists():
        _fail("sample_data/ not found: pass --data PATH (a folder with images/ and labels.csv).")
    _check_demo_workspace(workspace, data)  # before the lock writes anything there
    try:
        backbone_args = parse_backbone_args(backbone_arg)
    except FercureError as e:
        _fail(str(e))
    if backbone == "resnet18" and not backbone_args:
        backbone_args = dict(DEMO_RESNET18_ARGS)
    config = TrainConfig(image_size=image_size, epochs=epochs, batch_size=batch_size, device=device.value,
                         backbone=backbone, backbone_args=backbone_args)
    with _locked(workspace, wait, create=True):  # one lock over all four stages
        _demo_stages(data, workspace, limit, config, force, json_out)


# The command list shows each command's first sentence in full (click would cut it to fit one line).
for _command in app.registered_commands:
    _command.short_help = _command.short_help or " ".join((_command.callback.__doc__ or "").split("\n\n")[0].split())


if __name__ == "__main__":  # pragma: no cover
    app()

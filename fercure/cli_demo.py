"""`fercure demo`'s steps and defaults: the sample data, its label subset, the four stages in a row
and the scorecard against the FER+ votes (fercure.cli declares the command and its options)."""

from __future__ import annotations

from pathlib import Path

import typer

from fercure.cli_output import _emit, _fail, _left_out, _run, bound_json
from fercure.errors import FercureError
from fercure.train.config import TrainConfig


def find_sample_data() -> Path | None:
    """sample_data/ beside the package (a source checkout) or in the current folder."""
    for candidate in (Path(__file__).resolve().parent.parent / "sample_data", Path.cwd() / "sample_data"):
        if (candidate / "labels.csv").exists():
            return candidate
    return None


def _demo_labels(data: Path, workspace: Path, limit: int | None) -> Path:
    """The demo's label file: DATA/labels.csv, or with ``limit`` its first ``limit`` rows of each
    class (written to WS/demo-labels.csv; the first 12 per class are the earlier 84-image sample)."""
    labels = data / "labels.csv"
    if limit is None:
        return labels
    import pandas as pd

    from fercure.workspace import atomic_path

    df = pd.read_csv(labels, dtype=str, keep_default_na=False)
    if "label" not in df.columns:
        _fail(f"--limit needs a 'label' column in {labels} (it has {', '.join(df.columns)}).")
    subset = df.groupby("label", sort=False).head(limit)
    out = Path(workspace) / "demo-labels.csv"
    with atomic_path(out) as tmp:
        subset.to_csv(tmp, index=False)
    return out


def _demo_scorecard(data: Path, workspace: Path, quiet: bool = False) -> dict | None:
    """Score the audit against DATA/ferplus_reference.csv (FER+ votes, evaluation only); print the
    scorecard and write it to WS/scorecard.json. Skipped, with one line, without a reference."""
    import pandas as pd

    from fercure.console import console, text
    from fercure.scorecard import render_scorecard, scorecard
    from fercure.workspace import Workspace, atomic_write_json, read_metadata, read_table

    if quiet:  # --json: notes go to stderr, the card into the JSON
        from fercure.console import err_console as console
    reference_path = data / "ferplus_reference.csv"
    if not reference_path.exists():
        console.print(f"Scorecard skipped: {text(reference_path)} not found (it holds the FER+ votes the audit is "
                      "scored against).", soft_wrap=True, highlight=False)
        return None
    audit_path = Workspace(workspace).audit
    try:
        card = scorecard(read_table(audit_path), pd.read_csv(reference_path, keep_default_na=False),
                         read_metadata(audit_path).get("stats"))
    except ValueError as e:
        console.print(f"Scorecard skipped: {text(e)}.", soft_wrap=True, highlight=False)
        return None
    card["reference"] = str(reference_path)
    atomic_write_json(Path(workspace) / "scorecard.json", card)
    if not quiet:
        console.print(render_scorecard(card))
    return card


def _check_demo_workspace(workspace: Path, data: Path) -> None:
    """The demo's workspace may not lie in its input folder: refuse before anything (the lock,
    demo-labels.csv) is written there."""
    from fercure.workspace import is_inside

    if is_inside(workspace, data):
        _fail(f"--workspace {workspace} lies inside the sample data {data}; fercure never writes into its input. "
              "Choose a workspace outside it, e.g. -w demo-ws.")
    from fercure.workspace import Workspace

    ws = Workspace(workspace)
    if not ws.root.is_dir() or not any(p.name not in (".lock", ws.marker.name) for p in ws.root.iterdir()):
        return
    try:
        before = ws.prepared_inputs()[0] if ws.manifest.is_file() else None
        other = before is None or before != str((data / "images").resolve())
    except FercureError:  # fercure's own manifest, unreadable: prepare rebuilds it, as it does for `prepare`
        before, other = None, False
    reviewed = ws.reviewed_work()
    if other or reviewed:
        why = (f"holds a person's review ({'; '.join(reviewed)})" if reviewed else
               f"was prepared from {before}" if before else "holds files that are not an earlier demo's")
        replaced = ws.contents() + ([f"{ws.root / 'cleaned.parquet'}"] if (ws.root / "cleaned.parquet").exists() else [])
        _fail(f"--workspace {workspace} {why}; the demo would replace "
              + ("; ".join(replaced) or "what is there") + ". Run the demo in a new workspace (e.g. -w demo-ws2).")


# The demo's backbone: ResNet-18 at half width trains 2.7x more images per CPU-second than the full
# width at 48 px (benchmarks/RESULTS.md, "demo"), so the first contact stays short on a laptop.
DEMO_RESNET18_ARGS = {"channels": [32, 64, 128, 256]}


def _demo_stages(data: Path, workspace: Path, limit: int | None, config: TrainConfig, force: bool,
                 as_json: bool = False) -> None:
    from fercure.console import console, text
    from fercure.stages.audit import run_audit
    from fercure.stages.export import run_export
    from fercure.stages.prepare import run_prepare
    from fercure.stages.train import run_train
    from fercure.workspace import Workspace

    from fercure.summary import as_json as summary_json

    def rule(title: str) -> None:
        if not as_json:  # --json: stdout holds the one JSON object only
            console.rule(title)

    # Each stage prints its summary as it ends; with --json they are collected into one object.
    emit = None if as_json else False
    labels = _demo_labels(data, workspace, limit)
    rule("[bold]1/4 prepare")
    summaries = [("prepare", _run(run_prepare, "prepare", as_json=emit, input_root=data / "images",
                                  workspace=workspace, labels_file=labels, device=config.device,
                                  image_size=config.image_size))]
    rule("[bold]2/4 train")
    summaries.append(("train", _run(run_train, "train", as_json=emit, workspace=workspace, config=config)))
    rule("[bold]3/4 audit-labels")
    summaries.append(("audit-labels", _run(run_audit, "audit-labels", as_json=emit, workspace=workspace)))
    rule("[bold]4/4 export-cleaned")
    try:
        summary = run_export(workspace, Path(workspace) / "cleaned.parquet", force=force)
    except FercureError as e:
        _fail(str(e), error=e)
    summaries.append(("export-cleaned", summary))
    if not as_json:
        _emit(summary, "export-cleaned", workspace, False)
    rule("[bold]scorecard")
    card = _demo_scorecard(data, workspace, quiet=as_json)
    report = Workspace(workspace).report.resolve()
    if as_json:
        import json

        left: dict[str, int] = {}
        stages = [bound_json(summary_json(s, t, workspace), left) for t, s in summaries]
        typer.echo(json.dumps({"stages": stages, "scorecard": card, "report": str(report),
                               **({"left_out": _left_out(left)} if left else {})}, ensure_ascii=False, default=str))
    else:
        from fercure.report.page import export_command

        run_id = summaries[1][1].run_id
        console.print(f"Review report: {text(report)} (open it in a browser, record decisions, save them, then, "
                      f"in the folder the browser saved them to: `{text(export_command(str(workspace), run_id))}`).",
                      soft_wrap=True, highlight=False)

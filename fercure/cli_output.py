"""What every `fercure` command shares around its stage: the stage run with its progress display,
errors as exit codes (and, under --json, as a JSON object on stdout), and the summary printed as
tables or as bounded JSON. No logic here; fercure.cli defines the commands."""

from __future__ import annotations

import contextlib
import dataclasses
import os

import typer

from fercure.errors import FercureError
from fercure.files import is_disk_full


# Set by a command run with --json (reset before every command): an error is then also a JSON object
# on stdout, so a script reading stdout gets one whether the command worked or not.
_JSON_ERRORS = False


def _json_errors(on: bool) -> None:
    global _JSON_ERRORS
    _JSON_ERRORS = bool(on)


def _fail(message: str, code: int = 1, error: BaseException | None = None) -> None:
    from fercure.console import err_console, text
    from fercure import launch

    launch.record_error(message)  # a rank of `--nproc N`: the launcher prints it once
    if not launch.launched_rank() or os.environ.get("RANK", "0").strip() in ("", "0"):
        if _JSON_ERRORS:
            import json

            from fercure.summary import error_json

            typer.echo(json.dumps(error_json(message, error, code), ensure_ascii=False))
        err_console.print(f"[bold red]error:[/] {text(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _fmt(value: object) -> str:
    """Short, readable cell text: 3 significant digits for floats, compact nested structures."""
    import json

    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, default=str, separators=(", ", ": "))[:200]
    return str(value)


def _missing(value: object) -> bool:
    """None or NaN: a value that was not measured (printed as such, never as "None" or "nan")."""
    return value is None or (isinstance(value, float) and value != value)


def _render(summary: object, title: str) -> None:
    """Render a stage summary dataclass: scalars as one table, each count dict/DataFrame as its own.
    Nested dicts (thresholds, statistics) are left to the files' metadata: only their scalars show."""
    import numbers

    import pandas as pd
    from rich.table import Table

    from fercure.console import cell, console, counts_table, kv_table, text

    scalars: dict[str, str] = {}
    extras = []
    for f in dataclasses.fields(summary):
        if f.metadata.get("hidden"):  # shown another way (e.g. through ``warning``)
            continue
        value = getattr(summary, f.name)
        label = f.name.replace("_", " ")
        if isinstance(value, dict):
            if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
                extras.append(counts_table(label, value, key=label.split()[0], limit=TABLE_MAX_ROWS))
            elif value:
                # machine keys (--json's) read with spaces here; what was not measured is left out
                flat = {str(k).replace("_", " "): _fmt(v) for k, v in value.items()
                        if not isinstance(v, (dict, list)) and not _missing(v)}
                if flat:
                    extras.append(kv_table(label, flat))
        elif isinstance(value, pd.DataFrame):
            if not value.empty:
                shown = value.iloc[:TABLE_MAX_ROWS, :TABLE_MAX_COLS]
                cut = [f"{n} more {what}" for n, what in ((len(value) - len(shown), "rows"),
                                                         (value.shape[1] - shown.shape[1], "columns")) if n > 0]
                t = Table(title=label, title_justify="left",
                          caption=f"({', '.join(cut)}: see --json or the workspace's files)" if cut else None)
                t.add_column("")
                for c in shown.columns:
                    t.add_column(cell(c), justify="right")
                for idx, row in shown.iterrows():
                    cells = [cell("not measured" if _missing(v) else _fmt(v.item() if hasattr(v, "item") else v))
                             for v in row.tolist()]
                    t.add_row(cell(idx), *cells)
                extras.append(t)
        elif isinstance(value, (list, tuple)):
            if value:  # long lists (skipped samples) in full in --json only
                shown = list(map(str, value[:10])) + ([f"... and {len(value) - 10} more"] if len(value) > 10 else [])
                scalars[label] = "\n".join(shown)
        elif value is not None:
            scalars[label] = _fmt(value.item() if isinstance(value, numbers.Number) and hasattr(value, "item") else value)
    for prop in ("images_per_s", "slowest_stage"):
        if hasattr(type(summary), prop):
            scalars[prop.replace("_", " ")] = _fmt(getattr(summary, prop))
    console.print(kv_table(title, scalars))
    for t in extras:
        console.print(t)
    warning = getattr(summary, "warning", None)
    if warning:
        from rich.panel import Panel

        console.print(Panel(text(warning), title="warning", border_style="bold red"))


# --json and the terminal tables stay bounded whatever the class count (a 900-class transition
# matrix printed in full was 170 MB): the full tables are in the workspace's files.
JSON_MAX_LIST = 1000  # items of any one list in --json
JSON_MAX_MAP = 100  # entries of any one mapping (a table is a mapping of mappings: 100 × 100)
TABLE_MAX_ROWS, TABLE_MAX_COLS = 50, 12  # a summary table in the terminal


def bound_json(value, left_out: dict[str, int] | None = None, field: str = ""):
    """``value`` with every list cut to JSON_MAX_LIST items and every mapping to JSON_MAX_MAP
    entries; ``left_out`` counts what was cut, per top-level field. Pure."""
    left_out = {} if left_out is None else left_out
    if isinstance(value, dict):
        items = list(value.items())
        limit = JSON_MAX_MAP if field else len(items)  # the summary's own fields all stay
        if len(items) > limit:
            left_out[field] = left_out.get(field, 0) + len(items) - limit
        return {k: bound_json(v, left_out, field or str(k)) for k, v in items[:limit]}
    if isinstance(value, list):
        if len(value) > JSON_MAX_LIST:
            left_out[field] = left_out.get(field, 0) + len(value) - JSON_MAX_LIST
        return [bound_json(v, left_out, field) for v in value[:JSON_MAX_LIST]]
    return value


def _left_out(left: dict[str, int]) -> dict[str, str]:
    """``--json``'s note of what bounding left out: one wording for every command."""
    return {k: f"{n} entries not listed here (the workspace's files hold them all)" for k, n in left.items()}


def _emit(summary: object, title: str, workspace: object, as_json: bool) -> None:
    """The summary: JSON on stdout (``--json``), or tables, then where the outputs are and what
    to run next."""
    from fercure.summary import as_json as summary_json

    data = summary_json(summary, title, workspace)
    if as_json:
        import json

        left: dict[str, int] = {}
        data = bound_json(data, left)
        if left:
            data["left_out"] = _left_out(left)
        typer.echo(json.dumps(data, ensure_ascii=False))
        return
    from fercure.console import console, text

    _render(summary, title)
    if data.get("outputs"):
        console.print(f"[bold]Outputs:[/] {text(', '.join(data['outputs']))}", highlight=False, soft_wrap=True)
    if data.get("next"):
        console.print(f"[bold]Next:[/] {text(data['next'])}", highlight=False, soft_wrap=True)


def _run(fn, title: str, as_json: bool | None = False, quiet: bool = False, **kwargs):
    """Run a stage with a progress display and emit its summary (``as_json``: as JSON; None: the
    caller prints it). ``quiet`` (the ranks of a data-parallel run other than 0) shows neither,
    only errors."""
    from fercure.console import RichReporter
    from fercure.progress import NULL

    try:
        with (contextlib.nullcontext(NULL) if quiet else RichReporter()) as reporter:
            summary = fn(reporter=reporter, **kwargs)
    except FercureError as e:
        _fail(str(e), error=e)
    except KeyboardInterrupt:
        _fail(_interrupted(title, kwargs.get("workspace")), 130)
    except OSError as e:  # a write outside atomic_path (those already say which file)
        if not is_disk_full(e):
            raise
        where = f" while writing {e.filename}" if e.filename else ""
        _fail(f"Disk full{where} ({e.strerror or e}). Free space on the workspace's disk, or use a workspace "
              "on a disk with more room, and run the command again.")
    if not quiet and as_json is not None:  # None: the caller (demo) prints the summaries itself
        _emit(summary, title, kwargs.get("workspace"), as_json)
    return summary


def _interrupted(title: str, workspace: object) -> str:
    """What to run after Ctrl-C. prepare resumes by itself; train only with --resume (the same
    command again would start a new run from epoch 1)."""
    if title == "train":
        return (f"train interrupted. Finished epochs are kept in the run's checkpoint: run `fercure train "
                f"-w {workspace} --resume` to continue it (without --resume a new run starts).")
    if title == "prepare":
        return "prepare interrupted. Finished chunks are kept: run the same command again to resume."
    return f"{title} interrupted; nothing was half-written. Run the same command again."

"""Terminal rendering: rich progress bars for the stages' Reporter interface, and summary tables.

Every string that comes from the user's data (labels, paths, messages quoting them) goes through
``text()`` (``cell()`` in a table) before rich sees it: rich reads ``[...]`` as markup, so a label
such as ``[/b]angry`` would raise MarkupError after the stage finished, and ``[red]x.png`` would
print as ``x.png``.
"""

from __future__ import annotations

import sys
from typing import Mapping

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

# emoji=False: rich would turn ":x:" in a label or a path into an emoji; fercure prints no emoji codes.
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)

# Control characters and line separators other than a newline (U+2028, U+2029, NEL, VT, FF, CR, ESC)
# would break a table row or move the cursor: each is shown as its escape (\u2028).
_SHOWN_AS_ESCAPE = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x09), *range(0x0b, 0x20), 0x7f)}
_SHOWN_AS_ESCAPE.update({c: f"\\x{c:02x}" for c in range(0x80, 0xa0)})
_SHOWN_AS_ESCAPE.update({0x2028: "\\u2028", 0x2029: "\\u2029"})
_CELL_ESCAPE = {**_SHOWN_AS_ESCAPE, 0x0a: "\\n", 0x09: "\\t"}


def text(value: object) -> str:
    """``value`` as text rich prints literally: no markup, no emoji codes, no control characters
    or line separators but the newline (a message may have several lines)."""
    return escape(str(value).translate(_SHOWN_AS_ESCAPE))


def cell(value: object) -> str:
    """``text`` for a table cell: a newline or a tab is shown as its escape too (one row per entry)."""
    return escape(str(value).translate(_CELL_ESCAPE))


class _RichHandle:
    def __init__(self, progress: Progress, task_id) -> None:
        self._progress, self._id = progress, task_id

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._id, n)

    def close(self) -> None:
        self._progress.update(self._id, visible=True)


def interactive() -> bool:
    """Both output streams are terminals: a live progress bar is seen as it moves."""
    return sys.stdout.isatty() and sys.stderr.isatty()


class RichReporter:
    """Reporter (see fercure.progress) drawing one bar per task; use as a context manager.

    ``log_epochs``: stages also log a line per epoch (loss, accuracy) when the output is not a
    terminal, where rich draws the bars only at the end; the lines go to stderr like the bars."""

    def __init__(self) -> None:
        self.log_epochs = not interactive()
        self._progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=False,
        )

    def __enter__(self) -> "RichReporter":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def task(self, description: str, total: int | None) -> _RichHandle:
        return _RichHandle(self._progress, self._progress.add_task(text(description), total=total))

    def log(self, message: str) -> None:
        self._progress.console.print(text(message))


def counts_table(title: str, counts: Mapping[str, int], key: str = "value", total: bool = True,
                 limit: int | None = None) -> Table:
    """One row per key (the first ``limit``, then a row saying how many more), and the total."""
    table = Table(title=title, title_justify="left")
    table.add_column(key)
    table.add_column("count", justify="right")
    items = list(counts.items())
    for k, v in items[:limit]:
        table.add_row(cell(k), f"{v:,}")
    if limit is not None and len(items) > limit:
        table.add_row(f"... {len(items) - limit} more", f"{sum(v for _, v in items[limit:]):,}")
    if total and counts:
        table.add_row("[bold]total", f"[bold]{sum(counts.values()):,}")
    return table


def kv_table(title: str, rows: Mapping[str, object]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for k, v in rows.items():
        table.add_row(cell(k), text(v))
    return table

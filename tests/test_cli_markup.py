"""User strings that look like rich markup ([/b]angry, [red]x.png) print literally and never crash
a stage after its work is done."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from typer.testing import CliRunner

from fercure import cli
from fercure.cli import app

runner = CliRunner()


def _image(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def test_markup_in_labels_and_paths_is_printed_literally(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths: short enough that no table wraps them
    data = Path("data")
    data.mkdir()
    _image(data / "[red]x.png", 0)
    _image(data / "y.png", 1)
    labels = Path("[red]labels.csv")
    # cp1252 (é): prepare logs a note naming the label file
    labels.write_bytes("path,label\n[red]x.png,[/b]angry\ny.png,happy\ncaf\u00e9.png,happy\n".encode("cp1252"))
    # café.png is not on disk: 1 row of 3 rejected, more than the default --max-rejected allows
    result = runner.invoke(app, ["prepare", "data", "-l", str(labels), "-w", "[b]ws", "--device", "cpu",
                                 "--image-size", "32", "--max-rejected", "1"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "[/b]angry" in result.output  # class counts
    assert "[red]labels.csv is not valid UTF-8" in result.output  # the note
    assert "[b]ws" in result.output  # the workspace path in the summary
    assert Path("[b]ws/manifest.parquet").exists()

    Path("[red]x.html").write_text("mine")
    result = runner.invoke(app, ["audit-labels", "-w", "[b]ws", "--report", "[red]x.html"])
    assert result.exit_code == 1 and "[red]x.html already exists" in result.output
    assert "Traceback" not in result.output


def test_summary_tables_escape_user_strings(capsys):
    @dataclasses.dataclass
    class Summary:
        workspace: Path
        class_counts: dict
        per_class: pd.DataFrame
        notes: list

    per_class = pd.DataFrame({"n": [3, 4], "[i]col": [0.5, 0.25]}, index=["[/b]angry", "[bold]happy"])
    cli._render(Summary(Path("[red]ws"), {"[/b]angry": 3, "[bold]happy": 4}, per_class,
                        ["see [red]x.png"]), "audit-labels")
    out = capsys.readouterr().out
    for literal in ("[red]ws", "[/b]angry", "[bold]happy", "[i]col", "see [red]x.png"):
        assert literal in out


def test_emoji_codes_and_line_separators_in_user_text_print_literally():
    from fercure.console import console, counts_table, text

    with console.capture() as cap:
        console.print(counts_table("classes", {"sad:x:": 3, "a\u2028b": 2, "c\nd": 1}))
        console.print(text("label :thumbs_up: in \x1b[31mred"))
    out = cap.get()
    assert "sad:x:" in out and ":thumbs_up:" in out and "\u274c" not in out and "\U0001f44d" not in out
    assert "\u2028" not in out and "\x1b[31m" not in out and "a\\u2028b" in out and "\\x1b[31mred" in out
    assert "c\\nd" in out  # one table row per class
    rows = [line for line in out.splitlines() if "│" in line and any(ch.isdigit() for ch in line)]
    assert len(rows) == 4  # the three classes and the total

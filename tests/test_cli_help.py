"""`--help` at 80 columns: every option name, metavar choice and default appears in full, no line
is cut or runs past the width, and every example command stays on its own line."""

from __future__ import annotations

import enum
import re

import click
import pytest
import typer
from typer.testing import CliRunner

from fercure.cli import app

runner = CliRunner()
COMMANDS = typer.main.get_command(app).commands


def render(*args: str, width: int = 80) -> str:
    res = runner.invoke(app, [*args, "--help"], terminal_width=width, env={"COLUMNS": str(width)})
    assert res.exit_code == 0, res.output
    return res.output


def _default_text(param: click.Option) -> str | None:
    if param.default is None or param.hidden or not param.show_default and param.show_default is not None:
        return None
    value = param.default
    if isinstance(value, enum.Enum):
        value = value.value
    if param.is_flag and param.secondary_opts:
        return (param.opts if value else param.secondary_opts)[0].lstrip("-")
    if param.is_flag or isinstance(value, (list, tuple)):
        return None
    return str(value)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_at_80_columns_shows_every_option_and_default_in_full(name: str):
    out = render(name)
    assert "…" not in out and not any(line.rstrip().endswith("...") for line in out.splitlines()), out
    assert max(len(line) for line in out.splitlines()) <= 80, out
    # a default may wrap onto the next line (also after a hyphen, as click wraps), never be cut
    flat = re.sub(r"(\w)- (\w)", r"\1-\2", " ".join(out.split()))
    for param in COMMANDS[name].params:
        if not isinstance(param, click.Option):
            continue
        for opt in param.opts + param.secondary_opts:
            assert opt in out, (opt, out)
        if isinstance(param.type, click.Choice):
            for choice in param.type.choices:
                assert str(choice) in flat, (choice, out)
        default = _default_text(param)
        if default is not None:
            assert f"default: {default}" in flat, (param.name, default, out)
    if COMMANDS[name].help:
        assert " ".join(COMMANDS[name].help.split()) in flat


def test_command_list_names_each_command_in_full():
    out = re.sub(r"(\w)- (\w)", r"\1-\2", " ".join(render().split()))
    for name, command in COMMANDS.items():
        first = " ".join(command.help.split("\n\n")[0].split())
        assert f"{name} {first}" in out, (name, out)


def test_examples_are_one_command_per_line():
    """Click rewraps help text to the width; an example broken in the middle could not be pasted."""
    for name in COMMANDS:
        out = render(name, width=60)  # narrower than any example
        lines = out.split("Examples:")[-1].splitlines()
        commands = [line.strip() for line in lines if line.strip().startswith("fercure ")]
        assert commands, out
        for line in lines:
            s = line.strip()
            assert not s or s.startswith(("fercure ", "#", "--")), (name, line)


def test_cli_waits_passively_unless_told_otherwise():
    """The CLI sets OMP_WAIT_POLICY=PASSIVE before torch (and its OpenMP runtime) loads, and keeps
    the user's own setting (benchmarks/bench_contention.py measured why)."""
    import os
    import subprocess
    import sys

    code = ("import os, sys; import fercure.cli; assert 'torch' not in sys.modules; import torch; "
            "print(os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "PASSIVE", out.stderr
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ACTIVE", out.stderr

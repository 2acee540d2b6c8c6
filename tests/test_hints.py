"""Every command fercure prints for the user to run next runs as printed: the missing-workspace
hint, the audit's export hint (also after an earlier export, as after the demo), and the review
page's export command with the decisions file under the name the page saves it."""

from __future__ import annotations

import html
import json
import re
import shlex

import pandas as pd
from typer.testing import CliRunner

from fercure.cli import app
from test_report import make_workspace, small_audit

runner = CliRunner()


def run_hint(command: str, **placeholders: str):
    """Run a printed `fercure ...` command through the CLI, with UPPERCASE placeholders filled in."""
    for name, value in placeholders.items():
        command = command.replace(name, shlex.quote(value))
    assert not re.search(r"\b[A-Z_]{4,}\b", command), f"unfilled placeholder in {command!r}"
    args = shlex.split(command)
    assert args[0] == "fercure", command
    return runner.invoke(app, args[1:])


def backticked(text: str) -> list[str]:
    return re.findall(r"`(fercure [^`]+)`", " ".join(text.split()))


def test_missing_workspace_hint_names_the_input_and_runs(tmp_path):
    res = runner.invoke(app, ["train", "-w", str(tmp_path / "ws-none")])
    assert res.exit_code == 1
    (hint,) = backticked(res.output)
    assert hint.startswith("fercure prepare INPUT_FOLDER -w ")
    data = tmp_path / "data" / "happy"
    data.mkdir(parents=True)
    followed = run_hint(hint, INPUT_FOLDER=str(tmp_path / "data"))
    assert followed.exit_code != 2, followed.output  # 0.2 printed it without the input: a usage error


def test_audit_export_hint_runs_as_printed_also_after_an_earlier_export(tmp_path):
    man, preds, _ = small_audit()
    ws = make_workspace(tmp_path / "ws", man, preds)
    for _ in range(2):  # the second time WS/cleaned.parquet exists (as after the demo)
        res = runner.invoke(app, ["audit-labels", "-w", str(ws.root), "--json"])
        assert res.exit_code == 0, res.output
        hint = json.loads(res.stdout)["next"].split("  (")[0]
        followed = run_hint(hint)
        assert followed.exit_code == 0, (hint, followed.output)
    assert (ws.root / "cleaned.parquet").exists()


def test_review_page_export_command_runs_as_printed(tmp_path, monkeypatch):
    man, preds, _ = small_audit()
    ws = make_workspace(tmp_path / "ws", man, preds)
    assert runner.invoke(app, ["audit-labels", "-w", str(ws.root)]).exit_code == 0
    page = ws.report.read_text(encoding="utf-8")
    command = html.unescape(re.search(r'<code id="next-cmd">(.*?)</code>', page).group(1))
    saved = re.search(r"--decisions (\S+)", command).group(1)
    # the browser saves the file under the name the page's script builds from its stem
    stem = json.loads(re.search(r'id="fercure-data">(.*?)</script>', page, re.S).group(1))["stem"]
    assert saved == stem + ".csv"
    monkeypatch.chdir(tmp_path)  # where the browser saved it
    pd.DataFrame({"sample_id": [man["sample_id"][0]], "action": ["drop"], "label": [""],
                  "given_label": [man["label"][0]], "source_path": [man["source_path"][0]]}).to_csv(saved, index=False)
    for _ in range(2):  # again after the first export: still runs
        followed = run_hint(command)
        assert followed.exit_code == 0, (command, followed.output)

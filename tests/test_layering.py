"""The layering the code relies on: no import circles among fercure's modules, errors in their own
module (a training or machine failure is not a workspace error), enumerated values declared once."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import fercure
from fercure import errors

PACKAGE = Path(fercure.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the fercure modules it imports, anywhere in its body (function-level imports count:
    a lazy import hides a circle, it does not break it)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                # `from pkg import submodule` depends on the submodule (its package's __init__ runs
                # first, but importing a sibling through it is not a circle)
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    deps.add(name)
        graph[mod] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_store_and_workspace_do_not_import_each_other():
    graph = import_graph()
    assert "fercure.workspace" not in graph["fercure.store"]
    assert "fercure.store" in graph["fercure.workspace"]


def test_no_import_circles():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("name", ["TrainingDivergedError", "DistributedError", "DeviceError",
                                  "PretrainedWeightsError"])
def test_run_and_machine_errors_are_not_workspace_errors(name):
    cls = getattr(errors, name)
    assert issubclass(cls, errors.FercureError) and not issubclass(cls, errors.WorkspaceError)


def test_error_classes_are_the_same_objects_where_they_used_to_live():
    from fercure import device, workspace
    from fercure.train import distributed, loop, model

    assert loop.TrainingDivergedError is errors.TrainingDivergedError
    assert distributed.DistributedError is errors.DistributedError
    assert device.DeviceError is errors.DeviceError
    assert model.PretrainedWeightsError is errors.PretrainedWeightsError
    assert workspace.WorkspaceError is errors.WorkspaceError and workspace.damaged is errors.damaged


def test_cli_choices_are_the_declared_values():
    from fercure import cli, export, layouts
    from fercure.audit import THRESHOLD_METHODS
    from fercure.faces import align, quality
    from fercure.rerank import QUEUE_ORDERS
    from fercure.train import config

    pairs = [(cli.Pool, config.POOLS), (cli.StoreMode, config.STORE_MODES), (cli.Device, config.DEVICES),
             (cli.ThresholdMethod, THRESHOLD_METHODS), (cli.Policy, export.POLICIES), (cli.Format, export.FORMATS),
             (cli.Crop, align.CROP_MODES), (cli.MultiFace, quality.MULTI_FACE_POLICIES),
             (cli.NoFace, quality.NO_FACE_POLICIES), (cli.Images, layouts.IMAGE_SOURCES), (cli.Link, layouts.LINKS),
             (cli.QueueOrder, QUEUE_ORDERS)]
    for enum, values in pairs:
        assert tuple(m.value for m in enum) == tuple(values), enum


def test_train_command_defaults_are_train_config_defaults():
    """Every option of `fercure train` that names a TrainConfig field defaults to that field's default."""
    import inspect

    from fercure.cli import train
    from fercure.train.config import TrainConfig

    defaults = {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
                for f in dataclasses.fields(TrainConfig)}  # a list field (trusted) has a factory
    checked = 0
    for name, param in inspect.signature(train).parameters.items():
        if name in defaults and name != "workspace":
            value = param.default.default
            assert getattr(value, "value", value) == defaults[name], name
            checked += 1
    assert checked >= 20


def test_face_statuses_declared_once():
    from fercure import schema
    from fercure.stages import prepare

    assert prepare.STATUSES is schema.FACE_STATUSES

"""Every error fercure reports to a user, in one place.

Each carries a message that names the file (and row) and says what to do; the CLI prints it and
exits 1 (``FercureError``). ``WorkspaceError`` is the family for the workspace and its inputs;
failures of a training run or of the machine (divergence, the process group, the device,
pretrained weights) are their own kinds, not workspace errors.
"""

from __future__ import annotations

from pathlib import Path


class FercureError(Exception):
    """Something the user can fix; the message says what. The CLI prints it and exits 1."""


class WorkspaceError(FercureError):
    """The workspace or an input is not what a stage needs. The message says what to do."""


class OutputExistsError(WorkspaceError):
    """An output file is already there and --force was not given."""


class DamagedFileError(WorkspaceError):
    """A workspace file exists but cannot be read (truncated, overwritten); the message names the
    command that rebuilds it."""


class TableContractError(DamagedFileError):
    """A table does not meet its contract in fercure/schema.py (the message names file and column);
    handled as a damaged file: the stage that wrote it rebuilds it."""


def rebuild_hint(path: Path | str) -> str:
    """The command that rebuilds a workspace file, from where it lies in the layout below."""
    path = Path(path)
    parts = path.parts
    if "runs" in parts[:-1]:
        ws = Path(*parts[: len(parts) - 1 - parts[::-1].index("runs")])
        return f"Train a new run: `fercure train -w {ws}` (without --resume)."
    if path.name in ("manifest.parquet", "rejects.parquet"):
        return f"Re-run the same `fercure prepare INPUT -w {path.parent}` command: it rebuilds its files."
    if path.name == "crops.npy":
        return f"Re-run the same `fercure prepare INPUT -w {path.parent.parent}` command: it rebuilds its files."
    if path.name in ("audit.parquet", "report.html"):
        return f"Re-run `fercure audit-labels -w {path.parent}`."
    return "Write it again with the command that made it."


def damaged(path: Path | str, error: BaseException) -> DamagedFileError:
    err = DamagedFileError(f"{path} is damaged and cannot be read ({type(error).__name__}: {error}). "
                           + rebuild_hint(path))
    err.path = Path(path)
    return err


class WorkspaceLockedError(WorkspaceError):
    """Another fercure command holds the workspace lock."""


class DeviceError(FercureError):
    """The requested device is not there (e.g. --device cuda without a GPU)."""


class PretrainedWeightsError(FercureError):
    """A --pretrained state_dict does not fit the backbone."""


class TrainingDivergedError(FercureError):
    """The training loss became NaN/inf; the message says which run and what to change."""


class DistributedError(FercureError):
    """A data-parallel (torchrun) launch that cannot work as set up."""

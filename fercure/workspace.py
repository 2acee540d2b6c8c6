"""Workspace layout, stable ids, and atomic table/array writes.

Every stage reads what the stage before it wrote, through the paths here, and writes through
``write_table`` / ``atomic_path`` so that a run killed at any moment leaves either the old file or
the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fercure import __version__
from fercure import schema
from fercure.schema import SCHEMA_VERSION  # noqa: F401  (re-exported: where stages read it)
from fercure.store import open_store
# Re-exported: the errors and atomic writes lived here before they got modules of their own.
from fercure.errors import (  # noqa: F401
    DamagedFileError, FercureError, OutputExistsError, TableContractError, WorkspaceError, WorkspaceLockedError,
    damaged, rebuild_hint,
)
from fercure.files import (  # noqa: F401
    TMP_TAG, atomic_path, atomic_write_json, atomic_write_text, check_free_space, disk_full, disk_full_as_error,
    file_kind, pseudo_file,
    is_disk_full,
)

META_KEY = b"fercure"
# Written when fercure creates a workspace (or an export folder): cleanup only ever touches a folder
# that carries it, never a folder of the user's that was named by mistake.
WORKSPACE_MARKER = ".fercure-workspace"
EXPORT_MARKER = ".fercure-export"



def sample_id(relative_path: str) -> str:
    """Stable id of a sample: a hash of its source path relative to the input root (posix form)."""
    rel = Path(relative_path).as_posix()
    return hashlib.sha1(rel.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def is_inside(path: Path | str, root: Path | str) -> bool:
    """True when ``path`` is ``root`` or lies below it (after resolving links): fercure never
    writes there when ``root`` is an input folder."""
    path, root = Path(path).resolve(), Path(root).resolve()
    return path == root or root in path.parents


@dataclass(frozen=True)
class Workspace:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # prepare
    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def rejects(self) -> Path:
        return self.root / "rejects.parquet"

    @property
    def annotations(self) -> Path:
        """Every annotation of a vote file (several labels per image), when prepare read one."""
        return self.root / "annotations.parquet"

    @property
    def faces_dir(self) -> Path:
        return self.root / "faces"

    @property
    def store(self) -> Path:
        return self.faces_dir / "crops.npy"

    @property
    def prepare_parts(self) -> Path:
        """Per-chunk results of an unfinished prepare run (what resume picks up)."""
        return self.faces_dir / "parts"

    # train
    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def latest_run(self) -> str:
        pointer = self.runs_dir / "LATEST"
        if not pointer.exists():
            raise WorkspaceError(
                f"No finished training run in {self.runs_dir}. Run `fercure train -w {self.root}` first."
            )
        return pointer.read_text().strip()

    def set_latest_run(self, run_id: str) -> None:
        atomic_write_text(self.runs_dir / "LATEST", run_id + "\n")

    def mark_run_failed(self, run_id: str, error: BaseException) -> bool:
        """Write runs/<id>/FAILED (the error in one line) for a run that stopped before finishing and
        left nothing to resume; a run with checkpoint.pt stays resumable, a finished one untouched.
        Never raises: the error that stopped the run is the one to report."""
        run = self.run_dir(run_id)
        if not run.is_dir() or (run / "checkpoint.pt").exists() or (run / "predictions.parquet").exists():
            return False
        if isinstance(error, KeyboardInterrupt):
            line = "interrupted (Ctrl-C) before the first checkpoint"
        else:
            text = str(error).strip().splitlines()
            line = f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
        try:  # atomic: a full disk leaves no FAILED rather than an empty one
            atomic_write_text(run / "FAILED", line + "\n")
        except (OSError, WorkspaceError):
            return False
        return True

    def remove_dead_runs(self) -> int:
        """Delete run folders that hold nothing but config.json and/or FAILED: a run that failed or
        was killed before its first checkpoint, which can be neither resumed nor audited. Finished
        (predictions.parquet) and resumable (checkpoint.pt) runs hold more and are never touched.
        Only in a workspace fercure made (``is_fercure``) and only when config.json is one train wrote
        (it names the run or a fercure version). Only safe under the workspace lock: a run starting beside us
        holds only config.json too."""
        if not self.runs_dir.is_dir() or not self.is_fercure():
            return 0
        n = 0
        for run in sorted(self.runs_dir.iterdir()):
            if run.is_symlink() or not run.is_dir():
                continue
            names = {p.name for p in run.iterdir()}
            if names and names <= {"config.json", "FAILED"} and (names == {"FAILED"} or _fercure_config(run)):
                for name in names:
                    (run / name).unlink(missing_ok=True)
                run.rmdir()
                n += 1
        return n

    # audit
    @property
    def audit(self) -> Path:
        return self.root / "audit.parquet"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def reviewed(self) -> Path:
        return self.root / "reviewed.parquet"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def marker(self) -> Path:
        return self.root / WORKSPACE_MARKER

    def is_fercure(self) -> bool:
        """True when fercure made this folder its workspace: its marker is there, or (a workspace
        of fercure 0.2, before the marker) a manifest carrying fercure's metadata."""
        if self.marker.is_file():
            return True
        try:
            return self.manifest.is_file() and "fercure_version" in read_metadata(self.manifest)
        except (OSError, WorkspaceError):
            return False

    def remove_stale_temps(self) -> int:
        """Delete temporary files a killed run left behind (atomic writes name them .NAME.*.tmp),
        also inside each run folder, where a SIGTERM mid-checkpoint leaves .checkpoint.pt.*.tmp.
        Only in a folder a marker proves fercure's (``is_fercure``), and only files named the way
        ``atomic_path`` names them. Only safe under the workspace lock: another command's temp file
        would look stale too."""
        if not self.is_fercure():
            return 0
        runs = sorted(d for d in self.runs_dir.iterdir() if d.is_dir()) if self.runs_dir.is_dir() else []
        n = 0
        subs = [d / sub for d in runs for sub in ("members", "fits")]
        for folder in (self.root, self.faces_dir, self.runs_dir, *runs, *subs):
            if folder.is_dir():
                for tmp in folder.glob(f".*{TMP_TAG}*.tmp"):
                    tmp.unlink(missing_ok=True)
                    n += 1
        return n

    def run_ids(self) -> list[str]:
        """The ids of the run folders here (finished or not)."""
        return sorted(d.name for d in self.runs_dir.iterdir() if d.is_dir()) if self.runs_dir.is_dir() else []

    def reviewed_work(self) -> list[str]:
        """What in this workspace holds a person's review, which no command may replace unasked: runs
        trained with --trusted decisions, a cleaned table with reviewer decisions, saved decisions files."""
        found = []
        runs = sorted(d for d in self.runs_dir.iterdir() if d.is_dir()) if self.runs_dir.is_dir() else []
        found += [f"{d / 'trusted.parquet'} (run {d.name}, trained with reviewed decisions)"
                  for d in runs if (d / "trusted.parquet").is_file()]
        for table in sorted(self.root.glob("*.parquet")):
            if table in (self.manifest, self.rejects, self.audit):
                continue
            try:
                decided = pq.read_table(table, columns=["decided_by"]).column(0).to_pylist()
            except (pa.ArrowException, OSError, KeyError):
                continue
            n = sum(1 for d in decided if d == "reviewer")
            if n:
                found.append(f"{table} ({n:,} row(s) decided by a reviewer)")
        found += [f"{f} (saved review decisions)" for f in sorted(self.root.glob("decisions*"))
                  if f.suffix.lower() in (".csv", ".json") and f.is_file()]
        return found

    def contents(self) -> list[str]:
        """What a stage re-run from scratch would replace here, in words (empty for a new workspace)."""
        out = []
        if self.manifest.is_file():
            try:
                n = pq.ParquetFile(self.manifest).metadata.num_rows
                root = read_metadata(self.manifest).get("input_root")
                out.append(f"its manifest and face crops ({n:,} samples" + (f" from {root})" if root else ")"))
            except (pa.ArrowException, OSError, WorkspaceError):
                out.append(f"its manifest ({self.manifest}) and face crops")
        runs = [d for d in self.runs_dir.iterdir() if d.is_dir()] if self.runs_dir.is_dir() else []
        if runs:
            out.append(f"{len(runs)} training run(s) in {self.runs_dir}, which would describe other images")
        out += [f"its {what}" for path, what in ((self.audit, "audit"), (self.report, "report")) if path.is_file()]
        return out

    def owned(self) -> dict[Path, str]:
        """The files and folders stages write here, with what they are: never an output's target."""
        return {
            self.manifest: "the workspace's manifest (written by prepare)",
            self.rejects: "the workspace's rejects table (written by prepare)",
            self.annotations: "the workspace's annotations table (written by prepare)",
            self.faces_dir: "the workspace's crop folder (written by prepare)",
            self.runs_dir: "the workspace's training runs (written by train)",
            self.audit: "the workspace's audit table (written by audit-labels)",
            self.report: "the workspace's report (written by audit-labels)",
            self.reviewed: "the decisions the workspace's audit applied (written by audit-labels --trusted)",
            self.lock_file: "the workspace's lock file",
            self.marker: "the workspace's marker file",
        }

    def prepared_inputs(self) -> tuple[str | None, str | None]:
        """(input root, label file) as prepare recorded them in the manifest's metadata; (None, None)
        before prepare ran. Both are absolute paths."""
        if not self.manifest.exists():
            return None, None
        meta = read_metadata(self.manifest)
        return meta.get("input_root"), meta.get("labels_file")

    def check_output(self, path: Path | str, *, force: bool, option: str,
                     may_replace: Iterable[Path] = ()) -> Path:
        """``check_output_path`` for an output of a stage on this workspace: never into the input
        folder, over the label file or over a file the workspace owns (except ``may_replace``)."""
        input_root, labels_file = self.prepared_inputs()
        keep = {Path(p).resolve() for p in may_replace}
        protected = {p: d for p, d in self.owned().items() if p.resolve() not in keep}
        if labels_file:
            protected[Path(labels_file)] = "the label file given to prepare"
        return check_output_path(path, force=force, option=option, input_root=input_root,
                                 protected=protected, may_replace=keep)

    def check_readable(self, *, resume: bool = False) -> None:
        """Fail before a stage starts, naming the file and the command that rebuilds it, when the
        crop store is damaged or (``resume``) an unfinished run's config.json cannot be read.
        Parquet tables are checked as they are read (``read_table``)."""
        if self.store.exists():
            open_store(self.store)
        if not (resume and self.runs_dir.is_dir()):
            return
        for run in sorted(self.runs_dir.iterdir()):
            # unfinished: a checkpoint and no predictions (what --resume picks from)
            if not ((run / "checkpoint.pt").exists() and not (run / "predictions.parquet").exists()):
                continue
            config = run / "config.json"
            try:
                json.loads(config.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise DamagedFileError(
                    f"{config} is damaged or missing ({type(e).__name__}: {e}); run {run.name} cannot be "
                    f"resumed. Start a new run: `fercure train -w {self.root}` without --resume (and delete "
                    f"{run} if you no longer need it).") from e

    def require(self, path: Path, stage: str) -> Path:
        if not path.exists():
            # prepare needs its input folder, which an unprepared workspace cannot name
            what = ("prepare INPUT_FOLDER" if stage == "prepare" else stage)
            where = (" (INPUT_FOLDER: your images, one subfolder per class, or add -l LABELS_FILE)"
                     if stage == "prepare" else "")
            raise WorkspaceError(
                f"{path} does not exist. Run `fercure {what} -w {self.root}` first{where}."
            )
        return path


# ---------------------------------------------------------------------------------------------
# The workspace lock: one writing command at a time


def _fercure_config(run: Path) -> bool:
    """run/config.json is one train wrote: it names this run (run_id) or a fercure version."""
    try:
        data = json.loads((run / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and (data.get("run_id") == run.name or "fercure_version" in data)


def claim(root: Path | str) -> bool:
    """Make ``root`` a workspace: create it if absent and write its marker when fercure created it
    or found it empty (a lock file aside). A folder already holding other files gets no marker, so
    no cleanup ever deletes anything in it. Returns True when this call created the folder."""
    root = Path(root)
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    marker = root / WORKSPACE_MARKER
    if not marker.exists() and {p.name for p in root.iterdir()} <= {".lock"}:
        marker.write_text(f"fercure workspace (fercure {__version__})\n", encoding="utf-8")
    return created


def remove_if_unused(root: Path | str) -> bool:
    """Remove a workspace folder a failed command created and left holding only its lock and marker."""
    root = Path(root)
    try:
        names = {p.name for p in root.iterdir()}
        if names <= {".lock", WORKSPACE_MARKER}:
            for name in names:
                (root / name).unlink(missing_ok=True)
            root.rmdir()
            return True
    except OSError:
        pass
    return False


def _lock_holder(fd: int) -> str:
    """The PID the holder wrote into the lock file, as text ("unknown" while it is being written)."""
    try:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        pid = ""
    return pid if pid.isdigit() else "unknown"


@contextlib.contextmanager
def workspace_lock(root: Path | str, *, wait: bool = False, create: bool = True,
                   poll_seconds: float = 0.5) -> Iterator[None]:
    """Hold an exclusive lock on WS/.lock while a command writes the workspace; refuse at once,
    naming the holder's PID, when another command holds it (or wait for it with ``wait``).

    flock is released by the kernel when its holder exits, even by SIGKILL, so a lock file left
    behind never blocks. The file itself stays (deleting it would let two commands lock two
    different files). Stage functions do not lock: a library caller decides. Without ``create`` a
    missing workspace is not created (nothing there to protect; the stage says what is missing)."""
    root = Path(root)
    if not create and not root.is_dir():
        yield
        return
    path = root / ".lock"
    created = False
    try:
        created = claim(root)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise WorkspaceError(f"Cannot create the lock file {path} ({e.strerror or e}): the command writes "
                             f"the workspace {root}. Check that you may write there.") from e
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    raise WorkspaceLockedError(
                        f"Workspace {root} is in use by another fercure command (PID {_lock_holder(fd)}, "
                        f"holding {path}). Wait for it to finish, or pass --wait to wait for it.") from None
                time.sleep(poll_seconds)
            except OSError as e:
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    break  # a filesystem without locks: run unlocked rather than not at all
                raise
        _write_pid(fd, f"{os.getpid()}\n")
        try:
            yield
        finally:
            _write_pid(fd, "")
            if created:  # a command that failed before writing anything leaves no empty workspace
                remove_if_unused(root)
    finally:
        os.close(fd)  # releases the lock


def _write_pid(fd: int, text: str) -> None:
    """The PID is for the message of a refused command only: a full disk must not stop this one."""
    try:
        os.ftruncate(fd, 0)
        if text:
            os.pwrite(fd, text.encode(), 0)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# Output paths: one rule for every path a user can name


def check_input_file(path: Path | str, *, option: str, hint: str) -> Path:
    """Refuse an input that is missing or not a regular file before anything opens it: opening a
    FIFO blocks until a writer comes, and /dev/zero never ends. ``hint`` says what to pass instead."""
    path = Path(path)
    if not path.exists():
        raise WorkspaceError(f"{option} {path} does not exist. {hint}")
    kind = file_kind(path)
    if kind:
        raise WorkspaceError(f"{option} {path} is {kind}, not a regular file. {hint}")
    if pseudo_file(path):
        raise WorkspaceError(f"{option} {path} is a kernel pseudo-file (under /proc or /sys), not a file of yours; "
                             f"it is not read. {hint}")
    return path


def check_output_path(
    path: Path | str,
    *,
    force: bool,
    option: str = "output",
    input_root: Path | str | None = None,
    protected: Mapping[Path, str] | None = None,
    may_replace: Iterable[Path] = (),
    folder: bool = False,
) -> Path:
    """Refuse an output path whose writing would destroy something; return it otherwise.

    Refused: a path inside ``input_root``; a path that is, or lies inside, one of ``protected``
    (path → what it is: the label file, the workspace's own files); something that is not a regular
    file (a device such as /dev/null, a FIFO, a socket; a folder unless ``folder``): it would be
    replaced by a regular file; an existing file without ``force``, unless it is in ``may_replace``
    (a stage's own output, such as the default report).
    """
    path = Path(path)
    shown = f"{option} {path}"
    if input_root and is_inside(path, input_root):
        raise WorkspaceError(f"{shown} lies inside the input folder {input_root}; fercure never writes into "
                             "its input. Choose a path outside it.")
    for owned, what in (protected or {}).items():
        if is_inside(path, owned):
            raise WorkspaceError(f"{shown} is {what}" + ("" if path.resolve() == Path(owned).resolve() else
                                 f" or lies inside it ({owned})") +
                                 "; fercure never overwrites its inputs or its own files. Choose another path.")
    kind = file_kind(path)
    if folder:
        if kind not in (None, "a folder") or path.is_file():
            raise WorkspaceError(f"{shown} is {kind or 'a file'}, not a folder; fercure never replaces it. "
                                 "Give the path of a new or existing folder.")
        return path
    if kind == "a folder":
        raise WorkspaceError(f"{shown} is a folder; give a file path such as {path / 'name'} instead.")
    if kind:
        raise WorkspaceError(f"{shown} is {kind}, not a regular file; fercure never replaces it with a "
                             "file. Give the path of a regular file.")
    keep = {Path(p).resolve() for p in may_replace}
    if not force and path.exists() and path.resolve() not in keep:
        raise OutputExistsError(f"{path} already exists; pass --force to overwrite it.")
    return path


# ---------------------------------------------------------------------------------------------
# Parquet tables with fercure metadata


def write_table(df: pd.DataFrame, path: Path | str, metadata: dict[str, Any] | None = None,
                table: schema.Table | None = None, arrow_metadata: Mapping[bytes, bytes] | None = None) -> None:
    """Write ``df`` to Parquet atomically, with fercure's version, schema version and ``metadata``
    stored as JSON under the ``fercure`` key of the file's key-value metadata.

    With ``table`` (a contract of fercure.schema) the frame is conformed to it first (declared
    types, no missing or undeclared column; per-class columns from ``metadata["classes"]``) and the
    contract's name is recorded, so that ``read_table`` checks the file against it again.
    ``arrow_metadata``: further key-value metadata for other readers (``huggingface``)."""
    meta = {"fercure_version": __version__, "schema_version": SCHEMA_VERSION, **(metadata or {})}
    if table is not None:
        meta["table"] = table.name
        try:
            data = schema.conform(df, table, _classes(meta))
        except schema.ContractError as e:
            err = TableContractError(f"Not writing {path}: {e}. This is a bug in fercure; please report it.")
            err.path = Path(path)
            raise err from e
    else:
        data = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    existing = data.schema.metadata or {}
    data = data.replace_schema_metadata({**existing, **(arrow_metadata or {}),
                                         META_KEY: json.dumps(meta, default=str).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(data, tmp)


def _classes(meta: Mapping[str, Any]) -> list[str]:
    return [str(c) for c in meta.get("classes") or []]


def read_metadata(path: Path | str) -> dict[str, Any]:
    try:
        raw = pq.read_schema(path).metadata or {}
        return json.loads(raw[META_KEY]) if META_KEY in raw else {}
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError, ValueError) as e:  # truncated, not Parquet, broken JSON
        raise damaged(path, e) from e


def read_table(path: Path | str, check_version: bool = True, table: schema.Table | None = None) -> pd.DataFrame:
    """Read a fercure table; refuse one written with another schema version, or one that does not
    meet its contract (``table``, else the one named in its metadata)."""
    path = Path(path)
    meta = read_metadata(path)
    if check_version:
        version = meta.get("schema_version")
        if version is not None and version != SCHEMA_VERSION:
            raise WorkspaceError(
                f"{path} was written by fercure {meta.get('fercure_version')} with table schema "
                f"{version}; this fercure ({__version__}) reads schema {SCHEMA_VERSION}. "
                "Re-run the stage that wrote it, or use the matching fercure version."
            )
    if table is None and meta.get("table") in schema.TABLES:
        table = schema.TABLES[meta["table"]]
    try:
        data = pq.read_table(path)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as e:
        raise damaged(path, e) from e
    if table is not None:
        try:
            schema.validate(data, table, _classes(meta))
        except schema.ContractError as e:
            err = TableContractError(f"{path} is not a valid {table.name} table: {e}. " + rebuild_hint(path))
            err.path = path
            raise err from e
    return data.to_pandas()

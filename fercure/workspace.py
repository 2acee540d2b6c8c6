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
import shutil
import stat
import tempfile
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

META_KEY = b"fercure"
# Written when fercure creates a workspace (or an export folder): cleanup only ever touches a folder
# that carries it, never a folder of the user's that was named by mistake.
WORKSPACE_MARKER = ".fercure-workspace"
EXPORT_MARKER = ".fercure-export"
# Temporary files of atomic writes are named .NAME.fercure-XXXX.tmp: a user's own *.tmp never matches.
TMP_TAG = ".fercure-"


class WorkspaceError(Exception):
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
        try:
            (run / "FAILED").write_text(line + "\n", encoding="utf-8")
        except OSError:
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

    def owned(self) -> dict[Path, str]:
        """The files and folders stages write here, with what they are: never an output's target."""
        return {
            self.manifest: "the workspace's manifest (written by prepare)",
            self.rejects: "the workspace's rejects table (written by prepare)",
            self.faces_dir: "the workspace's crop folder (written by prepare)",
            self.runs_dir: "the workspace's training runs (written by train)",
            self.audit: "the workspace's audit table (written by audit-labels)",
            self.report: "the workspace's report (written by audit-labels)",
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
        from fercure.store import open_store  # store imports this module

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


class WorkspaceLockedError(WorkspaceError):
    """Another fercure command holds the workspace lock."""


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


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def file_kind(path: Path | str) -> str | None:
    """What ``path`` is when it exists and is not a regular file ("a folder", "a FIFO ..."); None
    for a regular file or nothing at all. Symbolic links are followed. Never opens the path."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_input_file(path: Path | str, *, option: str, hint: str) -> Path:
    """Refuse an input that is missing or not a regular file before anything opens it: opening a
    FIFO blocks until a writer comes, and /dev/zero never ends. ``hint`` says what to pass instead."""
    path = Path(path)
    if not path.exists():
        raise WorkspaceError(f"{option} {path} does not exist. {hint}")
    kind = file_kind(path)
    if kind:
        raise WorkspaceError(f"{option} {path} is {kind}, not a regular file. {hint}")
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
# Atomic writes


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask sets it, and
    another thread could create a file in between)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(path: Path) -> int:
    """Mode for a file written over ``path``: the mode of the file it replaces, else what open()
    would give under the user's umask (mkstemp's temporary files are always 0600)."""
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except OSError:
        pass
    return 0o666 & ~_umask()


# ---------------------------------------------------------------------------------------------
# Disk full


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(error: BaseException) -> bool:
    """True for ENOSPC/EDQUOT, also when a library re-raised it as text only (pyarrow's OSError)."""
    if isinstance(error, OSError) and error.errno in _DISK_FULL:
        return True
    text = str(error)
    return any(os.strerror(code) in text for code in _DISK_FULL)


def _free_bytes(folder: Path) -> int | None:
    for d in (folder, *folder.parents):  # the nearest folder that exists is on that filesystem
        if d.is_dir():
            try:
                return shutil.disk_usage(d).free
            except OSError:
                return None
    return None


def _looks_full(error: BaseException, folder: Path) -> bool:
    """A write error without errno (torch.save: "unexpected pos 704 vs 598") on a filesystem with
    less than 1 MB left: a full disk, by far the likeliest cause."""
    if not isinstance(error, (OSError, RuntimeError)):
        return False
    free = _free_bytes(folder)
    return free is not None and free < 2**20


def _mb(n: int) -> str:
    return f"{-(-n // 2**20):,}"  # rounded up: "0 MB" would read as nothing needed


def disk_full(path: Path | str, needed: int | None = None, *, at_least: bool = False) -> WorkspaceError:
    """The error for a write that did not fit (or would not): what, how much, how much is free."""
    path = Path(path)
    free = _free_bytes(path.parent)
    facts = []
    if needed:
        facts.append(f"needs {'more than' if at_least else 'about'} {_mb(needed)} MB")
    if free is not None:
        facts.append(f"{free // 2**20:,} MB free on that filesystem")
    shown = f" ({'; '.join(facts)})" if facts else ""
    return WorkspaceError(f"Disk full while writing {path}{shown}. Free space there, or use a workspace "
                          "on a disk with more room, and run the command again.")


def check_free_space(path: Path | str, needed: int) -> None:
    """Refuse up front a write of ``needed`` bytes that cannot fit: a memory-mapped file that runs
    out of space dies with SIGBUS (exit 135, no message), not an OSError."""
    free = _free_bytes(Path(path).parent)
    if free is not None and free < needed:
        raise disk_full(path, needed)


@contextlib.contextmanager
def atomic_path(path: Path | str, *, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    A ``path`` that exists and is not a regular file (/dev/null, a FIFO, a folder) is refused: the
    rename would replace it with a regular file. A full disk (ENOSPC, EDQUOT) becomes a
    WorkspaceError naming the file, with the temporary file removed; ``size`` (bytes, when known)
    is checked against the free space before anything is written."""
    path = Path(path)
    kind = file_kind(path)
    if kind:
        raise WorkspaceError(f"{path} is {kind}, not a regular file; fercure never replaces it. "
                             "Give the path of a regular file.")
    path.parent.mkdir(parents=True, exist_ok=True)
    if size is not None:
        check_free_space(path, size)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_TAG}", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fchmod(f.fileno(), _new_file_mode(path))
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except Exception as e:
        if not (is_disk_full(e) or _looks_full(e, path.parent)):
            raise
        written = tmp_path.stat().st_size if tmp_path.exists() else 0
        tmp_path.unlink(missing_ok=True)  # before measuring what is free
        raise disk_full(path, size or written, at_least=size is None) from e
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


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

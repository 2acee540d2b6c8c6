"""Atomic file writes and what a path is: a run killed at any moment leaves the old file or the
new one, never a torn one; a full disk becomes a message naming the file and the space needed."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

from fercure.errors import WorkspaceError

# Temporary files of atomic writes are named .NAME.fercure-XXXX.tmp: a user's own *.tmp never matches.
TMP_TAG = ".fercure-"


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


# Kernel pseudo-files look like empty regular files (/proc/kmsg: mode -r--------, size 0) and a read
# can block forever; an input is never one of them.
PSEUDO_ROOTS = ("/proc", "/sys")


def pseudo_file(path: Path | str) -> bool:
    """Whether ``path`` (links followed) lies in a kernel pseudo-filesystem (/proc, /sys)."""
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError):
        return False
    return any(real == root or real.startswith(root + "/") for root in PSEUDO_ROOTS)


def read_regular_bytes(path: Path | str, limit: int | None = None) -> bytes:
    """A regular file's bytes, read once (at most ``limit`` + 1 of them, so a caller sees it is too
    large): opened without blocking and checked on the open descriptor, so a file swapped for a FIFO
    or a device between a check and the read is refused, never waited on. OSError otherwise."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        chunks, left = [], (limit + 1 if limit is not None else None)
        while left is None or left > 0:
            chunk = os.read(fd, 1 << 20 if left is None else min(1 << 20, left))
            if not chunk:
                break
            chunks.append(chunk)
            if left is not None:
                left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


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


@contextlib.contextmanager
def disk_full_as_error(path: Path | str) -> Iterator[None]:
    """Inside: a full disk (ENOSPC, EDQUOT) while writing ``path`` (a file or a folder being filled)
    becomes the WorkspaceError naming it; other errors pass unchanged."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        if isinstance(e, WorkspaceError) or not (is_disk_full(e) or _looks_full(e, Path(path))):
            raise
        raise disk_full(path, at_least=True) from e


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
    try:  # a disk with no block left refuses the folder or the empty temporary file already
        path.parent.mkdir(parents=True, exist_ok=True)
        if size is not None:
            check_free_space(path, size)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_TAG}", suffix=".tmp", dir=path.parent)
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise disk_full(path, size, at_least=size is None) from e
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

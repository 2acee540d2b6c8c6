"""`fercure train --nproc N`: start N rank processes on this machine and take them down with it.

The ranks are plain children of the command the user ran, in its process group (Ctrl-C reaches
them all), and each asks the kernel to kill it when that command dies (Linux PR_SET_PDEATHSIG;
elsewhere a thread that polls the parent's pid). So a ``kill -9`` of the command ends the ranks
within moments instead of leaving them to finish (or hang in rendezvous) on their own, and the
workspace lock, which the launcher holds, goes with it.

They join one process group through the usual environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), exactly as under torchrun, which stays the way to span machines.
Each rank writes the message it stops with to a file; the launcher stops the others at the first
failure and prints each distinct message once (rank 0 prints its own as it stops).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ENV_LAUNCHER = "FERCURE_LAUNCHER_PID"  # set in the ranks: the launcher holds the workspace lock
ENV_ERRORS = "FERCURE_RANK_ERRORS"  # folder where each rank writes the message it stops with
_PR_SET_PDEATHSIG = 1
TERM_GRACE_S = 5.0


RANKS_PREFIX = "fercure-ranks-"  # + the launcher's PID + "-": the rank folder's owner, for the cleanup below


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_rank_folders(tmp_root: str | None = None) -> int:
    """Delete rank folders (``fercure-ranks-<PID>-*`` in the temp folder) whose launcher is gone: a
    ``kill -9`` of the launcher skips its own cleanup. Only this user's folders, named that way."""
    root = Path(tmp_root or tempfile.gettempdir())
    n = 0
    try:
        candidates = list(root.glob(f"{RANKS_PREFIX}*-*"))
    except OSError:
        return 0
    for folder in candidates:
        pid = folder.name[len(RANKS_PREFIX):].split("-", 1)[0]
        try:
            st = folder.lstat()
        except OSError:
            continue
        if not pid.isdigit() or not folder.is_dir() or folder.is_symlink() or st.st_uid != os.getuid():
            continue
        if int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            n += 1
    return n


def check_nproc(nproc: int, device: str) -> None:
    """Refuse more CPU processes than this machine gives the command (each would fight the others for
    a core), or more CUDA processes than GPUs. ``device``: the --device value."""
    import torch

    from fercure.errors import DistributedError

    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise DistributedError(f"--nproc {nproc} asks for more processes than the {gpus} GPU(s) here (one process "
                                   f"per GPU); use --nproc {max(1, gpus)} or fewer.")
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if nproc > cpus:
        raise DistributedError(f"--nproc {nproc} asks for more processes than the {cpus} CPU core(s) this command may "
                               f"use; CPU processes beyond one per core only slow each other down. Use --nproc {cpus} "
                               "or fewer.")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(base: dict[str, str], rank: int, size: int, port: int, errors: Path) -> dict[str, str]:
    """The environment torchrun would give rank ``rank`` of ``size`` on one machine, plus where
    the launcher lives and where the rank writes its error."""
    env = dict(base)
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size), LOCAL_WORLD_SIZE=str(size),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **{ENV_LAUNCHER: str(os.getpid()),
                                                                    ENV_ERRORS: str(errors)})
    return env


def _set_pdeathsig(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _preexec(parent: int):
    def run() -> None:
        _set_pdeathsig()
        if os.getppid() != parent:  # the launcher died between fork and prctl
            os._exit(1)
    return run


def watch_launcher() -> None:
    """In a rank started by ``run_ranks``: die when the launcher does, also where
    PR_SET_PDEATHSIG is missing (a daemon thread polling the parent pid twice a second)."""
    launcher = os.environ.get(ENV_LAUNCHER)
    if not launcher or not launcher.isdigit():
        return

    def poll() -> None:
        while os.getppid() == int(launcher):
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=poll, name="fercure-launcher-watch", daemon=True).start()


def launched_rank() -> bool:
    return bool(os.environ.get(ENV_LAUNCHER))


def record_error(message: str) -> None:
    """A rank's closing message, for the launcher to print once (no-op outside ``run_ranks``)."""
    folder = os.environ.get(ENV_ERRORS)
    if not folder:
        return
    try:
        Path(folder, f"rank{int(os.environ.get('RANK', '0'))}.txt").write_text(message, encoding="utf-8")
    except (OSError, ValueError):
        pass


def peer_failed(wait_s: float = 3.0) -> bool:
    """Whether another rank recorded an error (waiting up to ``wait_s`` for it): an exception in
    this rank is then only the echo of that one (a collective whose peer left)."""
    folder = os.environ.get(ENV_ERRORS)
    if not folder:
        return False
    mine = f"rank{os.environ.get('RANK', '0')}.txt"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if any(p.name != mine for p in Path(folder).glob("rank*.txt")):
                return True
        except OSError:
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + TERM_GRACE_S
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def closing_messages(messages: dict[int, str], codes: dict[int, int]) -> list[str]:
    """What the launcher prints after a failed run: each failed rank's message, once, except rank
    0's (it printed its own), prefixed with the rank. Pure."""
    seen = {messages[0].strip()} if 0 in messages else set()
    out = []
    for rank in sorted(messages):
        text = messages[rank].strip()
        if rank == 0 or not text or text in seen or codes.get(rank, 0) == 0:
            continue
        seen.add(text)
        out.append(f"rank {rank}: {text}")
    return out


def run_ranks(args: list[str], nproc: int, *, log=None) -> int:
    """Run ``python -m fercure train ARGS`` as ``nproc`` ranks; return the exit status (0, or the
    first failing rank's). Ranks other than 0 write their stderr to a temporary file that is shown
    (its tail) only when such a rank dies without a message of its own."""
    log = log or (lambda line: print(line, file=sys.stderr))
    remove_stale_rank_folders()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix=f"{RANKS_PREFIX}{os.getpid()}-") as tmp:
        errors = Path(tmp)
        procs: list[subprocess.Popen] = []
        logs = []
        code = 0
        try:
            for rank in range(nproc):
                out = None if rank == 0 else open(errors / f"stderr{rank}.log", "wb")
                logs.append(out)
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "fercure", "train", *args], env=rank_env(os.environ, rank, nproc, port, errors),
                    stderr=out, preexec_fn=_preexec(os.getpid())))
            while True:
                codes = [p.poll() for p in procs]
                failed = [c for c in codes if c not in (None, 0)]
                if failed:
                    code = failed[0]
                    break
                if all(c == 0 for c in codes):
                    return 0
                time.sleep(0.2)
        except KeyboardInterrupt:
            # Ctrl-C reached every rank too (one process group): let rank 0 say where the run stands.
            code = 130
            deadline = time.monotonic() + 60
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                try:
                    time.sleep(0.2)
                except KeyboardInterrupt:
                    break
        finally:
            _stop(procs)
            for f in logs:
                if f is not None:
                    f.close()
        codes = {r: p.returncode for r, p in enumerate(procs)}
        messages = {}
        for r in codes:
            path = errors / f"rank{r}.txt"
            if path.exists():
                messages[r] = path.read_text(encoding="utf-8", errors="replace")
        for line in closing_messages(messages, codes):
            log(line)
        if not messages:  # no rank stopped with a message: show what the first failing rank printed
            for r, c in codes.items():
                if r and c not in (0, None, -signal.SIGTERM, -signal.SIGKILL):
                    tail = (errors / f"stderr{r}.log").read_text(encoding="utf-8", errors="replace")[-4000:]
                    log(f"rank {r} exited with status {c}:\n{tail}")
                    break
        return 1 if code < 0 else code

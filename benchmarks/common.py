"""Helpers shared by the benchmark scripts: provenance (commit, device), an atomic merge into a
results JSON, and the metric functions (pure numpy, so they are unit-tested without sklearn).

Benchmarks are scripts, not a package: a script in this folder imports this file as ``common``
(its own folder is on sys.path); tests load it by path.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# Provenance


def git_commit(repo: Path = REPO) -> dict[str, Any]:
    """HEAD commit and whether the working tree differs from it (figures from a dirty tree are
    not reproducible from the commit alone, so say so)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain"))  # untracked source files count too
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def device_kind(device: Any) -> str:
    """'cuda' or 'cpu': the key a result is filed under."""
    return "cuda" if str(device).startswith("cuda") else "cpu"


def device_name(device: Any) -> str:
    """Human-readable name of the device the figures were measured on."""
    if device_kind(device) == "cuda":
        import torch
        return torch.cuda.get_device_name(torch.device(str(device)))
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        import torch
        threads = torch.get_num_threads()
    except ImportError:
        threads = os.cpu_count()
    return f"{model} ({os.cpu_count()} CPUs visible, {threads} torch threads)"


def today() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ---------------------------------------------------------------------------------------------
# Results file


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Exclusive advisory lock on the results folder itself, so two benchmarks finishing together
    do not drop each other's entries (read-modify-write) and no lock file is left behind.
    No-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def to_jsonable(obj: Any) -> Any:
    """numpy scalars/arrays → Python; NaN/inf → None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if np.isfinite(f) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def merge_results(path: Path | str, key: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Set ``results[key] = payload`` in the JSON file at ``path``, keeping every other key
    (e.g. a "cuda" entry survives a "cpu" run). Written atomically (temp file + rename) under a
    lock. Returns the whole merged document."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent):
        doc: dict[str, Any] = {}
        if path.exists():
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                # Keep the unreadable file for a person to look at rather than overwrite it blind.
                path.replace(path.with_name(path.name + f".corrupt-{int(time.time())}"))
                doc = {}
        doc[key] = to_jsonable(payload)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            # mkstemp makes the file 0600; a results file is for everyone to read
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, indent=2, sort_keys=False)
                fh.write("\n")
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return doc


# ---------------------------------------------------------------------------------------------
# Data


def load_images(paths: list[Path | str], workers: int | None = None) -> np.ndarray:
    """(N,H,W,3) uint8 RGB from same-size image files (FER crops: 48×48 grey PNGs), decoded once in
    threads: what `fercure prepare` would hand the trainer, without the face stage."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def decode(path: Path | str) -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as ex:
        return np.stack(list(ex.map(decode, paths, chunksize=256)))


# ---------------------------------------------------------------------------------------------
# Metrics (binary: y_true 1 = positive, e.g. "the label is wrong"; higher score = more positive)


def _binary(y_true: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values, score {s.size}")
    if not np.isfinite(s).all():
        raise ValueError("score has NaN/inf values; select the scored samples first")
    return y, s


def auroc(y_true: Any, score: Any) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative), ties
    counting one half (Mann–Whitney U with average ranks). NaN when one class is absent."""
    y, s = _binary(y_true, score)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average rank (1-based) within each run of tied scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def average_precision(y_true: Any, score: Any) -> float:
    """Average precision as scikit-learn defines it: Σ_k (R_k − R_{k−1}) · P_k over the distinct
    score thresholds taken from high to low (tied scores enter together; no interpolation).
    NaN when there is no positive."""
    y, s = _binary(y_true, score)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y_sorted, s_sorted = y[order], s[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s) - 1]
    tp = np.cumsum(y_sorted)[last_of_tie].astype(np.float64)
    predicted = last_of_tie + 1.0
    precision = tp / predicted
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def precision_recall_f1(y_true: Any, flagged: Any) -> dict[str, float]:
    """Precision, recall and F1 of boolean flags against boolean truth, plus the counts.
    Precision is NaN when nothing is flagged; F1 is 0 when precision + recall is 0."""
    y = np.asarray(y_true).astype(bool).ravel()
    f = np.asarray(flagged).astype(bool).ravel()
    if y.shape != f.shape:
        raise ValueError(f"y_true has {y.size} values, flagged {f.size}")
    tp = int((y & f).sum())
    n_flag, n_pos = int(f.sum()), int(y.sum())
    precision = tp / n_flag if n_flag else float("nan")
    recall = tp / n_pos if n_pos else float("nan")
    if n_flag and n_pos and (precision + recall) > 0:
        f1 = 2 * precision * recall / (precision + recall)
    else:
        f1 = 0.0 if (n_flag and n_pos) else float("nan")
    return {"precision": precision, "recall": recall, "f1": f1, "flagged": n_flag, "true_positives": tp}


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """ECE (Guo et al. 2017): equal-width bins over the top-class confidence in [0, 1];
    Σ_b |B_b|/n · |accuracy(B_b) − mean confidence(B_b)|. A confidence of exactly 0 falls in the
    first bin, and bins are right-closed as in the paper's code."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64).ravel()
    if p.ndim != 2 or p.shape[0] != y.size:
        raise ValueError(f"probs must be (n, C) with n = {y.size}, got {p.shape}")
    if y.size == 0:
        return float("nan")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def within_class_auroc(y_true: Any, score: Any, groups: Any, min_each: int = 5) -> tuple[dict[str, float], float]:
    """AUROC inside each group (the given class): how well ``score`` ranks a class's wrong labels
    above its right ones, whatever the order between classes. A group with fewer than
    ``min_each`` positives or negatives gets NaN and stays out of the macro mean.

    Returns (per group, macro mean over the groups with a value)."""
    y, s = _binary(y_true, score)
    g = np.asarray(groups, dtype=object).ravel()
    per: dict[str, float] = {}
    for k in sorted(set(g.tolist()), key=str):
        m = g == k
        n_pos, n_neg = int(y[m].sum()), int((~y[m]).sum())
        per[str(k)] = auroc(y[m], s[m]) if min(n_pos, n_neg) >= min_each else float("nan")
    vals = [v for v in per.values() if np.isfinite(v)]
    return per, float(np.mean(vals)) if vals else float("nan")


def precision_at(y_in_order: Any, ks: tuple[int, ...] = (50, 100, 200)) -> dict[str, float | None]:
    """Share of positives among the first k items of a list already in its shown order (None
    where the list is shorter than k)."""
    y = np.asarray(y_in_order).astype(bool).ravel()
    return {str(k): (float(y[:k].mean()) if len(y) >= k else None) for k in ks}


def accuracy_by_band(band: Any, correct: Any, n_bands: int) -> tuple[list[float | None], list[int], bool]:
    """Per band index 0..n_bands−1: the share of ``correct`` and the count; and whether the
    accuracy rises (non-strictly) from band to band over the bands that hold any row."""
    b = np.asarray(band).astype(int).ravel()
    c = np.asarray(correct).astype(bool).ravel()
    acc = [float(c[b == i].mean()) if (b == i).any() else None for i in range(n_bands)]
    n = [int((b == i).sum()) for i in range(n_bands)]
    seen = [a for a in acc if a is not None]
    return acc, n, bool(all(x <= y for x, y in zip(seen, seen[1:])))

"""Find the input samples: an image folder, or a CSV/Parquet label file next to the images.

``discover(input_root, labels_file=None, classes=None)`` returns ``(samples, rejects)``:

* ``samples``: one row per usable image with ``sample_id, source_path, label, split``.
  ``source_path`` is posix and relative to ``input_root`` (``..`` and ``.`` resolved lexically), so
  the same file always gets the same ``sample_id``. ``label`` is the given value in NFC form, without
  format characters (zero-width space, BOM, ...: Unicode category Cf) and surrounding whitespace
  (`` happy``, ``happy\u200b`` and ``happy`` are one class; so are NFC and NFD ``café``), see
  ``clean_label``. ``split`` is ``"train"`` unless given.
* ``rejects``: one row per label-file row or file that could not become a sample, with columns
  ``REJECT_COLUMNS``. ``row`` is the row number a user sees: for CSV the header is row 1 and the
  first data row is 2, counted in records as a spreadsheet shows them (a quoted cell with a line
  break does not start a new row; blank rows and an Excel ``sep=`` line do take a number; blank
  rows are skipped, neither samples nor rejects). For Parquet it is the 0-based row index + 1, and
  every row is a data row. ``row`` is -1 and ``file`` is "" for files found by
  walking a folder.

Whole-file problems (missing, empty, unreadable label file, missing columns) raise
``LabelFileError``: the CLI prints the message and exits 1.

Folder mode: ``input_root/<class>/**/<image>``; the label is the first folder below the root.
When *every* top-level folder is a split name (train, test, val, ...), the layout is read as
``input_root/<split>/<class>/**/<image>`` instead (the Kaggle FER2013 image layout); a dataset whose
classes are all called like splits is implausible. Hidden files and folders are skipped, files
without an image extension are ignored, images with no class folder are rejected.

Case: labels that differ only in case (``Angry``, ``ANGRY`` beside ``angry``) are one class by default
(``fold_case``): each row takes the most frequent spelling (or the --classes one), ``label_original``
keeps what the row said, and a note counts them. With ``fold_case=False`` they are look-alikes.

Look-alike labels: two class names that differ but look the same (``happy`` with a Cyrillic ``а``;
``label_skeleton``) are one class misspelt. The rows of the rarer spelling are rejected
("look-alike label") with a hint naming both spellings and their code points, and a note counts them.

Label-file rows whose path appears more than once: with the same label, the first row is kept and
the later ones are rejected as duplicates; with conflicting labels, *all* its rows are rejected,
because nothing tells which label is true and a guess would poison the very audit fercure runs.

Non-UTF-8 file names survive: paths are ``str`` decoded with ``surrogateescape`` (Python's
``os.fsdecode``), so they open again and ``sample_id`` is stable. Such columns use ``object`` dtype
(pandas' ``str`` dtype cannot hold lone surrogates).

Text encodings: UTF-8 (with or without BOM), UTF-16 with BOM (Excel's "Unicode text"); otherwise
cp1252 (Windows "ANSI": the same as latin-1 for every printable latin-1 character, and it also
reads the curly quotes and dashes Windows puts in names) and, if that fails, latin-1, with a note.
When a path read that way does not exist, the same bytes are tried as a file name on disk, so
latin-1 names on disk listed in a latin-1 file still match.

Notes (e.g. "read as cp1252") are logged on the ``fercure.ingest`` logger and listed in
``samples.attrs["notes"]``.
"""

from __future__ import annotations

import ast
import csv
import io
import logging
import math
import os
import posixpath
import re
import select
import stat
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fercure import labels as class_names
from fercure.images import IMAGE_EXTENSIONS
from fercure.labels import label_skeleton  # noqa: F401  (re-exported: tests and callers import it here)
from fercure.workspace import WorkspaceError, file_kind, sample_id

log = logging.getLogger("fercure.ingest")

SAMPLE_COLUMNS = ["sample_id", "source_path", "label", "split"]
REJECT_COLUMNS = ["file", "row", "source_path", "problem", "hint"]
DEFAULT_SPLIT = "train"
# prepare fails when more than this share of the input's rows is rejected (--max-rejected): a run
# on what is left would pass for the whole dataset.
MAX_REJECTED_SHARE = 0.25

# Accepted header names after normalisation (strip, lower-case, spaces/hyphens -> "_"); the first
# alias present wins, so a file with both "path" and "image" columns uses "path".
PATH_ALIASES = ("path", "file", "filename", "file_name", "filepath", "file_path", "image",
                "image_path", "img")
LABEL_ALIASES = ("label", "class", "emotion", "expression", "class_name", "label_name")
SPLIT_ALIASES = ("split", "usage", "subset")
SPLIT_FOLDERS = frozenset({"train", "training", "test", "testing", "val", "valid", "validation",
                           "dev"})

CSV_SUFFIXES = frozenset({".csv", ".tsv", ".txt"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
_DELIMITERS = (",", ";", "\t")
# A label file that is not a regular file (a pipe, /dev/stdin) is read into memory, at most this much,
# waiting at most this long for data.
MAX_STREAM_BYTES = 512 * 2**20
STREAM_IDLE_SECONDS = 30.0
_WINDOWS_ABS = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")


def clean_label(value: str) -> str:
    """A label as fercure keys it: NFC, without format characters (category Cf: zero-width space,
    BOM, joiners, direction marks), without surrounding whitespace. Such differences are invisible,
    so they never make a class of their own."""
    s = unicodedata.normalize("NFC", value)
    s = "".join(ch for ch in s if unicodedata.category(ch) != "Cf")
    return s.strip()


def _code_points(s: str) -> str:
    return " ".join(f"U+{ord(ch):04X}" for ch in s)


def lookalike_labels(labels: list[str]) -> dict[str, str]:
    """{spelling: the spelling it is taken for} for labels whose skeleton another, different label
    shares. The most frequent spelling of a skeleton is kept (then plain ASCII, then the first in
    sorted order); every other spelling maps to it."""
    counts = Counter(labels)
    groups: dict[str, list[str]] = {}
    for label in sorted(counts):
        groups.setdefault(label_skeleton(label), []).append(label)
    taken_for: dict[str, str] = {}
    for group in groups.values():
        if len(group) > 1:
            keep = min(group, key=lambda lab: (-counts[lab], not lab.isascii(), lab))
            taken_for.update({lab: keep for lab in group if lab != keep})
    return taken_for


def _lookalike_hint(label: str, keep: str) -> str:
    return (f"label {label!r} ({_code_points(label)}) looks like {keep!r} ({_code_points(keep)}) but is a "
            f"different string: did you mean {keep!r}? Fix the label and re-run (rows of the rarer spelling "
            "are rejected, not made a class of their own)")


def _lookalike_note(taken_for: dict[str, str], n_rows: int) -> str:
    pairs = ", ".join(f"{lab!r} for {keep!r}" for lab, keep in sorted(taken_for.items())[:3])
    return (f"{n_rows} rows carry a label that looks like another class but is a different string "
            f"({pairs}); they are rejected as 'look-alike label' (see rejects.parquet).")


def _is_wanted(label: str, wanted: set[str] | None, fold_case: bool) -> bool:
    return wanted is None or label in wanted or (fold_case and label.casefold() in {w.casefold() for w in wanted})


def _fold_case(labels: list[str], wanted: set[str] | None, fold_case: bool, notes: list[str]) -> dict[str, str]:
    """{spelling: the spelling kept} for case variants (empty unless ``fold_case``), with a note."""
    if not fold_case:
        return {}
    folded = class_names.case_variants(labels, sorted(wanted or ()))
    if folded:
        n = sum(1 for lab in labels if lab in folded)
        pairs = ", ".join(f"{lab!r} as {keep!r}" for lab, keep in sorted(folded.items())[:4])
        notes.append(f"{n} rows carry a label that differs from another only in case ({pairs}"
                     f"{', ...' if len(folded) > 4 else ''}): read as one class (case folded; the manifest's "
                     "label_original keeps each row's spelling). Pass --strict-labels to reject them instead.")
    return folded


class LabelFileError(WorkspaceError):
    """The label file as a whole cannot be used (missing, empty, unreadable, wrong columns)."""


@dataclass
class _Reject:
    file: str
    row: int
    source_path: str
    problem: str
    hint: str


# ---------------------------------------------------------------------------------------------
# Public entry point


def discover(
    input_root: Path, labels_file: Path | None = None, classes: list[str] | None = None, *,
    fold_case: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return ``(samples, rejects)`` for an image folder or a label file (see the module doc)."""
    root = Path(input_root)
    if not root.exists():
        raise WorkspaceError(f"Input folder {root} does not exist.")
    if not root.is_dir():
        raise WorkspaceError(f"Input root {root} is not a folder. Pass the folder that holds the images.")
    wanted = None if classes is None else {clean_label(str(c)) for c in classes}
    notes: list[str] = []
    original: dict[str, str] = {}  # path → the label as written, for rows whose case was folded
    if labels_file is None:
        rows, rejects = _discover_folder(root, wanted, notes, fold_case, original)
    else:
        rows, rejects = _discover_label_file(root, Path(labels_file), wanted, notes, fold_case, original)
    for note in notes:
        # info, not warning: the prepare stage shows samples.attrs["notes"] through its reporter.
        log.info(note)
    samples = _frame(
        {
            "sample_id": [sample_id(r[0]) for r in rows],
            "source_path": [r[0] for r in rows],
            "label": [r[1] for r in rows],
            "split": [r[2] for r in rows],
            "label_original": [original.get(r[0], r[1]) for r in rows],
        },
        SAMPLE_COLUMNS + ["label_original"],
    )
    counts = dict(Counter(r[1] for r in rows))
    check_reserved(counts, labels_file or root)
    warnings = class_names.near_duplicate_classes(counts) + class_names.balance_warnings(
        counts, [clean_label(str(c)) for c in classes] if classes is not None else None)
    notes.extend(f"warning: {w}" for w in warnings)
    samples.attrs["notes"] = list(notes)
    rej = _frame(
        {
            "file": [r.file for r in rejects],
            "row": [r.row for r in rejects],
            "source_path": [r.source_path for r in rejects],
            "problem": [r.problem for r in rejects],
            "hint": [r.hint for r in rejects],
        },
        REJECT_COLUMNS,
    )
    return samples, rej


def reserved_class_names() -> set[str]:
    """Class names that would give a per-class column (``mean_p_<class>``) the name of a fixed one
    (``mean_p_given``) in one of fercure's tables: e.g. ``given``."""
    from fercure import schema

    fixed = {c.name for t in schema.TABLES.values() for c in t.columns if not c.per_class}
    prefixes = {c.name for t in schema.TABLES.values() for c in t.columns if c.per_class}
    return {name[len(p) + 1:] for p in prefixes for name in fixed if name.startswith(p + "_") and len(name) > len(p) + 1}


def check_reserved(counts: dict[str, int], where: Path) -> None:
    """Refuse a class whose name fercure's tables use for something else (the run would mix the two)."""
    clash = sorted(set(counts) & reserved_class_names())
    if clash:
        name = clash[0]
        raise WorkspaceError(
            f"Class {name!r} ({counts[name]} images, in {where}) has a name fercure's tables reserve (a column "
            f"p_{name} / mean_p_{name} would clash with another column). Rename the class in the label file or "
            f"folder (e.g. {name}_class) and run prepare again.")


def _frame(data: dict[str, list[Any]], columns: list[str]) -> pd.DataFrame:
    cols: dict[str, pd.Series] = {}
    for name in columns:
        values = data[name]
        if name == "row":
            cols[name] = pd.Series(values, dtype="int64")
            continue
        try:
            cols[name] = pd.Series(values, dtype="str")
        except UnicodeEncodeError:  # lone surrogates from non-UTF-8 file names
            cols[name] = pd.Series(values, dtype=object)
    return pd.DataFrame(cols, columns=columns)


# ---------------------------------------------------------------------------------------------
# Path helpers


def _within(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


_EXT_HINT = "supported extensions: " + " ".join(sorted(IMAGE_EXTENSIONS))


# ---------------------------------------------------------------------------------------------
# Folder mode


def _discover_folder(root: Path, wanted: set[str] | None, notes: list[str], fold_case: bool = True,
                     original: dict[str, str] | None = None) -> tuple[list[tuple[str, str, str]], list[_Reject]]:
    root_s = os.fspath(root)
    real_root = os.path.realpath(root_s)
    try:
        top = sorted(os.scandir(root_s), key=lambda e: e.name)
    except OSError as e:
        raise WorkspaceError(f"Cannot list input folder {root}: {e.strerror or e}.") from e

    found: list[str] = []  # image paths of the class folder being walked
    rejects: list[_Reject] = []
    top_dirs = [e for e in top if not e.name.startswith(".") and _safe_is_dir(e)]
    split_layout = bool(top_dirs) and all(e.name.strip().lower() in SPLIT_FOLDERS for e in top_dirs)

    def no_class(rel: str, parent: str) -> None:
        name = rel.rsplit("/", 1)[-1]
        rejects.append(_Reject("", -1, rel, "no class folder",
                               f"move it into a folder named after its class, e.g. {parent}/<class>/{name}"))

    splits: list[tuple[str, str]] = []  # (split, relative dir)
    for entry in top:
        if entry.name.startswith("."):
            continue
        if _safe_is_dir(entry):
            splits.append((entry.name.strip() if split_layout else DEFAULT_SPLIT, entry.name))
        elif _is_image_name(entry.name):
            no_class(entry.name, os.fspath(root))

    samples: list[tuple[str, str, str]] = []
    for split, top_rel in splits:
        if split_layout:
            try:
                entries = sorted(os.scandir(os.path.join(root_s, top_rel)), key=lambda e: e.name)
            except OSError as e:
                rejects.append(_Reject("", -1, top_rel, f"cannot list folder: {e.strerror or e}",
                                       "check the folder's permissions"))
                continue
            class_dirs = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if _safe_is_dir(entry):
                    class_dirs.append(f"{top_rel}/{entry.name}")
                elif _is_image_name(entry.name):
                    no_class(f"{top_rel}/{entry.name}", f"{root}/{top_rel}")
        else:
            class_dirs = [top_rel]
        for class_rel in class_dirs:
            label = clean_label(class_rel.rsplit("/", 1)[-1])
            found.clear()
            _walk_class_dir(root_s, real_root, class_rel, found, rejects, set())
            for rel in found:
                if not label:
                    rejects.append(_Reject("", -1, rel, "empty label",
                                           "the class folder's name is blank; rename it to the class"))
                elif not _is_wanted(label, wanted, fold_case):
                    rejects.append(_Reject("", -1, rel, f"unknown class {label!r}",
                                           f"expected one of: {', '.join(sorted(wanted))}" + _did_you_mean(label, wanted)))
                else:
                    samples.append((rel, label, split))
    samples = _one_sample_per_file(root_s, real_root, samples, rejects)
    folded = _fold_case([s[1] for s in samples], wanted, fold_case, notes)
    if folded:
        (original if original is not None else {}).update({s[0]: s[1] for s in samples if s[1] in folded})
        samples = [(rel, folded.get(label, label), split) for rel, label, split in samples]
    taken_for = lookalike_labels([s[1] for s in samples])
    if taken_for:
        odd = [s for s in samples if s[1] in taken_for]
        rejects.extend(_Reject("", -1, rel, "look-alike label", _lookalike_hint(label, taken_for[label]))
                       for rel, label, _ in odd)
        samples = [s for s in samples if s[1] not in taken_for]
        notes.append(_lookalike_note(taken_for, len(odd)))
    samples.sort(key=lambda s: s[0])
    rejects.sort(key=lambda r: r.source_path)
    return samples, rejects


def _one_sample_per_file(root_s: str, real_root: str, samples: list[tuple[str, str, str]],
                         rejects: list[_Reject]) -> list[tuple[str, str, str]]:
    """A file reached twice (a symbolic link to another image of the tree) is one sample: the one at
    the file's real place (no link on its path) is kept, else the first; the others are rejected."""
    by_real: dict[str, list[int]] = {}
    for i, (rel, _, _) in enumerate(samples):
        by_real.setdefault(os.path.realpath(os.path.join(root_s, rel)), []).append(i)
    drop: set[int] = set()
    for real, idx in by_real.items():
        if len(idx) < 2:
            continue
        keep = next((i for i in idx if os.path.join(real_root, samples[i][0]) == real), idx[0])
        for i in idx:
            if i != keep:
                drop.add(i)
                rejects.append(_Reject("", -1, samples[i][0], "same file as another sample",
                                       f"a symbolic link to {samples[keep][0]}, which is read once (as "
                                       f"{samples[keep][1]!r}); remove the link"))
    return [s for i, s in enumerate(samples) if i not in drop]


def _did_you_mean(label: str, wanted: set[str]) -> str:
    """ (did you mean 'happy'?)" when ``label`` looks like one of the wanted classes: the same
    letters in another script or case, other spacing, or one typing slip away."""
    skeleton = label_skeleton(label)
    near = sorted(w for w in wanted if label_skeleton(w) == skeleton)
    if near:
        return f" (did you mean {near[0]!r}? {label!r} is {_code_points(label)})"
    typo = class_names.suggestion(label, wanted)
    return f" (did you mean {typo!r}?)" if typo else ""


def check_classes(classes: list[str], samples: pd.DataFrame, rejects: pd.DataFrame,
                  labels_file: Path | None = None) -> None:
    """``discover``'s result for ``classes``: a --classes name that no image carries while a
    rejected label looks like it (case, look-alike letters, spacing, one typing slip) is a typo,
    in --classes or in the labels: raise, rather than drop that class's rows and carry on."""
    counts = Counter(samples["label"].astype(str))
    problems = rejects["problem"].astype(str)
    unknown = Counter(ast.literal_eval(p[len("unknown class "):]) for p in problems
                      if p.startswith("unknown class "))  # the problem quotes the label with repr()
    for name in dict.fromkeys(clean_label(str(c)) for c in classes):
        if counts.get(name):
            continue
        same = [u for u in unknown if label_skeleton(u) == label_skeleton(name)]
        near = same or [u for u in sorted(unknown) if class_names.similar(name, u)]
        if near:
            where = f"in {labels_file}" if labels_file else "as a class folder"
            raise WorkspaceError(
                f"--classes names {name!r}, which no image carries, while {unknown[near[0]]} images are labelled "
                f"{near[0]!r} {where}: did you mean {near[0]!r}? Fix the --classes list (or those labels); as "
                "it is, those images would be dropped as an unknown class.")


def _safe_is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks; escaping links are checked when walking
    except OSError:
        return False


def _walk_class_dir(root_s: str, real_root: str, rel_dir: str, found: list[str],
                    rejects: list[_Reject], seen: set[str]) -> None:
    """Collect image files under ``rel_dir`` (relative to the root), not following symlinks that
    leave the root, and visiting each real folder once (symlink loops)."""
    full_dir = os.path.join(root_s, rel_dir)
    real_dir = os.path.realpath(full_dir)
    if not _within(real_dir, real_root):
        rejects.append(_Reject("", -1, rel_dir, "path escapes the input root",
                               "a symbolic link to a folder outside the input root is not followed; "
                               "copy the images in or choose a higher input root"))
        return
    if real_dir in seen:
        return
    seen.add(real_dir)
    try:
        entries = sorted(os.scandir(full_dir), key=lambda e: e.name)
    except OSError as e:
        rejects.append(_Reject("", -1, rel_dir, f"cannot list folder: {e.strerror or e}",
                               "check the folder's permissions"))
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        rel = f"{rel_dir}/{entry.name}"
        if _safe_is_dir(entry):
            if entry.is_symlink() and _within(os.path.realpath(entry.path), real_root):
                # data/angry/loop -> .. would read every class again as 'angry': a folder inside the
                # tree is read where it lies, never again through a link.
                rejects.append(_Reject("", -1, rel, "symbolic link back into the input tree",
                                       "not followed: the folder it points to is read where it lies; "
                                       "remove the link (or copy the images in)"))
                continue
            _walk_class_dir(root_s, real_root, rel, found, rejects, seen)
            continue
        if not _is_image_name(entry.name):
            continue
        if entry.is_symlink():
            real = os.path.realpath(entry.path)
            if not _within(real, real_root):
                rejects.append(_Reject("", -1, rel, "path escapes the input root",
                                       "a symbolic link to a file outside the input root is not "
                                       "followed; copy the file in"))
                continue
            if not os.path.exists(entry.path):
                rejects.append(_Reject("", -1, rel, "broken symbolic link",
                                       "point the link at an existing image or remove it"))
                continue
        try:
            regular = entry.is_file()
        except OSError:
            regular = False
        if not regular:
            rejects.append(_Reject("", -1, rel, "not a regular file", "remove it or replace it with an image"))
            continue
        found.append(rel)


# ---------------------------------------------------------------------------------------------
# Label-file mode: reading


@dataclass
class _Table:
    header: list[str]  # as found in the file
    rows: list[tuple[int, list[Any]]]  # (row number as the user sees it, cells)
    encoding: str | None  # text encoding of a CSV (to recover non-UTF-8 names); None for Parquet


def _normalise_header(name: Any) -> str:
    s = str(name).replace("\ufeff", "").strip().lower()
    return re.sub(r"[\s\-]+", "_", s)


def _read_label_table(path: Path, notes: list[str]) -> _Table:
    if not path.exists():
        raise LabelFileError(f"Label file {path} does not exist. Check the path passed with --labels.")
    if path.is_dir():
        raise LabelFileError(f"Label file {path} is a folder. Pass the CSV or Parquet file itself.")
    kind = file_kind(path)
    # A pipe (`--labels <(...)`, /dev/stdin) or device can be read only once: read it into memory
    # first and sniff the format from that buffer.
    raw = _read_stream(path, kind) if kind else None
    try:
        if raw is None:
            with open(path, "rb") as f:
                head = f.read(8)
        else:
            head = raw[:8]
    except OSError as e:
        raise LabelFileError(f"Cannot read label file {path}: {e.strerror or e}. "
                             "Check that it exists and that you may read it.") from e
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES or (suffix not in CSV_SUFFIXES and head.startswith(b"PAR1")):
        return _read_parquet(path, raw)
    if head.startswith(b"PK\x03\x04"):
        raise LabelFileError(f"Label file {path} looks like an Excel workbook (or another zip file). "
                             "Save it as CSV (UTF-8) and pass that.")
    return _read_csv(path, notes, raw)


def _read_stream(path: Path, kind: str) -> bytes:
    """All of a label file that is not a regular file, read once and bounded: at most
    MAX_STREAM_BYTES (/dev/zero never ends) and at most STREAM_IDLE_SECONDS without data (a FIFO
    nobody writes to must not hang)."""
    try:
        # O_NONBLOCK: opening a FIFO that has no writer yet would block forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise LabelFileError(f"Cannot read label file {path} ({kind}): {e.strerror or e}. "
                             "Save the labels to a regular file and pass that.") from e
    buf = bytearray()
    writer_seen = False  # EOF before any writer connected is "not yet", not "empty"
    deadline = time.monotonic() + STREAM_IDLE_SECONDS
    try:
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:  # a writer is connected but has sent nothing yet
                writer_seen = True
                chunk = None
            except OSError as e:
                raise LabelFileError(f"Cannot read label file {path} ({kind}): {e.strerror or e}.") from e
            if chunk:
                buf += chunk
                deadline = time.monotonic() + STREAM_IDLE_SECONDS
                if len(buf) > MAX_STREAM_BYTES:
                    raise LabelFileError(
                        f"Label file {path} is {kind} that gave more than {MAX_STREAM_BYTES // 2**20} MB. "
                        f"Label files that are not regular files are read into memory, up to "
                        f"{MAX_STREAM_BYTES // 2**20} MB: save the labels to a regular file and pass that.")
                continue
            if chunk == b"" and (buf or writer_seen):
                return bytes(buf)
            left = deadline - time.monotonic()
            if left <= 0:
                raise LabelFileError(
                    f"Label file {path} is {kind} and nothing came from it for {STREAM_IDLE_SECONDS:.0f} s. "
                    "Save the labels to a regular file and pass that.")
            if chunk is None:
                select.select([fd], [], [], left)  # wakes on data or on the writer closing
            else:
                time.sleep(min(0.05, left))  # no writer yet: look again shortly
    finally:
        os.close(fd)


def _read_parquet(path: Path, raw: bytes | None = None) -> _Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path if raw is None else pa.BufferReader(raw))
    except Exception as e:  # ArrowInvalid, OSError, ...: the file as a whole is unusable
        raise LabelFileError(f"Cannot read label file {path} as Parquet: {e}. "
                             "Re-export it, or save it as CSV.") from e
    header = [str(c) for c in table.column_names]
    if not header:
        raise LabelFileError(f"Label file {path} has no columns; expected path and label columns.")
    idx = _resolve_columns(path, header)
    columns: list[list[Any]] = []
    for i in range(len(header)):
        # Only the columns we use are converted; others stay empty placeholders.
        if i in idx.values():
            try:
                columns.append(table.column(i).to_pylist())
            except Exception as e:
                raise LabelFileError(f"Cannot read column {header[i]!r} of {path}: {e}.") from e
        else:
            columns.append([None] * table.num_rows)
    rows = [(r + 1, [col[r] for col in columns]) for r in range(table.num_rows)]
    if not rows:
        raise LabelFileError(f"Label file {path} has no data rows. Add one row per image "
                             "(path, label).")
    return _Table(header, rows, None)


def _decode_text(path: Path, raw: bytes, notes: list[str]) -> tuple[str, str]:
    if raw.startswith(b"\xef\xbb\xbf"):
        try:
            return raw[3:].decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            pass  # a BOM followed by non-UTF-8 bytes: fall through to the fallbacks
    elif raw.startswith((b"\xff\xfe", b"\xfe\xff")):  # Excel's "Unicode text" export
        try:
            return raw.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as e:
            raise LabelFileError(f"Label file {path} starts with a UTF-16 byte-order mark but is not "
                                 f"valid UTF-16 ({e}). Save it as CSV (UTF-8).") from e
    else:
        try:
            return raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            pass
    # Not UTF-8. cp1252 (Windows "ANSI", a superset of latin-1's printable characters) is the
    # usual culprit; latin-1 decodes any byte string, so it is the last resort.
    for enc in ("cp1252", "latin-1"):
        try:
            text = raw.decode(enc)
        except UnicodeDecodeError:
            continue
        text = text[1:] if text.startswith("\u00ef\u00bb\u00bf") else text
        notes.append(f"{path} is not valid UTF-8; read it as {enc}. Save it as UTF-8 to be sure "
                     "non-ASCII names are read as intended.")
        return text, enc
    raise AssertionError("latin-1 decodes any bytes")  # pragma: no cover


def _records(text: str, delimiter: str) -> Any:
    return csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=False)


def _blank(cells: list[Any]) -> bool:
    return all(not str(c).strip() for c in cells)


def _first_record(text: str, delimiter: str) -> list[str]:
    try:
        for rec in _records(text, delimiter):
            if not _blank(rec):
                return rec
    except csv.Error:
        return []
    return []


def _choose_delimiter(text: str, suffix: str) -> str:
    """Pick the delimiter whose header has both a path and a label column; else the one that
    splits the header into the most cells (then the missing-column error lists sensible names)."""
    order = ("\t", ",", ";") if suffix == ".tsv" else _DELIMITERS
    best, best_score = order[0], -1
    for d in order:
        names = {_normalise_header(c) for c in _first_record(text, d)}
        score = len(names)
        if names & set(PATH_ALIASES) and names & set(LABEL_ALIASES):
            score += 10_000
        if score > best_score:
            best, best_score = d, score
    return best


def _read_csv(path: Path, notes: list[str], raw: bytes | None = None) -> _Table:
    try:
        raw = path.read_bytes() if raw is None else raw
    except OSError as e:
        raise LabelFileError(f"Cannot read label file {path}: {e.strerror or e}.") from e
    text, encoding = _decode_text(path, raw, notes)
    if not text.strip():
        raise LabelFileError(f"Label file {path} is empty. Expected a header row such as "
                             "`path,label` (optionally `split`) and one row per image.")
    # Excel writes an optional "sep=;" first line; honour it and count it as a row.
    first_line, _, rest = text.partition("\n")
    row_offset = 0
    m = re.fullmatch(r"sep=(.)", first_line.rstrip("\r"))
    if m:
        delimiter, text, row_offset = m.group(1), rest, 1
    else:
        delimiter = _choose_delimiter(text, path.suffix.lower())

    header: list[str] | None = None
    rows: list[tuple[int, list[Any]]] = []
    n = row_offset
    try:
        for rec in _records(text, delimiter):
            n += 1
            if _blank(rec):
                continue  # blank lines: not data, but they keep their row number
            if header is None:
                header = rec
                _resolve_columns(path, header)  # fail fast with the columns found
                continue
            rows.append((n, rec))
    except csv.Error as e:
        raise LabelFileError(f"Label file {path}, row {n + 1}: cannot parse CSV ({e}). "
                             "Check the quoting around that row.") from e
    if header is None:  # only a "sep=" line
        raise LabelFileError(f"Label file {path} has no header row. Expected a header such as "
                             "`path,label` and one row per image.")
    if not rows:
        raise LabelFileError(f"Label file {path} has a header but no data rows. Add one row per "
                             "image (path, label).")
    return _Table(header, rows, encoding)


def _resolve_columns(path: Path, header: list[str]) -> dict[str, int]:
    names = [_normalise_header(h) for h in header]
    found: dict[str, int] = {}
    for key, aliases in (("path", PATH_ALIASES), ("label", LABEL_ALIASES), ("split", SPLIT_ALIASES)):
        for alias in aliases:
            if alias in names:
                found[key] = names.index(alias)
                break
    missing = [k for k in ("path", "label") if k not in found]
    if missing:
        shown = ", ".join(repr(str(h)) for h in header) or "(none)"
        msg = (f"Label file {path} is missing the required column(s) {', '.join(missing)}. "
               f"Found columns: {shown}. Expected: path (or {', '.join(PATH_ALIASES[1:4])}, "
               f"image) and label (or {', '.join(LABEL_ALIASES[1:4])}), optionally split.")
        if "pixels" in names:
            msg += (" This looks like a FER2013-style pixel CSV (emotion, pixels, Usage), which "
                    "fercure does not read yet: write the pixel rows out as image files first.")
        raise LabelFileError(msg)
    return found


# ---------------------------------------------------------------------------------------------
# Label-file mode: rows


def _cell_text(value: Any) -> str | None:
    """A cell as text; None when it is not a single value (a list, a struct...)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return os.fsdecode(value)  # Parquet binary paths: keep non-UTF-8 names (surrogateescape)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        # Integer labels read back as floats (a column with nulls) must stay "3", not "3.0".
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (list, tuple, dict, set)):
        return None
    return str(value)


class _Locator:
    """Turns a path cell into a path relative to the input root, or says what is wrong with it."""

    def __init__(self, root: Path, encoding: str | None):
        self.root = root
        self.root_s = os.fspath(root)
        self.abs_root = os.path.abspath(self.root_s)
        self.real_root = os.path.realpath(self.root_s)
        self.encoding = encoding
        self._cache: dict[str, tuple[str | None, str, str]] = {}

    def locate(self, raw: str) -> tuple[str | None, str, str]:
        """Return (relative posix path, "", "") or (None, problem, hint). A path listed many times
        is looked up on disk once."""
        found = self._cache.get(raw)
        if found is None:
            found = self._cache[raw] = self._locate(raw)
        return found

    def _locate(self, raw: str) -> tuple[str | None, str, str]:
        p = raw.strip()
        if "\x00" in p:
            return None, "path contains a NUL character", "fix the path in the label file"
        if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", p):
            return None, "path is a URL", "download the images first and list their local paths"
        if _WINDOWS_ABS.match(p):
            return None, "path escapes the input root", (
                f"a Windows absolute path cannot be located; write paths relative to {self.root}")
        if "\\" in p:
            # A literal backslash is a legal file-name character on POSIX; prefer it when such a
            # file exists, else read it as a Windows separator.
            rel, problem, hint = self._locate_one(p)
            if rel is not None:
                return rel, "", ""
            rel, problem, hint = self._locate_one(p.replace("\\", "/"))
            if rel is None and problem == "path does not exist":
                hint += " (backslashes were read as folder separators)"
            return rel, problem, hint
        rel, problem, hint = self._locate_one(p)
        if rel is None and problem == "path does not exist" and self.encoding not in (None, "utf-8"):
            # The label file is cp1252/latin-1 and the names on disk may be in that encoding too.
            try:
                alt = os.fsdecode(p.encode(self.encoding))
            except UnicodeEncodeError:
                alt = p
            if alt != p:
                rel2, _, _ = self._locate_one(alt)
                if rel2 is not None:
                    return rel2, "", ""
        return rel, problem, hint

    def _locate_one(self, p: str) -> tuple[str | None, str, str]:
        escape_hint = (f"paths must stay inside the input root {self.root}; copy the file in or "
                       "choose a higher input root")
        if os.path.isabs(p):
            ap = os.path.normpath(p)
            if ap in (self.abs_root, self.real_root):
                return None, "path is a directory", "give the path of an image file"
            for base in (self.abs_root, self.real_root):
                if _within(ap, base):
                    rel = os.path.relpath(ap, base).replace(os.sep, "/")
                    break
            else:
                return None, "path escapes the input root", escape_hint
        else:
            rel = posixpath.normpath(p)
            if rel == ".." or rel.startswith("../"):
                return None, "path escapes the input root", escape_hint
            if rel == ".":
                return None, "path is a directory", "give the path of an image file"
        if not _is_image_name(rel):
            return None, "not an image file extension", _EXT_HINT
        full = os.path.join(self.root_s, rel)
        if not os.path.lexists(full):
            return None, "path does not exist", self._missing_hint(rel)
        if not _within(os.path.realpath(full), self.real_root):
            return None, "path escapes the input root", (
                "a symbolic link that leads outside the input root is not followed; copy the file in")
        try:
            st = os.stat(full)
        except FileNotFoundError:
            return None, "path does not exist", "it is a broken symbolic link"
        except OSError as e:
            return None, f"cannot access path: {e.strerror or e}", "check the file's permissions"
        if stat.S_ISDIR(st.st_mode):
            return None, "path is a directory", "give the path of an image file"
        if not stat.S_ISREG(st.st_mode):
            return None, "not a regular file", "give the path of an image file"
        return rel, "", ""

    def _missing_hint(self, rel: str) -> str:
        hint = f"no file at {self.root_s}/{rel}; paths are relative to the input root {self.root}"
        first, _, remainder = rel.partition("/")
        if remainder and first == os.path.basename(self.abs_root) and os.path.lexists(
            os.path.join(self.root_s, remainder)
        ):
            hint += f" (paths seem to include the root folder's name {first!r}; drop that prefix)"
        return hint


def _discover_label_file(root: Path, labels_file: Path, wanted: set[str] | None, notes: list[str],
                         fold_case: bool = True, original: dict[str, str] | None = None
                         ) -> tuple[list[tuple[str, str, str]], list[_Reject]]:
    table = _read_label_table(labels_file, notes)
    file_s = os.fspath(labels_file)
    locator = _Locator(root, table.encoding)
    good, rejects = _check_rows(table, _resolve_columns(labels_file, table.header), file_s, locator, wanted,
                                fold_case)
    # Case variants first: 'Angry' and 'angry' are one class, and one path listed under both is a
    # duplicate, not a conflict.
    folded = _fold_case([g[2] for g in good], wanted, fold_case, notes)
    if folded:
        (original if original is not None else {}).update({g[1]: g[2] for g in good if g[2] in folded})
        good = [(g[0], g[1], folded.get(g[2], g[2]), g[3], g[4]) for g in good]
    # Look-alike spellings of one class, judged before duplicates: a path listed as 'happy' and as
    # 'hаppy' is one label misspelt once, not a conflict.
    taken_for = lookalike_labels([g[2] for g in good])
    if taken_for:
        odd = [g for g in good if g[2] in taken_for]
        rejects.extend(_Reject(file_s, g[0], g[4], "look-alike label", _lookalike_hint(g[2], taken_for[g[2]]))
                       for g in odd)
        good = [g for g in good if g[2] not in taken_for]
        notes.append(_lookalike_note(taken_for, len(odd)))
    samples = _one_row_per_path(good, file_s, rejects)
    kept = _one_path_per_real_file(samples, good, locator, file_s, rejects)
    rejects.sort(key=lambda r: r.row)
    return kept, rejects


def _check_rows(table, idx: dict[str, int], file_s: str, locator: "_Locator", wanted: set[str] | None,
                fold_case: bool = True) -> tuple[list[tuple[int, str, str, str, str]], list[_Reject]]:
    """Rows that pass every per-row check, as (row, relative path, label, split, path as written),
    and a reject for each row that does not."""
    width = len(table.header)
    rejects: list[_Reject] = []
    good: list[tuple[int, str, str, str, str]] = []
    for row, cells in table.rows:
        def cell(key: str) -> str | None:
            i = idx.get(key)
            return "" if i is None or i >= len(cells) else _cell_text(cells[i])

        path_txt = cell("path")
        shown = path_txt.strip() if path_txt is not None else repr(cells[idx["path"]])

        def reject(problem: str, hint: str) -> None:
            rejects.append(_Reject(file_s, row, shown, problem, hint))

        if len(cells) > width and not _blank(cells[width:]):
            reject(f"row has {len(cells)} fields but the header has {width}",
                   "quote cells that contain the delimiter, or remove the extra cells")
            continue
        if path_txt is None:
            reject("path is not a single value", "the path cell must hold text")
            continue
        if not path_txt.strip():
            reject("empty path", "fill in the image's path relative to the input root, or remove the row")
            continue
        label_txt = cell("label")
        if label_txt is None:
            reject("label is not a single value", "the label cell must hold one class name")
            continue
        label = clean_label(label_txt)
        if not label:
            reject("empty label", "fill in the label, or remove the row")
            continue
        if not _is_wanted(label, wanted, fold_case):
            reject(f"unknown class {label!r}", f"expected one of: {', '.join(sorted(wanted))} "
                                               "(or add it to --classes)" + _did_you_mean(label, wanted))
            continue
        rel, problem, hint = locator.locate(path_txt)
        if rel is None:
            reject(problem, hint)
            continue
        split_txt = cell("split")
        split = (split_txt or "").strip() or DEFAULT_SPLIT
        good.append((row, rel, label, split, shown))
    return good, rejects


def _one_row_per_path(good: list[tuple[int, str, str, str, str]], file_s: str,
                      rejects: list[_Reject]) -> list[tuple[str, str, str]]:
    """Duplicates, judged on the normalised path so "a\\b.png", "./a/b.png" and "a/b.png" are one.
    One pass to group, one over the groups: linear in the rows however often a path repeats."""
    by_path: dict[str, list[tuple[int, str, str, str, str]]] = {}
    for g in good:
        by_path.setdefault(g[1], []).append(g)
    samples: list[tuple[str, str, str]] = []
    for rel, group in by_path.items():  # insertion order: samples keep the order of first rows
        first_row, _, label, split, _ = group[0]
        firsts = {}  # label -> its first row: the hint shows each conflicting label once
        for g in group:
            firsts.setdefault(g[2], g[0])
        if len(firsts) > 1:
            shown_rows = sorted((r, lab) for lab, r in firsts.items())[:5]
            listing = ", ".join(f"row {r}: {lab!r}" for r, lab in shown_rows)
            if len(group) > len(shown_rows):  # keep hints short when one path is listed many times
                listing += f", and {len(group) - len(shown_rows)} more rows"
            hint = f"{listing}; keep one row with the right label (all rows of this path are rejected)"
            rejects.extend(_Reject(file_s, g[0], g[4], "conflicting labels for the same path", hint)
                           for g in group)
            continue
        samples.append((rel, label, split))
        hint = f"row {first_row} already lists this path with the same label; remove this row"
        rejects.extend(_Reject(file_s, g[0], g[4], "duplicate row", hint) for g in group[1:])
    return samples


def _one_path_per_real_file(samples: list[tuple[str, str, str]], good: list[tuple[int, str, str, str, str]],
                         locator: "_Locator", file_s: str, rejects: list[_Reject]) -> list[tuple[str, str, str]]:
    """Two paths to one file (a symbolic link listed beside its target) are one sample: the first row."""
    first_row_of = {g[1]: g[0] for g in reversed(good)}
    by_real: dict[str, str] = {}
    kept = []
    for rel, label, split in samples:
        real = os.path.realpath(os.path.join(locator.root_s, rel))
        if real in by_real:
            other = by_real[real]
            rejects.append(_Reject(file_s, first_row_of[rel], rel, "same file as another sample",
                                   f"row {first_row_of[other]} lists the same file as {other}; keep one row"))
            continue
        by_real[real] = rel
        kept.append((rel, label, split))
    return kept

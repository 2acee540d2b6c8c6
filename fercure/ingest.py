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

This module holds the two layouts (a class-folder tree, the rows of a label file) and the sample and
reject rows they make. Reading the label file (formats, encodings, columns) is
``fercure.label_file``'s; checking a path (inside the root, an image, a regular file) is
``fercure.input_paths``'; how a label becomes a class (cleaning, case, look-alikes, reserved names)
is ``fercure.label_rules``'.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fercure import labels as class_names
from fercure.input_paths import PathLocator, is_image_name, safe_is_dir, within
from fercure.label_file import blank_cells, cell_text, read_label_table, resolve_columns
from fercure.label_rules import (check_reserved, clean_label, did_you_mean, fold_case_variants, is_wanted,
                                 lookalike_hint, lookalike_labels, lookalike_note)
from fercure.workspace import WorkspaceError, sample_id

log = logging.getLogger("fercure.ingest")

SAMPLE_COLUMNS = ["sample_id", "source_path", "label", "split"]
REJECT_COLUMNS = ["file", "row", "source_path", "problem", "hint"]
DEFAULT_SPLIT = "train"
# prepare fails when more than this share of the input's rows is rejected (--max-rejected): a run
# on what is left would pass for the whole dataset.
MAX_REJECTED_SHARE = 0.25

SPLIT_FOLDERS = frozenset({"train", "training", "test", "testing", "val", "valid", "validation",
                           "dev"})


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
    top_dirs = [e for e in top if not e.name.startswith(".") and safe_is_dir(e)]
    split_layout = bool(top_dirs) and all(e.name.strip().lower() in SPLIT_FOLDERS for e in top_dirs)

    def no_class(rel: str, parent: str) -> None:
        name = rel.rsplit("/", 1)[-1]
        rejects.append(_Reject("", -1, rel, "no class folder",
                               f"move it into a folder named after its class, e.g. {parent}/<class>/{name}"))

    splits: list[tuple[str, str]] = []  # (split, relative dir)
    for entry in top:
        if entry.name.startswith("."):
            continue
        if safe_is_dir(entry):
            splits.append((entry.name.strip() if split_layout else DEFAULT_SPLIT, entry.name))
        elif is_image_name(entry.name):
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
                if safe_is_dir(entry):
                    class_dirs.append(f"{top_rel}/{entry.name}")
                elif is_image_name(entry.name):
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
                elif not is_wanted(label, wanted, fold_case):
                    rejects.append(_Reject("", -1, rel, f"unknown class {label!r}",
                                           f"expected one of: {', '.join(sorted(wanted))}" + did_you_mean(label, wanted)))
                else:
                    samples.append((rel, label, split))
    samples = _one_sample_per_file(root_s, real_root, samples, rejects)
    folded = fold_case_variants([s[1] for s in samples], wanted, fold_case, notes)
    if folded:
        (original if original is not None else {}).update({s[0]: s[1] for s in samples if s[1] in folded})
        samples = [(rel, folded.get(label, label), split) for rel, label, split in samples]
    taken_for = lookalike_labels([s[1] for s in samples])
    if taken_for:
        odd = [s for s in samples if s[1] in taken_for]
        rejects.extend(_Reject("", -1, rel, "look-alike label", lookalike_hint(label, taken_for[label]))
                       for rel, label, _ in odd)
        samples = [s for s in samples if s[1] not in taken_for]
        notes.append(lookalike_note(taken_for, len(odd)))
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

def _walk_class_dir(root_s: str, real_root: str, rel_dir: str, found: list[str],
                    rejects: list[_Reject], seen: set[str]) -> None:
    """Collect image files under ``rel_dir`` (relative to the root), not following symlinks that
    leave the root, and visiting each real folder once (symlink loops)."""
    full_dir = os.path.join(root_s, rel_dir)
    real_dir = os.path.realpath(full_dir)
    if not within(real_dir, real_root):
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
        if safe_is_dir(entry):
            if entry.is_symlink() and within(os.path.realpath(entry.path), real_root):
                # data/angry/loop -> .. would read every class again as 'angry': a folder inside the
                # tree is read where it lies, never again through a link.
                rejects.append(_Reject("", -1, rel, "symbolic link back into the input tree",
                                       "not followed: the folder it points to is read where it lies; "
                                       "remove the link (or copy the images in)"))
                continue
            _walk_class_dir(root_s, real_root, rel, found, rejects, seen)
            continue
        if not is_image_name(entry.name):
            continue
        if entry.is_symlink():
            real = os.path.realpath(entry.path)
            if not within(real, real_root):
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
# Label-file mode: rows


def _discover_label_file(root: Path, labels_file: Path, wanted: set[str] | None, notes: list[str],
                         fold_case: bool = True, original: dict[str, str] | None = None
                         ) -> tuple[list[tuple[str, str, str]], list[_Reject]]:
    table = read_label_table(labels_file, notes)
    file_s = os.fspath(labels_file)
    locator = PathLocator(root, table.encoding)
    good, rejects = _check_rows(table, resolve_columns(labels_file, table.header), file_s, locator, wanted,
                                fold_case)
    # Case variants first: 'Angry' and 'angry' are one class, and one path listed under both is a
    # duplicate, not a conflict.
    folded = fold_case_variants([g[2] for g in good], wanted, fold_case, notes)
    if folded:
        (original if original is not None else {}).update({g[1]: g[2] for g in good if g[2] in folded})
        good = [(g[0], g[1], folded.get(g[2], g[2]), g[3], g[4]) for g in good]
    # Look-alike spellings of one class, judged before duplicates: a path listed as 'happy' and as
    # 'hаppy' is one label misspelt once, not a conflict.
    taken_for = lookalike_labels([g[2] for g in good])
    if taken_for:
        odd = [g for g in good if g[2] in taken_for]
        rejects.extend(_Reject(file_s, g[0], g[4], "look-alike label", lookalike_hint(g[2], taken_for[g[2]]))
                       for g in odd)
        good = [g for g in good if g[2] not in taken_for]
        notes.append(lookalike_note(taken_for, len(odd)))
    samples = _one_row_per_path(good, file_s, rejects)
    kept = _one_path_per_real_file(samples, good, locator, file_s, rejects)
    rejects.sort(key=lambda r: r.row)
    return kept, rejects


def _check_rows(table, idx: dict[str, int], file_s: str, locator: "PathLocator", wanted: set[str] | None,
                fold_case: bool = True) -> tuple[list[tuple[int, str, str, str, str]], list[_Reject]]:
    """Rows that pass every per-row check, as (row, relative path, label, split, path as written),
    and a reject for each row that does not."""
    width = len(table.header)
    rejects: list[_Reject] = []
    good: list[tuple[int, str, str, str, str]] = []
    for row, cells in table.rows:
        def cell(key: str) -> str | None:
            i = idx.get(key)
            return "" if i is None or i >= len(cells) else cell_text(cells[i])

        path_txt = cell("path")
        shown = path_txt.strip() if path_txt is not None else repr(cells[idx["path"]])

        def reject(problem: str, hint: str) -> None:
            rejects.append(_Reject(file_s, row, shown, problem, hint))

        if len(cells) > width and not blank_cells(cells[width:]):
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
        if not is_wanted(label, wanted, fold_case):
            reject(f"unknown class {label!r}", f"expected one of: {', '.join(sorted(wanted))} "
                                               "(or add it to --classes)" + did_you_mean(label, wanted))
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
                         locator: "PathLocator", file_s: str, rejects: list[_Reject]) -> list[tuple[str, str, str]]:
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

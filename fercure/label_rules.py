"""How a label as written becomes a class name, and which names are refused.

* ``clean_label``: NFC, without format characters (Unicode category Cf: zero-width space, BOM, ...)
  and surrounding whitespace, so `` happy``, ``happy\u200b`` and ``happy`` are one class (so are
  NFC and NFD ``café``).
* Case: labels that differ only in case are one class by default (``fold_case_variants``: the most
  frequent spelling, or the --classes one, with a note); otherwise they are look-alikes.
* Look-alikes: two different labels with one ``label_skeleton`` (``happy`` with a Cyrillic ``а``)
  are one class misspelt; ``lookalike_labels`` says which spelling the rarer one is taken for, and
  its rows are rejected with ``lookalike_hint``.
* ``check_reserved``: a class may not be named like a fixed column's suffix (``given``);
  ``check_classes``: a --classes name no image carries, while a rejected label looks like it, is
  a typo to fix, not a class to drop.

Warnings about names that may be deliberate (spacing, one typing slip, imbalance) are
``fercure.labels``'.
"""

from __future__ import annotations

import ast
import unicodedata
from collections import Counter
from pathlib import Path

import pandas as pd

from fercure import labels as class_names
from fercure.labels import label_skeleton
from fercure.workspace import WorkspaceError


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


def lookalike_hint(label: str, keep: str) -> str:
    """The fix for a row whose label is a look-alike spelling of ``keep``, with both code points."""
    return (f"label {label!r} ({_code_points(label)}) looks like {keep!r} ({_code_points(keep)}) but is a "
            f"different string: did you mean {keep!r}? Fix the label and re-run (rows of the rarer spelling "
            "are rejected, not made a class of their own)")


def lookalike_note(taken_for: dict[str, str], n_rows: int) -> str:
    """The summary note for the rows rejected as look-alike labels."""
    pairs = ", ".join(f"{lab!r} for {keep!r}" for lab, keep in sorted(taken_for.items())[:3])
    return (f"{n_rows} rows carry a label that looks like another class but is a different string "
            f"({pairs}); they are rejected as 'look-alike label' (see rejects.parquet).")


def is_wanted(label: str, wanted: set[str] | None, fold_case: bool) -> bool:
    """Whether ``label`` is one of the --classes (``wanted``; None: any), up to case when ``fold_case``."""
    return wanted is None or label in wanted or (fold_case and label.casefold() in {w.casefold() for w in wanted})


def fold_case_variants(labels: list[str], wanted: set[str] | None, fold_case: bool, notes: list[str]) -> dict[str, str]:
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


def did_you_mean(label: str, wanted: set[str]) -> str:
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

"""Class names that are probably one class spelt two ways, and class sizes worth a warning (pure).

Labels that differ only in case (``Angry``, ``ANGRY``, ``angry``) are one class by default: ``case_variants``
maps each spelling to the one kept. Look-alike characters (``hаppy`` with a Cyrillic а) are rejected
by ``fercure.ingest``: they cannot be two classes. What is left here may be deliberate, so it is
reported with a suggestion, not rejected: names that differ by whitespace, ``_`` or ``-`` only
(``very happy`` / ``very_happy``), or by one edit (``angyr`` / ``angry``).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable, Mapping

# A class this many times the size of another is strong imbalance (FER2013: 55 vs 884 disgust/happy
# in a 1,800-image sample is 16×): worth knowing before training, which weighs classes by count.
IMBALANCE_RATIO = 10.0
_SEPARATORS = re.compile(r"[\s_\-]+")


# Letters of other scripts drawn like Latin ones: what makes "hаppy" (Cyrillic а) look like "happy".
# Deliberately small and explicit (Unicode's confusables.txt has thousands of entries, most of them
# irrelevant to class names); NFKC already folds fullwidth and other compatibility forms.
_HOMOGLYPHS = str.maketrans({
    # Cyrillic
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "х": "x", "у": "y", "і": "i", "ј": "j",
    "ѕ": "s", "һ": "h", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ӏ": "l",
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C",
    "Т": "T", "Х": "X", "У": "Y", "І": "I", "Ј": "J", "Ѕ": "S",
    # Greek
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N",
    "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
    "α": "a", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "υ": "u", "χ": "x",
})


def label_skeleton(label: str) -> str:
    """What a label looks like: NFKC, look-alike Cyrillic/Greek letters mapped to Latin, casefolded.
    Two different labels with one skeleton are one class spelt two ways."""
    return unicodedata.normalize("NFKC", label).translate(_HOMOGLYPHS).casefold()


def case_variants(labels: Iterable[str], preferred: Iterable[str] = ()) -> dict[str, str]:
    """{spelling: the spelling kept} for labels that differ from another only in case. The kept
    spelling is a ``preferred`` one of the same letters (the --classes list), else the most frequent,
    then the lower-case one, then the first in sorted order."""
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    named = set(preferred)
    pref: dict[str, str] = {}
    for p in sorted(named):
        pref.setdefault(p.casefold(), p)
    groups: dict[str, list[str]] = {}
    for label in sorted(counts):
        groups.setdefault(label.casefold(), []).append(label)
    out: dict[str, str] = {}
    for folded, group in groups.items():
        keep = pref.get(folded) or min(group, key=lambda lab: (-counts[lab], lab != lab.lower(), lab))
        out.update({lab: keep for lab in group if lab != keep and lab not in named})  # a named class stays
    return out


def _key(label: str) -> str:
    return _SEPARATORS.sub(" ", label_skeleton(label)).strip()


def within_one_edit(a: str, b: str) -> bool:
    """True when ``b`` is ``a`` with one character inserted, deleted, replaced, or two neighbours
    swapped (``angyr`` → ``angry``): the typing slips."""
    if a == b:
        return True
    la, lb = len(a), len(b)
    if abs(la - lb) > 1:
        return False
    if la == lb:
        diff = [i for i in range(la) if a[i] != b[i]]
        if len(diff) == 1:
            return True
        return len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
    if la > lb:
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    return a[i:] == b[i + 1:]


def similar(label: str, other: str) -> str | None:
    """Why ``label`` looks like a misspelling of ``other`` ("spacing", "one edit"), or None. Short
    names (under 4 characters once normalised) are compared for spacing only: one edit turns
    ``sad`` into ``mad``."""
    if label == other:
        return None
    a, b = _key(label), _key(other)
    if a == b:
        return "they differ only in spacing, '_' or '-'"
    if min(len(a), len(b)) >= 4 and within_one_edit(a, b):
        return "they differ by one letter"
    return None


def suggestion(label: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``label`` most likely misspells (the first in sorted order), or None."""
    return next((c for c in sorted(candidates) if similar(label, c)), None)


def near_duplicate_classes(counts: Mapping[str, int]) -> list[str]:
    """One warning per pair of class names that look like one class spelt two ways; the rarer
    spelling is named as the likely typo."""
    names = sorted(counts, key=lambda c: (-counts[c], c))
    out = []
    for i, common in enumerate(names):
        for rare in names[i + 1:]:
            why = similar(rare, common)
            if why:
                out.append(f"class {rare!r} ({counts[rare]} images) looks like a misspelling of {common!r} "
                           f"({counts[common]} images): {why}. Did you mean {common!r}? Fix the label, or "
                           f"pass --classes to reject it; as it is, {rare!r} is a class of its own.")
    return out


def balance_warnings(counts: Mapping[str, int], classes: Iterable[str] | None = None,
                     ratio: float = IMBALANCE_RATIO) -> list[str]:
    """Warnings for classes without a single image (among ``classes``, when given) and for strong
    imbalance (largest / smallest class ≥ ``ratio``)."""
    out = []
    wanted = list(classes) if classes is not None else list(counts)
    empty = [c for c in wanted if counts.get(c, 0) == 0]
    if empty:
        out.append(f"class(es) {', '.join(map(repr, empty))} have no images: training cannot learn them. "
                   "Add images, or leave them out of --classes.")
    present = {c: n for c, n in counts.items() if n > 0}
    if len(present) >= 2:
        big = max(present, key=lambda c: (present[c], c))
        small = min(present, key=lambda c: (present[c], c))
        if present[big] >= ratio * present[small]:
            out.append(f"classes are strongly imbalanced: {small!r} has {present[small]} images, {big!r} "
                       f"{present[big]} ({present[big] / present[small]:.0f}×). The model will lean to the "
                       f"large classes and flag more of the small ones; collect more {small!r} images, or read "
                       "its flags with that in mind.")
    return out

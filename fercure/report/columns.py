"""The audit columns the report reads, in one place.

Each key lists the names the column has had, newest first: the report reads whichever the audit
table carries, so a rename in ``fercure.audit`` needs one line here and nothing else.
"""

from __future__ import annotations

import pandas as pd

AUDIT_COLUMNS: dict[str, tuple[str, ...]] = {
    "id": ("sample_id",),
    "path": ("source_path",),
    "given": ("given_label",),
    "suggested": ("suggested_label",),  # not predicted_label: that is the argmax, even for a clean label
    "confidence": ("suggested_label_confidence",),
    "score": ("label_score", "label_quality"),
    "held_out_p": ("retrain_p_given",),  # the second model's p(given), held out for the rows it flagged
    "is_issue": ("is_label_issue",),
    "is_ambiguous": ("is_ambiguous_issue", "is_ambiguous"),
    "margin": ("ambiguous_score", "top2_margin"),  # top-2 gap: low = ambiguous
    "trained": ("trained",),
    "reason": ("reason",),
    "face_status": ("face_status",),
    "store_index": ("store_index",),
    "duplicate_of": ("duplicate_of",),
    "is_duplicate": ("is_duplicate_issue",),
    "is_blur": ("is_blur_issue",),
    "is_no_face": ("is_no_face_issue",),
    "is_unreadable": ("is_unreadable_issue",),
    "is_reviewed": ("is_reviewed",),
    "reviewed_label": ("reviewed_label",),
    "votes": ("votes",),  # a vote file's votes, most first ('' without)
    "review_rank": ("review_rank",),  # the queue's order (1 first), hand-made or re-ranked: fercure.rerank
    "group_id": ("group_id",),  # the group card a row belongs to (its first member's sample_id)
    "map_x": ("map_x",),  # the embedding map's coordinates
    "map_y": ("map_y",),
}

# measured by prepare, read from the manifest (0..255 grey mean and standard deviation)
MANIFEST_COLUMNS: dict[str, tuple[str, ...]] = {
    "id": ("sample_id",),
    "brightness": ("brightness",),
    "contrast": ("contrast",),
    "width": ("width",),
    "height": ("height",),
}


def name(df: pd.DataFrame, key: str, table: dict[str, tuple[str, ...]] = AUDIT_COLUMNS) -> str | None:
    """The name ``key`` has in ``df`` (None when the table has none of its names)."""
    return next((c for c in table[key] if c in df.columns), None)


def column(df: pd.DataFrame, key: str, default=None, table: dict[str, tuple[str, ...]] = AUDIT_COLUMNS) -> pd.Series:
    """``df``'s column for ``key``, or a column of ``default`` when it has none."""
    found = name(df, key, table)
    return df[found] if found is not None else pd.Series([default] * len(df), index=df.index, dtype=object)


def flag(df: pd.DataFrame, key: str) -> "pd.Series":
    """A boolean column (missing or null → False)."""
    return column(df, key, False).fillna(False).astype(bool)

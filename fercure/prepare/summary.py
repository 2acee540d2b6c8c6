"""What the steps of one prepare run share (``PrepareRun``), what the run returns
(``PrepareSummary``), and the notes about faces a user should hear."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fercure.faces import quality
from fercure.progress import NULL, Reporter
from fercure.workspace import Workspace


@dataclass
class PrepareSummary:
    workspace: Path
    n_samples: int
    n_rejects: int
    status_counts: dict[str, int]
    class_counts: dict[str, int]
    n_with_crop: int
    n_reused: int
    conflicting_duplicates: int
    rejects_by_problem: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        processed = self.n_samples - self.n_reused
        return processed / self.seconds if self.seconds > 0 else 0.0

    @property
    def slowest_stage(self) -> str:
        return max(self.stage_seconds, key=self.stage_seconds.get) if self.stage_seconds else ""


@dataclass
class PrepareRun:
    """What the steps of one prepare run (or one merge of its shards) share, as the fit's ``_Run``
    in fercure/train/loop.py does: the workspace, the reporter, the notes the summary lists, the
    seconds per step (decode, detect, align, quality, write), when the run started and how many
    samples it reused from an earlier run."""

    ws: Workspace
    reporter: Reporter = NULL
    notes: list[str] = field(default_factory=list)
    timings: Counter = field(default_factory=Counter)
    start: float = field(default_factory=time.perf_counter)
    reused: int = 0

    def summary(self, manifest: pd.DataFrame, rejects: pd.DataFrame, conflicts: int) -> PrepareSummary:
        has = manifest["store_index"].to_numpy() >= 0
        return PrepareSummary(
            workspace=self.ws.root,
            n_samples=len(manifest),
            n_rejects=len(rejects),
            status_counts={s: int(c) for s, c in manifest["face_status"].value_counts().items()},
            class_counts={c: int(n) for c, n in manifest["label"].value_counts().sort_index().items()},
            n_with_crop=int(has.sum()),
            n_reused=self.reused,
            conflicting_duplicates=conflicts,
            rejects_by_problem={str(k): int(v) for k, v in rejects["problem"].value_counts().items()} if len(rejects) else {},
            notes=self.notes,
            stage_seconds={k: round(v, 3) for k, v in self.timings.items()},
            seconds=time.perf_counter() - self.start,
        )


SHOWN_FILES = 10  # files a summary note names before "and N more"


def face_notes(manifest: pd.DataFrame, settings: dict) -> list[str]:
    """What the face stage decided that a user should hear: faces the detector missed on a
    pre-cropped dataset's crops (kept as given, not listed for review), photos with no face at all
    (named: kept whole, they train as an expression), and photos with several faces (one kept)."""
    out = []
    status = manifest["face_status"].astype(str).to_numpy()
    width = pd.to_numeric(manifest.get("width"), errors="coerce") if "width" in manifest else np.full(len(status), np.nan)
    height = pd.to_numeric(manifest.get("height"), errors="coerce") if "height" in manifest else np.full(len(status), np.nan)
    missed = quality.missed_on_crop(status, width, height)
    if missed.any():
        out.append(f"{int(missed.sum()):,} pre-cropped faces got no detection (a profile, an open mouth, a hand): kept "
                   "as given, audited like any other; the report does not list them as face problems "
                   "(audit-labels --list-missed-faces does).")
    photos = (status == "no_face") & ~missed
    if photos.any() and settings.get("on_no_face", "keep") == "keep":
        paths = manifest.loc[photos, "source_path"].astype(str).tolist()
        named = ", ".join(paths[:SHOWN_FILES]) + (f" and {len(paths) - SHOWN_FILES:,} more" if len(paths) > SHOWN_FILES else "")
        out.append(f"{len(paths):,} images have no face at all: {named}. They are kept whole and will train as their "
                   "label's expression; pass --on-no-face drop to leave them out (or drop them in the report).")
    several = (pd.to_numeric(manifest.get("face_count"), errors="coerce").fillna(0).to_numpy() > 1) & (status == "ok") \
        if "face_count" in manifest else np.zeros(len(status), bool)
    if several.any():
        policy = settings.get("multi_face", "largest")
        out.append(f"{int(several.sum()):,} images show several faces: status ok, the {policy.replace('-', ' ')} one "
                   "kept (--multi-face most-central or drop for another choice).")
    return out


def face_problems_note(manifest: pd.DataFrame, ws: Workspace, shown: int = 5) -> str:
    """The face problems of photos prepared without labels, by status, with the first few files."""
    odd = manifest[manifest["face_status"] != "ok"]
    if odd.empty:
        return f"Every one of the {len(manifest)} photos has one clear face."
    counts = ", ".join(f"{s}: {n}" for s, n in odd["face_status"].value_counts().sort_index().items())
    first = "; ".join(f"{p} ({s}{': ' + r if r else ''})" for p, s, r in
                      zip(odd["source_path"][:shown], odd["face_status"][:shown], odd["reason"].fillna("")[:shown]))
    return (f"Face problems in {len(odd)} of {len(manifest)} photos ({counts}): {first}"
            + (f"; and {len(odd) - shown} more" if len(odd) > shown else "")
            + f". All of them: {ws.manifest} (face_status, reason).")

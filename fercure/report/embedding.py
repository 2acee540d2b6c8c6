"""What the page shows of the run's embedding, as plain data: the map's points (bounded, whatever
the dataset's size), each card's similar faces, and the group cards (pure functions)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from fercure import embedding_map
from fercure.groups import Neighbours
from fercure.report import columns as C

SIMILAR_SHOWN = 4  # similar faces listed on a card
SIMILAR_CARDS = 5000  # cards, in review order, that list them (the page stays small on 100k rows)


def _num(series: pd.Series) -> np.ndarray:
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)


def map_payload(audit: pd.DataFrame, order: np.ndarray, flagged: np.ndarray, label_index: dict[str, int],
                max_points: int = embedding_map.MAX_POINTS) -> dict | None:
    """The map's points: ``x``, ``y`` (0..GRID), ``g`` / ``s`` given and suggested label indices (-1:
    none), ``f`` 1 for a flagged label issue, ``r`` the card's index in the page's rows (-1: not
    listed); and how they were chosen. None when the audit has no map coordinates."""
    if not C.name(audit, "map_x") or not C.name(audit, "map_y"):
        return None
    xy = np.stack([_num(C.column(audit, "map_x")), _num(C.column(audit, "map_y"))], axis=1)
    pts = embedding_map.map_points(xy, order, max_points)
    if not pts.n_placed:
        return None
    pos = np.full(len(audit), -1, dtype=np.int64)
    pos[order] = np.arange(len(order))
    given = C.column(audit, "given", "").astype(str).to_numpy()
    sugg = C.column(audit, "suggested", None).to_numpy(dtype=object)
    rows = pts.rows
    return {
        "x": pts.x.tolist(), "y": pts.y.tolist(),
        "g": [label_index.get(given[r], -1) for r in rows],
        "s": [label_index.get(str(sugg[r]), -1) if sugg[r] is not None and not
              (isinstance(sugg[r], float) and math.isnan(sugg[r])) else -1 for r in rows],
        "f": [int(flagged[r]) for r in rows],
        "r": pos[rows].tolist(),
        "n_placed": pts.n_placed, "n_rows": pts.n_rows, "n_drawn": int(len(rows)),
        "n_listed_drawn": pts.n_listed_drawn, "sampled": bool(pts.sampled),
    }


def map_note(m: dict) -> str:
    """What the map shows, said on the page (sampled or not)."""
    if not m["sampled"]:
        return (f"All {m['n_placed']:,} samples the run placed in its embedding, projected on its first two principal "
                "directions (PCA).")
    return (f"{m['n_drawn']:,} of the {m['n_placed']:,} samples the run placed in its embedding, projected on its "
            f"first two principal directions (PCA): the first {m['n_listed_drawn']:,} listed cards in review order, "
            "then an even sample of the rest, so the page stays small. A selection filters the listed cards only.")


def similar_faces(neighbours: Neighbours | None, order: np.ndarray, given: Sequence[str],
                  label_index: dict[str, int], shown: int = SIMILAR_SHOWN,
                  cards: int = SIMILAR_CARDS) -> list[list[list]]:
    """Per listed row (in ``order``), its nearest neighbours: [label index, similarity (2 decimals),
    the neighbour's index in the page's rows or -1 when it is not listed]; the first ``cards`` rows
    only (the later ones get none)."""
    if neighbours is None:
        return [[] for _ in order]
    pos = np.full(len(given), -1, dtype=np.int64)
    pos[order] = np.arange(len(order))
    out = []
    for n_card, r in enumerate(order):
        items = []
        if n_card >= cards:
            out.append(items)
            continue
        for j, s in zip(neighbours.index[r], neighbours.similarity[r]):
            if j < 0 or not np.isfinite(s):
                continue
            items.append([label_index.get(str(given[j]), -1), round(float(s), 2), int(pos[j])])
            if len(items) == shown:
                break
        out.append(items)
    return out


def group_leaders(audit: pd.DataFrame, order: np.ndarray) -> list[int]:
    """Per listed row, the page index of its group card's first member (-1: in no group). A group
    whose first member is not listed (reviewed since) leaves its others as cards of their own."""
    if not C.name(audit, "group_id"):
        return [-1] * len(order)
    ids = C.column(audit, "id").astype(str).to_numpy()
    gid = C.column(audit, "group_id", "").fillna("").astype(str).to_numpy()
    page = {ids[r]: i for i, r in enumerate(order)}
    return [page.get(gid[r], -1) if gid[r] else -1 for r in order]

"""Cards that fix more than one row: flagged samples that sit together in the embedding (or are
near-copies of each other) and carry the same given label form one group card, so that one decision
covers every member (each can be taken out on the page).

Pure functions over numpy arrays. A group is grown around a leader, the first of its members in
review order: its members are the leader's own nearest neighbours (never neighbours of neighbours,
so a group cannot drift along a chain of faces) that are flagged too, as similar as
``GroupSettings.tightness`` asks, labelled alike and, by default, given the same suggestion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Which decision made a reviewed row: a card of its own, or one decision on a group card.
VIA_CARD, VIA_GROUP = "card", "group"
# Whether audit-labels groups by default: decided by benchmarks/bench_groups.py (RESULTS.md, "Group
# cards"): on because, at the tightness below, groups raised the rows fixed per card over the first
# 50, 100 and 200 cards and their members were wrong more often than the plain queue's cards.
GROUPS_DEFAULT = True


@dataclass(frozen=True)
class Neighbours:
    """Each row's nearest neighbours in the run's embedding, best first. ``index`` (N, k): row
    positions, -1 where a row has no neighbour there; ``similarity`` (N, k): cosine similarity."""

    index: np.ndarray
    similarity: np.ndarray

    def __post_init__(self) -> None:
        if self.index.shape != self.similarity.shape or self.index.ndim != 2:
            raise ValueError(f"neighbour index {self.index.shape} and similarity {self.similarity.shape} "
                             "must be the same (N, k) shape")

    @property
    def k(self) -> int:
        return int(self.index.shape[1])

    def take(self, rows: np.ndarray, n: int) -> "Neighbours":
        """The neighbours of ``n`` new rows: new row r is old row ``rows[r]`` (-1: not in the old
        table); neighbours that are not among the new rows become -1."""
        rows = np.asarray(rows, dtype=np.int64)
        old_to_new = np.full(len(self.index) + 1, -1, dtype=np.int64)  # last slot: index -1 maps to -1
        have = rows >= 0
        old_to_new[rows[have]] = np.flatnonzero(have)
        index = np.full((n, self.k), -1, dtype=np.int64)
        sim = np.full((n, self.k), np.nan, dtype=np.float32)
        src = self.index[rows[have]]
        index[have] = old_to_new[np.where(src >= 0, src, len(self.index))]
        sim[have] = self.similarity[rows[have]]
        sim[index < 0] = np.nan
        return Neighbours(index=index, similarity=sim)


@dataclass(frozen=True)
class GroupSettings:
    """How tight a group is. ``tightness``: a member must be at least as similar to the leader as
    this share of all samples are to their own nearest neighbour (0.9: closer than 90 % of nearest
    neighbours are), so the cut follows the embedding's own scale (a ReLU embedding's cosines all
    lie near 1); ``max_size``: members per card, the leader included (a card the reviewer can take
    in at once); ``same_suggestion``: members must share the leader's suggested label too (one
    decision, "relabel to X", then fits each of them). The defaults are the setting measured best
    (benchmarks/RESULTS.md, "Group cards")."""

    tightness: float = 0.25
    max_size: int = 6
    same_suggestion: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.tightness <= 1.0:
            raise ValueError(f"tightness must lie in [0, 1], not {self.tightness}")
        if self.max_size < 2:
            raise ValueError(f"max_size must be at least 2 (a leader and one member), not {self.max_size}")


def similarity_cut(neighbours: Neighbours, tightness: float) -> float:
    """The cosine similarity a group member needs: the ``tightness`` quantile of every sample's
    similarity to its nearest neighbour (inf when no sample has one)."""
    first = neighbours.similarity[:, 0] if neighbours.k else np.zeros(0)
    first = first[np.isfinite(first)]
    return float(np.quantile(first.astype(np.float64), tightness)) if len(first) else float("inf")


@dataclass(frozen=True)
class Groups:
    """``group`` (N,): the row position of each row's group leader, -1 for a row in no group (a
    leader's own entry is itself). ``leaders``: the leaders in review order."""

    group: np.ndarray
    leaders: np.ndarray
    min_similarity: float = float("inf")  # the cut the embedding neighbours met

    @property
    def n_groups(self) -> int:
        return int(len(self.leaders))

    def members(self, leader: int) -> np.ndarray:
        """Row positions of a group, the leader first, then the others in row order."""
        rest = np.flatnonzero((self.group == leader) & (np.arange(len(self.group)) != leader))
        return np.concatenate([[leader], rest]).astype(np.int64)

    def ids(self, sample_ids: Sequence[str]) -> np.ndarray:
        """The group_id column: the leader's sample_id for every member, "" outside groups."""
        ids = np.asarray(sample_ids, dtype=object)
        return np.where(self.group >= 0, ids[np.maximum(self.group, 0)], "").astype(object)


def find_groups(order: np.ndarray, suspicious: np.ndarray, given: np.ndarray, suggested: np.ndarray,
                neighbours: Neighbours | None, duplicate_of: np.ndarray | None = None,
                settings: GroupSettings = GroupSettings()) -> Groups:
    """Group the ``suspicious`` rows (the flagged label issues no reviewer decided yet).

    ``order``: row positions in review order (leaders are taken in it); ``given`` / ``suggested``:
    label codes per row (any comparable values); ``duplicate_of`` (N,): the row position of the
    sample each row is a near-copy of, -1 for none. A near-copy and its original join one group
    whatever their similarity; embedding neighbours join when at least ``similarity_cut`` alike.
    Returns groups of at least two rows."""
    n = len(suspicious)
    suspicious = np.asarray(suspicious, dtype=bool)
    given, suggested = np.asarray(given), np.asarray(suggested)
    group = np.full(n, -1, dtype=np.int64)
    copies: dict[int, list[int]] = {}
    if duplicate_of is not None:
        dup = np.asarray(duplicate_of, dtype=np.int64)
        for j in np.flatnonzero(dup >= 0):
            copies.setdefault(int(dup[j]), []).append(int(j))
            copies.setdefault(int(j), []).append(int(dup[j]))
    cut = similarity_cut(neighbours, settings.tightness) if neighbours is not None else float("inf")
    leaders = []
    for i in np.asarray(order, dtype=np.int64):
        if not suspicious[i] or group[i] >= 0:
            continue
        candidates = list(copies.get(int(i), []))
        if neighbours is not None:
            close = neighbours.similarity[i] >= cut
            candidates += [int(j) for j in neighbours.index[i][close & (neighbours.index[i] >= 0)]]
        members = []
        for j in candidates:
            if (j == i or j in members or group[j] >= 0 or not suspicious[j] or given[j] != given[i]
                    or (settings.same_suggestion and suggested[j] != suggested[i])):
                continue
            members.append(j)
            if len(members) == settings.max_size - 1:
                break
        if members:
            group[i] = i
            group[members] = i
            leaders.append(int(i))
    return Groups(group=group, leaders=np.asarray(leaders, dtype=np.int64), min_similarity=cut)


# what audit-labels uses when it is not told (None: no groups)
DEFAULT_SETTINGS: GroupSettings | None = GroupSettings() if GROUPS_DEFAULT else None

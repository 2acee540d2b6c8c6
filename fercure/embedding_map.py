"""The embedding map: a 2-D projection of the run's embedding for the report, and the bounded set
of points the page draws (pure numpy).

The projection is PCA onto the first two principal directions: deterministic (each direction's sign
fixed so that its largest loading is positive), linear (distances along the map are distances in
the embedding, shrunk), and cheap on 100k rows. The page draws at most ``MAX_POINTS`` points: the
rows it lists first (in review order), then an even stride through the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COMPONENTS = 16  # principal components a run keeps of its embedding (what the map and later views read)
MAX_POINTS = 4000  # points the page draws at most
LISTED_SHARE = 0.75  # of them, at most this share from the listed rows (the rest shows the whole set)
GRID = 1000  # map coordinates are sent as integers 0..GRID


def principal_components(embedding: np.ndarray, k: int = COMPONENTS) -> np.ndarray:
    """(N, D) → (N, min(k, D)) coordinates on the first principal directions (centred, float32).
    Rows with a non-finite value get NaN."""
    e = np.asarray(embedding, dtype=np.float64)
    out = np.full((len(e), min(k, e.shape[1] if e.ndim == 2 else 0)), np.nan, dtype=np.float32)
    ok = np.isfinite(e).all(axis=1) if len(e) else np.zeros(0, bool)
    if ok.sum() < 2 or out.shape[1] == 0:
        return out
    x = e[ok] - e[ok].mean(axis=0)
    # eigenvectors of the D × D covariance: N × D² work, never N × N
    vals, vecs = np.linalg.eigh(x.T @ x)
    vecs = vecs[:, np.argsort(-vals, kind="stable")[:out.shape[1]]]
    big = np.abs(vecs).argmax(axis=0)
    vecs *= np.where(vecs[big, np.arange(vecs.shape[1])] < 0, -1.0, 1.0)
    out[ok] = (x @ vecs).astype(np.float32)
    return out


def project(components: np.ndarray) -> np.ndarray:
    """(N, d) principal components (or any embedding) → (N, 2) map coordinates (NaN rows stay NaN)."""
    c = np.asarray(components, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] == 0:
        return np.full((len(c), 2), np.nan)
    xy = principal_components(c, 2).astype(np.float64)
    if xy.shape[1] < 2:
        xy = np.concatenate([xy, np.zeros((len(xy), 2 - xy.shape[1]))], axis=1)
        xy[~np.isfinite(c).all(axis=1)] = np.nan
    return xy


@dataclass(frozen=True)
class MapPoints:
    """The points the page draws: ``rows`` (audit row positions), ``x`` / ``y`` in 0..GRID, and how
    many rows had a place on the map (``n_placed``) of ``n_rows``."""

    rows: np.ndarray
    x: np.ndarray
    y: np.ndarray
    n_placed: int
    n_rows: int
    n_listed_drawn: int

    @property
    def sampled(self) -> bool:
        return len(self.rows) < self.n_placed


def map_points(xy: np.ndarray, listed_order: np.ndarray, max_points: int = MAX_POINTS) -> MapPoints:
    """Choose at most ``max_points`` rows to draw: listed rows first, in review order (up to
    ``LISTED_SHARE`` of the points when there are others), then an even stride through the rest;
    coordinates scaled to 0..GRID over the placed rows (robust to a few far points: 0.5 and 99.5
    percentiles, clipped)."""
    xy = np.asarray(xy, dtype=np.float64)
    n = len(xy)
    placed = np.isfinite(xy).all(axis=1) if n else np.zeros(0, bool)
    n_placed = int(placed.sum())
    listed = np.asarray(listed_order, dtype=np.int64)
    listed = listed[placed[listed]] if len(listed) else listed
    is_listed = np.zeros(n, bool)
    is_listed[listed] = True
    others = np.flatnonzero(placed & ~is_listed)
    room_listed = max_points if not len(others) else int(max_points * LISTED_SHARE)
    take_listed = listed[:room_listed]
    room = max_points - len(take_listed)
    if len(others) > room:
        others = others[np.floor(np.arange(room) * (len(others) / max(room, 1))).astype(np.int64)] if room else others[:0]
    rows = np.concatenate([take_listed, others]).astype(np.int64)
    if not n_placed:
        return MapPoints(rows[:0], np.zeros(0, np.int64), np.zeros(0, np.int64), 0, n, 0)
    lo = np.percentile(xy[placed], 0.5, axis=0)
    hi = np.percentile(xy[placed], 99.5, axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    q = np.clip(np.rint((xy[rows] - lo) / span * GRID), 0, GRID).astype(np.int64)
    return MapPoints(rows=rows, x=q[:, 0], y=q[:, 1], n_placed=n_placed, n_rows=n, n_listed_drawn=len(take_listed))

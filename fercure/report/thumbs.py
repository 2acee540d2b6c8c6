"""Thumbnails as inline data: URIs, within a byte budget.

Small JPEGs (grey crops as one-channel JPEGs) keep a 30k-sample report small: only the rows a
person reviews get one, in review order, until the budget is spent.
"""

from __future__ import annotations

import base64
import io
from typing import Iterable

import numpy as np
from PIL import Image

THUMB_SIZE = 64  # pixels, longest side; shown at 96 CSS px
THUMB_QUALITY = 80
THUMB_BUDGET = 16 * 1024 * 1024  # bytes of data: URIs in one report


def thumbnail_data_uri(crop: np.ndarray, size: int = THUMB_SIZE, quality: int = THUMB_QUALITY) -> str:
    """A JPEG data: URI of one uint8 (S, S, 3) crop, resized to at most ``size`` px."""
    a = np.ascontiguousarray(crop, dtype=np.uint8)
    grey = a.ndim == 3 and a.shape[2] == 3 and (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    img = Image.fromarray(a[..., 0] if grey else a)
    if max(img.size) > size:
        img = img.resize((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnails(crops: np.ndarray | None, store_index: np.ndarray, order: Iterable[int], *,
               budget: int = THUMB_BUDGET, size: int = THUMB_SIZE) -> dict[int, str]:
    """Data URIs for the rows in ``order`` (row → URI) until their total length reaches ``budget``.

    Rows without a crop (``store_index`` < 0 or past the store) are skipped; the first row that
    does not fit ends the list, so what is left out is always the end of the review order.
    """
    out: dict[int, str] = {}
    if crops is None:
        return out
    used = 0
    for row in order:
        idx = int(store_index[row])
        if not 0 <= idx < len(crops):
            continue
        uri = thumbnail_data_uri(crops[idx], size)
        if used + len(uri) > budget:
            break
        out[int(row)] = uri
        used += len(uri)
    return out

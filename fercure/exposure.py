"""Exposure issues of a crop: too dark, too bright, low contrast (pure functions, numpy in and out).

Measured by prepare on the aligned crop (the manifest's ``brightness``: mean grey level, and
``contrast``: grey standard deviation, both on 0..255). A crop this dark, bright or flat shows too
little of the face to read an expression. Each issue has a score in 0..1, low = worse (the audit's
convention): dark = brightness / 255, bright = 1 − brightness / 255, low contrast = contrast / 127.5
(the largest standard deviation of values in 0..255), so each cut below is a fixed point of its
score. NaN measurements (no crop) give a NaN score and no issue.
"""

from __future__ import annotations

import numpy as np

TOO_DARK, TOO_BRIGHT, LOW_CONTRAST = 40.0, 215.0, 15.0
ISSUES = ("dark", "bright", "low_contrast")
_MAX_STD = 127.5


def exposure_issues(brightness: np.ndarray, contrast: np.ndarray) -> dict[str, np.ndarray]:
    """too dark / too bright / low contrast per crop (NaN measurements → no issue)."""
    b = np.asarray(brightness, dtype=float)
    c = np.asarray(contrast, dtype=float)
    with np.errstate(invalid="ignore"):
        return {"dark": b < TOO_DARK, "bright": b > TOO_BRIGHT, "low_contrast": c < LOW_CONTRAST}


def exposure_scores(brightness: np.ndarray, contrast: np.ndarray) -> dict[str, np.ndarray]:
    """Each issue's score in 0..1, low = worse (NaN where not measured)."""
    b = np.clip(np.asarray(brightness, dtype=float), 0.0, 255.0)
    c = np.clip(np.asarray(contrast, dtype=float), 0.0, _MAX_STD)
    return {"dark": b / 255.0, "bright": 1.0 - b / 255.0, "low_contrast": c / _MAX_STD}

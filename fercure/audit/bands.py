"""Suggestion confidence in bands (guess, lead, likely), cut where the probe's measured accuracy
crosses each band's least accuracy (isotonic fit; Wilson intervals per band)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from fercure import strength as st

# The bands by the measured share of held-out predictions that matched their (given) label:
# "likely" when right more often than wrong, "lead" from one in three, "guess" below.
BAND_NAMES = ("guess", "lead", "likely")
BAND_ACCURACY = (0.0, 1.0 / 3.0, 0.5)
MIN_CALIBRATION_ROWS = 30  # below this the probe says too little; the bands fall back to the lift rule
MIN_BAND_ROWS = st.MIN_RATE_ROWS  # probe rows a band needs before its accuracy is printed (or it is a band)


def isotonic_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing least-squares fit of y on x (pool adjacent violators).

    Returns the sorted x and the fitted value at each; ``np.interp`` over them reads the fit."""
    order = np.argsort(x, kind="stable")
    xs, ys = np.asarray(x, float)[order], np.asarray(y, float)[order]
    vals, wts, sizes = [], [], []
    for v in ys:
        vals.append(v), wts.append(1.0), sizes.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            w = wts[-2] + wts[-1]
            v2 = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / w
            n2 = sizes[-2] + sizes[-1]
            del vals[-1], wts[-1], sizes[-1]
            vals[-1], wts[-1], sizes[-1] = v2, w, n2
    return xs, np.repeat(vals, sizes)


def confidence_bands(confidence: np.ndarray, correct: np.ndarray,
                     accuracy_cuts: Sequence[float] = BAND_ACCURACY) -> dict:
    """Band cuts on the suggestion confidence, set where the measured accuracy crosses each cut.

    Parameters
    ----------
    confidence : ndarray (m,)
        The top-class probability of held-out predictions (the probe).
    correct : ndarray (m,) of bool
        Whether that top class is the given label.
    accuracy_cuts : the least measured accuracy of each band, ascending from 0.

    Returns
    -------
    dict
        ``calibrated`` False (and no cuts) with fewer than ``MIN_CALIBRATION_ROWS`` rows;
        otherwise ``cuts`` (the least confidence of each band, the first 0; infinite for a band with
        fewer than ``MIN_BAND_ROWS`` rows, folded into the band below), and per band ``n``, the share
        of its probe rows whose top class was the given label (``accuracy``) and its Wilson interval
        (``lo``, ``hi``); these three None below ``MIN_BAND_ROWS`` rows. The given labels are the noisy
        ones under audit: agreement with them is not how often a suggestion is right.
    """
    conf = np.asarray(confidence, float)
    ok = np.isfinite(conf)
    conf, correct = conf[ok], np.asarray(correct, bool)[ok]
    out: dict = {"names": list(BAND_NAMES), "accuracy_cuts": [float(a) for a in accuracy_cuts],
                 "n_calibration": int(len(conf))}
    if len(conf) < MIN_CALIBRATION_ROWS:
        return {**out, "calibrated": False}
    xs, fit = isotonic_fit(conf, correct.astype(float))
    cuts = [0.0]
    for a in accuracy_cuts[1:]:
        reach = np.flatnonzero(fit >= a)
        cuts.append(float(xs[reach[0]]) if len(reach) else math.inf)
    band = band_of(conf, cuts)
    # A band of fewer than MIN_BAND_ROWS probe rows measures nothing ("100 % right of 1"): from the top,
    # such a band is folded into the one below, so no card is called likely on a handful of rows.
    for i in range(len(cuts) - 1, 0, -1):
        if math.isfinite(cuts[i]) and (band == i).sum() < MIN_BAND_ROWS:
            cuts[i] = math.inf
            band = band_of(conf, cuts)
    rates = [st.share_with_interval(int(correct[band == i].sum()), int((band == i).sum()), MIN_BAND_ROWS)
             for i in range(len(cuts))]
    out.update(calibrated=True, cuts=[json_float(c) for c in cuts],
               n=[r["n"] for r in rates], accuracy=[r["share"] for r in rates],
               lo=[r["lo"] for r in rates], hi=[r["hi"] for r in rates], min_rows=MIN_BAND_ROWS)
    return out


def band_of(confidence: np.ndarray, cuts: Sequence[float | None]) -> np.ndarray:
    """Band index of each confidence: the last band whose cut it reaches (NaN → 0)."""
    c = np.asarray([math.inf if v is None else v for v in cuts], float)
    conf = np.nan_to_num(np.asarray(confidence, float), nan=-1.0)
    return np.clip(np.searchsorted(c, conf, side="right") - 1, 0, len(c) - 1)


def json_float(x: float | None) -> float | None:
    """A float as JSON holds it: None for NaN, infinity or None."""
    return None if x is None or not np.isfinite(x) else float(x)

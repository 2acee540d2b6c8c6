"""Inline SVG charts for the report: score histograms with their cut, the reliability diagram.

Every chart is a string of SVG built from numbers and escaped labels; nothing external is loaded.
"""

from __future__ import annotations

import html
import math
from typing import Sequence

import numpy as np

from fercure.audit.rules import RULES


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def histogram_svg(values: np.ndarray, flagged: np.ndarray, *, bins: int = 25, threshold: float | None = None,
                  width: int = 560, height: int = 180, title: str = "histogram of label score",
                  rule: str | None = None) -> str:
    """Histogram of a 0..1 score: flagged samples stacked in red over the rest, ``threshold`` dashed.

    ``rule``: the threshold rule that decided the flags (``fercure.audit.rules.RULES``); it is
    named on the chart with what it is, and a rule that is not a cut on the score draws no line
    whatever ``threshold`` says."""
    decided = RULES.get(rule) if rule else None
    if decided is not None and not decided.draws_score_cut:
        threshold = None
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    flagged = np.asarray(flagged, dtype=bool)
    edges = np.linspace(0, 1, bins + 1)
    h_all = np.histogram(np.clip(v[ok], 0, 1), edges)[0]
    h_bad = np.histogram(np.clip(v[ok & flagged], 0, 1), edges)[0]
    top = max(int(h_all.max()) if len(h_all) else 0, 1)
    pad_l, pad_b, pad_t = 36, 20, 8
    pw, ph = width - pad_l - 8, height - pad_b - pad_t
    bw = pw / bins
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{_e(title)}">']
    for i in range(bins):
        x = pad_l + i * bw
        for count, colour in ((h_all[i], "#8aa9d6"), (h_bad[i], "#d9534f")):
            hh = ph * count / top
            parts.append(f'<rect x="{x:.1f}" y="{pad_t + ph - hh:.1f}" width="{max(bw - 1, 0.5):.1f}" '
                         f'height="{hh:.1f}" fill="{colour}"><title>{edges[i]:.2f}–{edges[i + 1]:.2f}: '
                         f'{int(count)}</title></rect>')
    for t in (0, 0.5, 1.0) if width < 300 else (0, 0.25, 0.5, 0.75, 1.0):
        x = pad_l + t * pw
        parts.append(f'<text x="{x:.1f}" y="{height - 5}" font-size="10" text-anchor="middle">{t:g}</text>')
    parts.append(f'<text x="{pad_l - 4}" y="{pad_t + 10}" font-size="10" text-anchor="end">{top}</text>')
    parts.append(f'<line x1="{pad_l}" y1="{pad_t + ph}" x2="{pad_l + pw}" y2="{pad_t + ph}" stroke="#333"/>')
    if rule is not None:
        parts.append(f'<text x="{pad_l + pw}" y="{pad_t + 10}" font-size="10" text-anchor="end" '
                     f'class="rule">{_e(f"rule: {rule} — {decided.chart_note}" if decided else "rule: " + rule)}</text>')
    if threshold is not None and math.isfinite(threshold) and 0 <= threshold <= 1:
        x = pad_l + threshold * pw
        parts.append(f'<line x1="{x:.1f}" y1="{pad_t}" x2="{x:.1f}" y2="{pad_t + ph}" stroke="#222" '
                     f'stroke-width="1.5" stroke-dasharray="4 3"><title>threshold {threshold:.3f}</title></line>')
    parts.append("</svg>")
    return "".join(parts)


def reliability_svg(bins: Sequence[dict], *, width: int = 300, height: int = 300) -> str:
    """Reliability diagram: per confidence bin, the share whose top class is the given label (bars)
    against the bin's mean confidence; the diagonal is perfect calibration."""
    pad = 36
    pw, ph = width - pad - 10, height - pad - 10
    x0, y0 = pad, 10 + ph

    def sx(v: float) -> float:
        return x0 + v * pw

    def sy(v: float) -> float:
        return y0 - v * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             'aria-label="reliability diagram">',
             f'<rect x="{x0}" y="10" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>',
             f'<line x1="{sx(0):.1f}" y1="{sy(0):.1f}" x2="{sx(1):.1f}" y2="{sy(1):.1f}" stroke="#999" '
             'stroke-dasharray="3 3"/>']
    for b in bins:
        if not b["n"]:
            continue
        lo, hi, acc, conf = b["lo"], b["hi"], b["accuracy"], b["confidence"]
        parts.append(f'<rect x="{sx(lo) + 1:.1f}" y="{sy(acc):.1f}" width="{(hi - lo) * pw - 2:.1f}" '
                     f'height="{acc * ph:.1f}" fill="#8aa9d6"><title>confidence {lo:.1f}–{hi:.1f}: '
                     f'{b["n"]} samples, mean confidence {conf:.2f}, agree with the given label '
                     f'{acc:.2f}</title></rect>')
        parts.append(f'<circle cx="{sx(conf):.1f}" cy="{sy(conf):.1f}" r="2.5" fill="#333"/>')
    for t in (0, 0.5, 1.0):
        parts.append(f'<text x="{sx(t):.1f}" y="{height - 16}" font-size="10" text-anchor="middle">{t:g}</text>')
        parts.append(f'<text x="{x0 - 4}" y="{sy(t) + 3:.1f}" font-size="10" text-anchor="end">{t:g}</text>')
    parts.append(f'<text x="{sx(0.5):.1f}" y="{height - 3}" font-size="10" text-anchor="middle">'
                 'top-class probability</text>')
    parts.append(f'<text x="10" y="{sy(0.5):.1f}" font-size="10" text-anchor="middle" '
                 f'transform="rotate(-90 10 {sy(0.5):.1f})">share = given label</text>')
    parts.append("</svg>")
    return "".join(parts)

"""The audit report: one self-contained HTML file (inline CSS and SVG, thumbnails as data: URIs).

No external assets, scripts or fonts, so the file can be mailed, archived or opened offline. Every
string that comes from the dataset (file names, class names, reasons) goes through ``html.escape``:
file names in scraped datasets are untrusted input.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from fercure import __version__

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:.9em}th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{width:180px;border:1px solid #ddd;border-radius:6px;padding:6px;font-size:.78em;overflow-wrap:anywhere}
.card img,.card .noimg{width:96px;height:96px;image-rendering:pixelated;display:block;margin:0 auto 4px}
.card .noimg{background:#eee;color:#888;text-align:center;line-height:96px}
.path{color:#555}.lab{font-weight:600}.bad{color:#b00}.good{color:#070}
.kpi{display:inline-block;margin:0 18px 8px 0}.kpi b{font-size:1.4em;display:block}
.muted{color:#777;font-size:.85em}
.verdict{border-radius:6px;padding:8px 12px;margin:10px 0}.v-ok{background:#eef7ee}
.v-weak{background:#fff6e0}.v-too_weak{background:#fde8e8;font-weight:600}.v-unknown{background:#f4f4f4}
.guess{color:#777}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x, digits: int = 2) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return _e(x)
    return "–" if not math.isfinite(v) else f"{v:.{digits}f}"


def thumbnail_data_uri(crop: np.ndarray, size: int = 96) -> str:
    """A PNG data: URI of one uint8 (S, S, 3) crop, resized to at most ``size`` px."""
    img = Image.fromarray(np.ascontiguousarray(crop, dtype=np.uint8))
    if max(img.size) > size:
        img = img.resize((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def histogram_svg(values: np.ndarray, flagged: np.ndarray, *, bins: int = 25, threshold: float | None = None,
                  width: int = 560, height: int = 180) -> str:
    """Inline SVG histogram of label_score (0..1): flagged samples stacked in red over the rest."""
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    edges = np.linspace(0, 1, bins + 1)
    h_all = np.histogram(np.clip(v[ok], 0, 1), edges)[0]
    h_bad = np.histogram(np.clip(v[ok & flagged], 0, 1), edges)[0]
    top = max(int(h_all.max()) if len(h_all) else 0, 1)
    pad_l, pad_b, pad_t = 40, 24, 8
    pw, ph = width - pad_l - 8, height - pad_b - pad_t
    bw = pw / bins
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="histogram of label quality">']
    for i in range(bins):
        x = pad_l + i * bw
        for count, colour in ((h_all[i], "#8aa9d6"), (h_bad[i], "#d9534f")):
            hh = ph * count / top
            parts.append(f'<rect x="{x:.1f}" y="{pad_t + ph - hh:.1f}" width="{bw - 1:.1f}" height="{hh:.1f}" '
                         f'fill="{colour}"><title>{edges[i]:.2f}–{edges[i + 1]:.2f}: {int(count)}</title></rect>')
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        x = pad_l + t * pw
        parts.append(f'<text x="{x:.1f}" y="{height - 6}" font-size="11" text-anchor="middle">{t:g}</text>')
    parts.append(f'<text x="{pad_l - 4}" y="{pad_t + 10}" font-size="11" text-anchor="end">{top}</text>')
    parts.append(f'<line x1="{pad_l}" y1="{pad_t + ph}" x2="{pad_l + pw}" y2="{pad_t + ph}" stroke="#333"/>')
    if threshold is not None and math.isfinite(threshold) and 0 < threshold < 1:
        x = pad_l + threshold * pw
        parts.append(f'<line x1="{x:.1f}" y1="{pad_t}" x2="{x:.1f}" y2="{pad_t + ph}" stroke="#333" '
                     f'stroke-dasharray="4 3"><title>threshold {threshold:.3f}</title></line>')
    parts.append("</svg>")
    return "".join(parts)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """An HTML table; cells must already be escaped/formatted, the first ``left`` columns left-aligned."""
    th = "".join(f'<th class="l">{h}</th>' if i < left else f"<th>{h}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _transition_table(tm: np.ndarray, classes: Sequence[str]) -> str:
    top = max(int(tm.max()) if tm.size else 0, 1)
    head = "<th class='l'>given ↓ / suggested →</th>" + "".join(f"<th>{_e(c)}</th>" for c in classes)
    rows = []
    for i, c in enumerate(classes):
        cells = []
        for j in range(len(classes)):
            n = int(tm[i, j])
            # off-diagonal cells are the suggested corrections: shade them red, the diagonal grey
            alpha = 0 if n == 0 else 0.12 + 0.6 * math.sqrt(n / top)
            rgb = "120,120,120" if i == j else "217,83,79"
            cells.append(f'<td style="background:rgba({rgb},{alpha:.2f})">{n}</td>')
        rows.append(f"<tr><th class='l'>{_e(c)}</th>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _card(row: pd.Series, crops: np.ndarray | None, thumb: int) -> str:
    idx = int(row.get("store_index", -1)) if pd.notna(row.get("store_index", -1)) else -1
    if crops is not None and 0 <= idx < len(crops):
        img = f'<img alt="" src="{thumbnail_data_uri(crops[idx], thumb)}">'
    else:
        img = '<div class="noimg">no crop</div>'
    given, sugg = row.get("given_label"), row.get("suggested_label")
    conf = row.get("suggested_label_confidence")
    # green only for a suggestion that is more likely right than not; a guess stays grey
    sure = pd.notna(conf) and float(conf) >= 0.5
    change = (f'<span class="lab bad">{_e(given)}</span> → <span class="lab {"good" if sure else "guess"}">{_e(sugg)}</span>'
              if pd.notna(sugg) and sugg != given else f'<span class="lab">{_e(given)}</span>')
    return (
        f'<div class="card">{img}<div>{change}</div>'
        f"<div>confidence {_fmt(row.get('suggested_label_confidence'))} · quality {_fmt(row.get('label_score'))}</div>"
        f"<div>reliability {_fmt(row.get('reliability'))} · entropy {_fmt(row.get('uncertainty_entropy'))}</div>"
        f'<div class="path" title="{_e(row.get("reason", ""))}">{_e(row.get("source_path", ""))}</div></div>'
    )


def render_report(
    audit: pd.DataFrame,
    stats: dict,
    classes: Sequence[str],
    *,
    crops: np.ndarray | None = None,
    run_id: str | None = None,
    max_issues: int = 60,
    max_ambiguous: int = 30,
    thumb_size: int = 96,
) -> str:
    """The audit report as one HTML string.

    Parameters
    ----------
    audit : DataFrame
        ``fercure.audit.build_audit``'s table (store_index locates each crop).
    stats : dict
        ``build_audit``'s statistics (thresholds, per-class counts, transition matrix).
    classes : sequence of str
    crops : ndarray (N, S, S, 3) uint8, optional
        The crop store (memory-mapped is fine: only the shown crops are read).
    run_id : str, optional
    max_issues, max_ambiguous : int
        Gallery sizes: the lowest-label_score issues, the closest-call ambiguous samples.
    thumb_size : int
        Thumbnail edge in pixels.
    """
    classes = [str(c) for c in classes]
    n = len(audit)
    issue = audit["is_label_issue"].fillna(False).to_numpy(dtype=bool)
    amb = audit["is_ambiguous_issue"].fillna(False).to_numpy(dtype=bool)
    trained = audit["trained"].to_numpy(dtype=bool) if "trained" in audit.columns else audit["label_score"].notna().to_numpy()
    used = stats.get("threshold_method_used", stats.get("threshold_method"))
    mix_t = (stats.get("mixture") or {}).get("threshold")

    def count(col: str) -> int:
        return int(audit[col].fillna(False).astype(bool).sum()) if col in audit.columns else 0

    kpis = [
        ("samples", n), ("trained", int(trained.sum())), ("label issues", int(issue.sum())),
        ("ambiguous", int(amb.sum())), ("duplicates", count("is_duplicate_issue")),
        ("no face", count("is_no_face_issue")), ("blurry", count("is_blur_issue")),
        ("unreadable", count("is_unreadable_issue")),
    ]
    kpi_html = "".join(f'<span class="kpi"><b>{v}</b>{_e(k)}</span>' for k, v in kpis)

    per_class = stats.get("per_class", {})
    pc_rows = [[_e(c), str(d.get("n", 0)), str(d.get("n_label_issues", 0)), str(d.get("n_ambiguous", 0)),
                _fmt(d.get("mean_label_score")), _fmt(d.get("threshold"))]
               for c, d in per_class.items()]
    pc_html = _table(["class", "samples", "label issues", "ambiguous", "mean label_score",
                      "label_score cut" if used in ("noise_rate", "planted") else "confident-joint threshold"], pc_rows)

    tm = np.asarray(stats.get("transition_matrix", np.zeros((len(classes), len(classes)))), dtype=np.int64)
    hist = histogram_svg(audit["label_score"].to_numpy(dtype=float), issue,
                         threshold=mix_t if used == "mixture" else None)

    status_counts = audit["face_status"].astype(str).value_counts() if "face_status" in audit.columns else pd.Series(dtype=int)
    fs_html = _table(["face_status", "samples"], [[_e(k), str(int(v))] for k, v in status_counts.items()])

    order = audit.assign(_q=audit["label_score"]).loc[issue].sort_values("_q", kind="stable")
    issue_cards = "".join(_card(r, crops, thumb_size) for _, r in order.head(max_issues).iterrows())
    amb_rows = audit.loc[amb]
    if "ambiguous_score" in amb_rows.columns:
        amb_rows = amb_rows.sort_values("ambiguous_score", kind="stable")
    amb_cards = "".join(_card(r, crops, thumb_size) for _, r in amb_rows.head(max_ambiguous).iterrows())

    ms = stats.get("model_strength") or {}
    sc = stats.get("self_check") or {}
    verdict = str(ms.get("verdict", "unknown"))
    sc_bits = []
    if sc.get("n_planted"):
        sc_bits.append(f"{int(sc['n_planted'])} labels were flipped on purpose inside the run (never written anywhere)")
        if sc.get("auroc_mean_p") is not None:
            sc_bits.append(f"the score ranked them at AUROC {_fmt(sc['auroc_mean_p'])}")
        if sc.get("recall_at_estimated_share") is not None:
            sc_bits.append(f"{_fmt(100 * sc['recall_at_estimated_share'], 0)}% of them fall in the estimated "
                           f"share of wrong labels ({_fmt(100 * (sc.get('estimated_error_share') or 0), 0)}%)")
    strength_html = (f'<div class="verdict v-{_e(verdict)}">Model strength: <b>{_e(verdict)}</b> — '
                     f'{_e(ms.get("message", "not measured"))}'
                     + (f'<br><span class="muted">Self-check: {_e("; ".join(sc_bits))}.</span>' if sc_bits else "")
                     + "</div>")
    thr_line = (f"mixture on label_score, cut at {_fmt(mix_t, 3)}" if used == "mixture"
                else "per class, the confident joint's count of wrong labels, lowest label_score first "
                     "(per-class cuts in the table above)" if used == "noise_rate"
                else "per class, lowest label_score first, as many as the planted flips say are wrong "
                     "(per-class cuts in the table above)" if used == "planted"
                else "confident joint (per-class thresholds in the table above)")
    method = stats.get("method", "confidence")
    method_txt = method if isinstance(method, str) else ", ".join(f"{k}×{v}" for k, v in method.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fercure audit{_e(' — run ' + run_id) if run_id else ''}</title>
<style>{_CSS}</style></head><body>
<h1>fercure label audit</h1>
<p class="muted">run {_e(run_id or '?')} · fercure {_e(__version__)} · score: {_e(method_txt)} ·
is_label_issue: {_e(thr_line)} · ambiguous: top-2 gap &lt; {_fmt(stats.get('ambiguity_margin'))}
and top-1 &lt; {_fmt(stats.get('ambiguity_max_confidence'))}</p>
{strength_html}
<div>{kpi_html}</div>
<h2>Per class</h2>{pc_html}
<h2>Noise transition (given → suggested)</h2>
<p class="muted">Counts over trained samples; the off-diagonal cells are the suggested corrections.</p>
{_transition_table(tm, classes) if len(classes) else ''}
<h2>label_score</h2>
<p class="muted">0 = the given label is likely wrong, 1 = likely right; red = flagged as a label issue.</p>
{hist}
<h2>Face stage</h2>{fs_html}
<h2>Most likely label issues ({min(int(issue.sum()), max_issues)} of {int(issue.sum())})</h2>
<div class="cards">{issue_cards or '<p class="muted">none</p>'}</div>
<h2>Ambiguous samples ({min(len(amb_rows), max_ambiguous)} of {len(amb_rows)})</h2>
<div class="cards">{amb_cards or '<p class="muted">none</p>'}</div>
</body></html>
"""

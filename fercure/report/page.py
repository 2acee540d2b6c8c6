"""The review report: one self-contained HTML file.

The summary parts (verdict, per-class charts, transition matrix, calibration, face stage) are
rendered here as HTML and inline SVG; the review list is one JSON blob that the inline script
(report.js) filters, sorts and pages, so every listed sample is in the page without a fixed cap.
No external assets, scripts or fonts: the file can be mailed, archived or opened offline. Strings
from the dataset (file names, class names, reasons) are escaped here, escaped for the JSON blob, and
set as text by the script: file names in scraped datasets are untrusted input.
"""

from __future__ import annotations

import html
import json
import math
import re
import shlex
from importlib import resources
from typing import Sequence

import numpy as np
import pandas as pd

from fercure import __version__
from fercure import review_calibration as rc
from fercure import strength as st
from fercure.audit.issues import ISSUES
from fercure.audit.rules import RULES, ThresholdRule
from fercure.report import columns as C
from fercure.report.data import (FLAG_TEXT, QUALITY_FLAGS, balance_note,
                                 build_payload, reliability_bins)
from fercure.report.svg import histogram_svg, reliability_svg
from fercure.report.thumbs import THUMB_BUDGET, THUMB_SIZE


# Past these class counts the page shows the classes with the most flags / corrections and says so:
# a K × K matrix and K charts would make the page grow with the square of the class count.
MAX_MATRIX_CLASSES = 30
MAX_CHART_CLASSES = 30
MAX_TABLE_CLASSES = 100


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x, digits: int = 2) -> str:
    if x is None:
        return "–"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return _e(x)
    return "–" if not math.isfinite(v) else f"{v:.{digits}f}"


def _asset(name: str) -> str:
    return resources.files("fercure.report").joinpath(name).read_text(encoding="utf-8")


def json_for_script(obj) -> str:
    """JSON that is safe inside <script type="application/json">: no "<", ">" or "&" that could close
    the element or start a comment, and no line separators older parsers choke on."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """An HTML table; cells must already be escaped/formatted, the first ``left`` columns left-aligned."""
    th = "".join(f'<th class="l">{h}</th>' if i < left else f"<th>{h}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _count(x) -> str:
    """A count cell: "–" where the audit has none (a too-weak model decides no flags)."""
    try:
        return str(int(x))
    except (TypeError, ValueError):
        return "–"


def top_classes(weights: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the ``limit`` classes with the largest weights, in class order (all when fewer)."""
    w = np.asarray(weights, dtype=float)
    if len(w) <= limit:
        return np.arange(len(w))
    return np.sort(np.argsort(-np.nan_to_num(w, nan=0.0), kind="stable")[:limit])


def _capped_note(shown: int, total: int, what: str) -> str:
    return (f'<p class="muted capped">Showing {what} for the {shown} of {total} classes with the most '
            "flags; use the given / suggested filters of the review list for the others.</p>"
            if shown < total else "")


def _transition_table(tm: np.ndarray, classes: Sequence[str], limit: int = MAX_MATRIX_CLASSES) -> str:
    """given × suggested counts; every cell is a link to its samples in the review list. With more
    than ``limit`` classes, only those with the most off-diagonal counts (in or out)."""
    off = tm.copy() if tm.size else np.zeros((len(classes), len(classes)), np.int64)
    np.fill_diagonal(off, 0)
    keep = top_classes(off.sum(axis=0) + off.sum(axis=1), limit) if len(classes) else np.zeros(0, int)
    top = max(int(tm.max()) if tm.size else 0, 1)
    head = "<th class='l'>given ↓ / suggested →</th>" + "".join(f"<th>{_e(classes[j])}</th>" for j in keep)
    rows = []
    for i in keep:
        c = classes[i]
        cells = []
        for j in keep:
            n = int(tm[i, j])
            # off-diagonal cells are the suggested corrections: shade them red, the diagonal grey
            alpha = 0 if n == 0 else 0.12 + 0.6 * math.sqrt(n / top)
            rgb = "120,120,120" if i == j else "217,83,79"
            cells.append(f'<td class="cell" data-g="{i}" data-s="{j}" title="show {_e(c)} → {_e(classes[j])}" '
                         f'style="background:rgba({rgb},{alpha:.2f})">{n}</td>')
        rows.append(f"<tr><th class='l'>{_e(c)}</th>{''.join(cells)}</tr>")
    return (f"<table id='matrix'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            + _capped_note(len(keep), len(classes), "the matrix"))


def _strength(stats: dict) -> str:
    """The verdict in two parts: how well the ranking finds wrong labels (what the queue is worth) and
    how often the suggestions are right (what an accept is worth), each with what measured it."""
    ms = stats.get("model_strength") or {}
    sc = stats.get("self_check") or {}
    verdict = str(ms.get("verdict", "unknown"))
    bits = []
    if sc.get("n_planted"):
        bits.append(f"{int(sc['n_planted'])} labels were flipped on purpose inside the run (never written anywhere)")
        if sc.get("recall_at_estimated_share") is not None:
            bits.append(f"{_fmt(100 * sc['recall_at_estimated_share'], 0)}% of them fall in the estimated "
                        f"share of wrong labels ({_fmt(100 * (sc.get('estimated_error_share') or 0), 0)}%)")
    hint = {"ok": "", "weak": " Its suggestions are shown as leads at most (amber), never as likely.",
            "too_weak": " Its suggestions are shown as guesses (grey): do not relabel on its word."}.get(verdict, "")
    parts = ""
    if ms.get("ranking") is not None:
        r, sg = ms["ranking"], ms.get("suggestions") or {}
        useful = {True: "useful (its interval lies above 0.5, chance)", False: "not clearly better than chance",
                  None: "not measured"}[r.get("useful")]
        parts = (f'<br><span id="ranking"><b>Ranking</b> (does the queue put wrong labels first?): {_e(useful)}; '
                 f'{_e(st.ranking_words(r))}.</span><br><span id="suggestions"><b>Suggestions</b> (is the suggested '
                 f'class right?): {_e(st.suggestion_words(sg, ms))}.</span>')
    return (f'<div class="verdict v-{_e(verdict)}" id="verdict">Model strength: <b>{_e(verdict)}</b> — '
            f'{_e(ms.get("advice") or ms.get("message", "not measured"))}{_e(hint)}{parts}'
            + (f'<br><span class="muted">Self-check: {_e("; ".join(bits))}.</span>' if bits else "")
            + _error_share_line(stats) + "</div>")


def _evidence_and_health(stats: dict) -> str:
    """What the verdicts rest on (a run, the user's --pred-probs / --features) and the label health:
    per class the estimated share of wrong labels with its interval, and one overall figure."""
    ev = stats.get("evidence") or {}
    rows = ev.get("rows") or {}
    parts = []
    if rows:
        said = ", ".join(f"{_count(n)} on {_e(k)}" for k, n in sorted(rows.items(), key=lambda kv: -kv[1]))
        files = [f"{name} {_e(ev[key])}" for key, name in (("pred_probs", "--pred-probs"), ("features", "--features"))
                 if ev.get(key)]
        parts.append(f"<p id='evidence'>Evidence per row: {said}" + (f" ({'; '.join(files)})" if files else "")
                     + ".</p>")
    for line in list(ev.get("warnings") or []) + list(ev.get("notes") or []):
        parts.append(f'<p class="verdict v-weak">{_e(line)}</p>')
    if stats.get("n_outlier_issues"):
        parts.append(f"<p>{_count(stats['n_outlier_issues'])} outlier(s) in the --features embedding (outlier_score: "
                     f"distance to the nearest neighbours against the class's typical distance; is_outlier_issue "
                     f"in WS/audit.parquet).</p>")
    h = stats.get("health_summary") or {}
    if h.get("n_scored"):
        lo, hi = h.get("overall_interval") or (None, None)
        parts.append(f"<p id='health'>Overall label health: <b>{_fmt(h.get('overall_label_health_score'))}</b> "
                     f"(95% interval {_fmt(lo)}–{_fmt(hi)}): one minus the estimated share of wrong labels, "
                     f"as cleanlab's <code>health_summary</code> names it.</p>")
        trows = []
        for c, d in (h.get("classes") or {}).items():
            nlo, nhi = d.get("label_noise_interval") or (None, None)
            notes = [w for w, on in (("underperforming", d.get("underperforming")), ("imbalanced", d.get("imbalanced")))
                     if on]
            trows.append([_e(c), _count(d.get("n", 0)), _fmt(d.get("label_noise")), f"{_fmt(nlo)}–{_fmt(nhi)}",
                          _fmt(d.get("agreement")), _e(", ".join(notes))])
        parts.append(_table(["class", "scored", "est. share wrong", "95% interval", "top class = given",
                             "dataset-level issue"], trows)
                     + f"<p class='muted'>{_e(h.get('method', ''))}; {_e(h.get('caveat', ''))}.</p>")
    return "".join(parts)


def _rule(stats: dict) -> ThresholdRule | None:
    """The threshold rule that decided the flags (None: a rule this fercure does not know)."""
    return RULES.get(stats.get("threshold_method_used", stats.get("threshold_method")) or "")


def _threshold_line(stats: dict) -> str:
    decided = _rule(stats)
    if decided is None:
        return f"rule {stats.get('threshold_method_used', stats.get('threshold_method'))} (unknown to this fercure)"
    return decided.header(_fmt((stats.get("mixture") or {}).get("threshold"), 3))


def _score_cut(stats: dict, cls: str) -> float | None:
    """The label-score cut drawn under class ``cls``'s histogram (None: the rule has no score cut)."""
    cut = getattr(_rule(stats), "cut", None)
    if cut == "score":
        return (stats.get("mixture") or {}).get("threshold")
    if cut == "class_score":
        return ((stats.get("per_class") or {}).get(cls) or {}).get("threshold")
    return None


def _per_class_charts(audit: pd.DataFrame, stats: dict, classes: Sequence[str],
                      limit: int = MAX_CHART_CLASSES) -> str:
    score = pd.to_numeric(C.column(audit, "score", np.nan), errors="coerce").to_numpy(dtype=float)
    given = C.column(audit, "given", "").astype(str).to_numpy()
    issue = C.flag(audit, "is_issue").to_numpy()
    flagged = pd.Series(given[issue]).value_counts()
    keep = top_classes(np.array([flagged.get(c, 0) for c in classes]), limit)
    figs = []
    for c in (classes[i] for i in keep):
        m = given == c
        cut = _score_cut(stats, c)
        svg = histogram_svg(score[m], issue[m], bins=20, threshold=cut, width=250, height=110,
                            title=f"label score of {c}")
        cut_txt = f"cut {_fmt(cut, 3)}" if cut is not None else "no score cut"
        figs.append(f"<figure>{svg}<figcaption><b>{_e(c)}</b> · {int(m.sum())} samples · "
                    f"{int((issue & m).sum())} flagged · {_e(cut_txt)}</figcaption></figure>")
    return f'<div class="small-multiples">{"".join(figs)}</div>' + _capped_note(len(keep), len(classes), "charts")


def _bands_line(stats: dict, n_classes: int, chance: float) -> str:
    """What each confidence band means: how often the probe's held-out predictions that sure matched
    their given label, with its interval, printed only from ``MIN_BAND_ROWS`` rows."""
    b = stats.get("confidence_bands") or {}
    if b.get("calibrated"):
        acc, n, cuts = b.get("accuracy") or [], b.get("n") or [], b.get("cuts") or []
        lo, hi = b.get("lo") or [], b.get("hi") or []
        words = {"likely": '<span class="b-likely">likely</span>', "lead": '<span class="b-lead">a lead</span>',
                 "guess": '<span class="b-guess">a guess</span>'}
        parts, folded = [], []
        for i, name in reversed(list(enumerate(b.get("names") or []))):
            if i >= len(cuts) or cuts[i] is None:
                folded.append(words.get(name, _e(name)))
                continue
            rows = n[i] if i < len(n) else 0
            if i < len(acc) and acc[i] is not None:
                measured = (f"{100 * acc[i]:.0f} % of {rows} held-out probe predictions matched their given label, "
                            f"95 % interval {100 * lo[i]:.0f}–{100 * hi[i]:.0f} %")
            else:
                measured = f"not enough rows to measure: {rows} probe predictions"
            parts.append(f"{words.get(name, _e(name))} (confidence ≥ {_fmt(cuts[i])}: {measured})")
        none = (f" No card is called {' or '.join(folded)}: fewer than {b.get('min_rows', st.MIN_RATE_ROWS)} probe "
                "predictions were that sure." if folded else "")
        return (", ".join(parts) + f".{none} The given labels are the noisy ones under audit, so agreement with them "
                "is not how often a suggestion is right (on FER2013, against the FER+ votes, it overstated it 1.4–6×); "
                "the verdict above says "
                f"what your decisions measured. Chance with {n_classes} classes is {_fmt(chance)}.")
    return ('<span class="b-likely">likely</span> (a majority of the probability, well above chance), '
            '<span class="b-lead">a lead</span> (above chance, not evidence), <span class="b-guess">a guess</span> '
            f"(less than a quarter of the way from chance, {_fmt(chance)} with {n_classes} classes, to certainty; "
            "not measured: the probe was too small).")


def _calibration(audit: pd.DataFrame, classes: Sequence[str]) -> str:
    cols = [f"p_{c}" for c in classes]
    if not classes or not all(c in audit.columns for c in cols):
        return '<p class="muted">No class probabilities in the audit.</p>'
    probs = audit[cols].to_numpy(dtype=float)
    cidx = {c: i for i, c in enumerate(classes)}
    given = np.array([cidx.get(g, -1) for g in C.column(audit, "given", "").astype(str)], dtype=int)
    bins, ece = reliability_bins(probs, given)
    n = sum(b["n"] for b in bins)
    return (f'<div class="row2" id="calibration">{reliability_svg(bins)}<p class="muted" style="max-width:520px">'
            f"For {n} trained samples, binned by the probability of their top class (the audit's "
            "distribution): the bar is the share whose top class is the given label, the dot the mean "
            "probability; on the diagonal the probabilities are calibrated. Wrong given labels pull "
            "the bars down by about their share; bars above the diagonal mean the distribution is "
            "underconfident (it averages the training epochs, early ones included). The bands on the "
            "cards are calibrated on the probe's held-out predictions instead. "
            f"Expected calibration error against the given labels: "
            f"<b>{_fmt(ece, 3)}</b>.</p></div>")


def duplicate_count(audit: pd.DataFrame) -> int:
    """Samples that are near-copies of an earlier one (face_status duplicate): the one count the
    summary and the face-stage table both show. The review list's "duplicates" also lists the first
    copy of each group whose copies carry different labels."""
    if C.name(audit, "face_status"):
        return int((audit[C.name(audit, "face_status")].astype(str) == "duplicate").sum())
    return int(C.flag(audit, "is_duplicate").sum())


def _face_stage(audit: pd.DataFrame, rejects: pd.DataFrame | None) -> str:
    status = C.column(audit, "face_status", "ok").astype(str)
    counts = status.value_counts()
    rows = []
    for k, v in counts.items():
        link = "" if k == "ok" else f' <button type="button" class="link" data-show-status="{_e(k)}">show</button>'
        rows.append([f"{_e(k)}{link}", str(int(v))])
    out = _table(["face_status", "samples"], rows)
    if rejects is not None and len(rejects):
        prob = rejects["problem"].astype(str) if "problem" in rejects.columns else pd.Series(["?"] * len(rejects))
        hint = rejects["hint"].astype(str) if "hint" in rejects.columns else pd.Series([""] * len(rejects))
        first_hint = hint.groupby(prob.to_numpy()).first()
        rrows = [[_e(k), str(int(v)), _e(first_hint.get(k, ""))] for k, v in prob.value_counts().items()]
        out += ("<p class='muted'>Rows of the input that never became samples (WS/rejects.parquet), by problem:</p>"
                + _table(["problem", "rows", "what to do"], rrows, left=1))
    return out


def _quality(counts: dict[str, int], stats: dict) -> str:
    rows = []
    for f in QUALITY_FLAGS:
        link = f' <button type="button" class="link" data-show-flag="{f}">show</button>' if counts[f] else ""
        rows.append([f"{_e(FLAG_TEXT[f])}{link}", str(counts[f])])
    said = "; ".join(f"{ISSUES[f].title} = {ISSUES[f].describe(stats)}" for f in QUALITY_FLAGS)
    return _table(["issue", "samples"], rows) + f"<p class='muted'>Measured by prepare on the aligned crop: {_e(said)}.</p>"


_CONTROLS = """
<div class="controls" id="controls">
<label>show <select id="f-cat">
 <option value="review">label issues + ambiguous</option><option value="label_issue">label issues</option>
 <option value="queue">unflagged cards the re-ranked queue puts first</option>
 <option value="ambiguous">ambiguous</option><option value="duplicate">duplicates (and first copies)</option>
 <option value="face">face problems</option><option value="quality">image quality issues</option>
 <option value="reviewed">reviewed (train --trusted)</option>
 <option value="spot_check">spot checks (random rows)</option>
 <option value="all">everything listed</option></select></label>
<label>given <select id="f-given"><option value="">any</option></select></label>
<label>suggested <select id="f-sugg"><option value="">any</option></select></label>
<label>face status <select id="f-status"><option value="">any</option></select></label>
<label>score from <input id="f-smin" type="number" min="0" max="1" step="0.05"></label>
<label>to <input id="f-smax" type="number" min="0" max="1" step="0.05"></label>
<label>file <input id="f-text" type="search" placeholder="path or id"></label>
<label>decided <select id="f-decided"><option value="any">any</option><option value="no">not yet</option>
 <option value="yes">yes</option></select></label>
<label>sort <select id="f-sort"><option value="order">review order</option>
 <option value="score_asc">score, lowest first</option><option value="score_desc">score, highest first</option>
 <option value="conf_desc">suggestion confidence, highest first</option>
 <option value="conf_asc">suggestion confidence, lowest first</option>
 <option value="given">given class</option><option value="path">file</option></select></label>
<label title="on a spot check (a random row) hide the model's suggestion, score, flags and reason, so your decision measures the label, not agreement with the model"><input type="checkbox" id="f-blind" checked> blind spot checks</label>
<label>per page <select id="f-size"><option>25</option><option selected>50</option><option>100</option>
 <option>200</option></select></label>
</div>
<div id="chips"></div>
<div class="pager"><button type="button" id="prev">← previous</button><span id="page"></span>
<button type="button" id="next">next →</button><span id="count" class="muted"></span></div>
<div id="bulk">For all <b id="nshown">0</b> cards these filters show (every page):
<button type="button" id="bulk-accept">accept their suggestions</button>
<button type="button" id="bulk-keep">keep</button> <button type="button" id="bulk-drop">drop</button>
<button type="button" id="bulk-undo">undo their decisions</button><span id="bulk-skip" class="muted"></span>
<span id="bulk-note" class="muted"></span></div>
<div class="cards" id="list"></div>
<div id="zoom" hidden><div class="zbox"><button type="button" class="link" id="zoom-close">close ×</button>
<div class="zimgs"><img id="zoom-crop" alt="the aligned crop, enlarged"><img id="zoom-orig" alt="the original file"></div>
<div id="zoom-path" class="path"></div><a id="zoom-link" target="_blank" rel="noopener">open the original file</a></div></div>
"""

_BAR = """
<div id="bar"><span id="ndec">0 decisions</span>
<button type="button" id="dl-csv">Save decisions (CSV)</button>
<button type="button" id="dl-json">Save as JSON</button>
<button type="button" id="clear">Clear</button>
<span>then: <code id="next-cmd">{command}</code> (the cleaned labels), or review the next cards with your
decisions applied: <code id="loop-cmd">{loop}</code></span>
<span class="muted keys">keys: j / k next / previous card · a accept · s keep · d drop · u undo ·
[ / ] page</span></div>
"""


def _progress_line(p: dict) -> str:
    """Where the review stands: reviewed (hidden unless asked for), still flagged, what the next cards
    hold (from a measured rate, with its interval), the spot checks on offer."""
    if not p["next_cards"]:
        nxt = ""
    elif p.get("expected_from") is None:
        nxt = (f"; how many wrong labels the next {p['next_cards']} flagged cards hold is not estimated yet (no "
               f"planted flips; {rc.MIN_RECENT_CARDS} reviewed queue cards give the figure)")
    else:
        why = (f"the share of the last {p['n_expected_from']} queue cards you reviewed that were wrong"
               if p["expected_from"] == "reviewed" else
               f"the share of the run's {p['n_expected_from']} planted flips its score found among as many rows "
               "as it estimates are wrong; flips are clear faces with a foreign label, easier to find than real "
               "wrong labels, so this leans high (on a FER2013 reference subset it said 74 where the first 100 "
               f"cards held 44 clear errors, 29 right labels and 27 unclear ones) until {rc.MIN_RECENT_CARDS} "
               "reviewed queue cards replace it")
        nxt = (f"; the next {p['next_cards']} flagged cards are expected to hold about {p['expected_errors_next']:.0f} "
               f"wrong labels (95 % interval {p['expected_lo']:g}–{p['expected_hi']:g}; {why})")
    if not p.get("n_spot_checks"):
        spot = ""
    elif p.get("spot_checks_reachable", True):
        spot = (f" {p['n_spot_checks']} spot-check cards (random rows, flagged or not, shown blind: show "
                "&ldquo;spot checks&rdquo;) let your decisions estimate the share of wrong labels in the next run: "
                f"decide at least {rc.MIN_SPOT_CHECKS} of them.")
    else:
        spot = (f" {p['n_spot_checks']} spot-check cards (random rows) are offered, but at {p['n_rows']:,} rows "
                f"they cannot reach the {rc.MIN_SPOT_CHECKS} needed to estimate the share of wrong labels "
                f"(about {int(rc.MIN_SPOT_CHECKS / rc.SPOT_SHARE):,} rows are needed); your decisions still count "
                "exactly for the rows they decide.")
    return (f'<p class="verdict" id="progress">Review progress: <b>{p["n_reviewed"]}</b> samples reviewed '
            f'(train --trusted; hidden from the list: show &ldquo;reviewed&rdquo; to see them), '
            f'<b>{p["n_flagged"]}</b> label issues still flagged{_e(nxt)}.{spot}</p>')


def _map_section(payload: dict) -> str:
    """The embedding map (drawn by the page's script from the payload's points) and what it shows."""
    m = payload.get("map")
    if not m:
        return ('<p class="muted" id="map-none">No embedding map and no similar faces: this audit has no embedding '
                'from a run (a run of fercure before 0.5, or an audit without a run). Train again to see them.</p>')
    return (f'<h3 id="map">Embedding map</h3><p class="muted" id="map-note">{_e(m["note"])} Colour: the label; '
            "a black ring: flagged as a label issue. Drag a rectangle to list the cards it holds (a click: the "
            "nearest point's card), then decide them with the bulk actions. Each card lists its most similar faces "
            "with their labels and cosine similarity (red: another label than the card's).</p>"
            '<div id="map-controls" class="muted">colour by <select id="map-colour"><option value="given">given '
            'label</option><option value="sugg">suggested label</option></select> <span id="map-legend"></span></div>'
            '<svg id="map-svg" viewBox="-20 -20 1040 1040" width="460" height="460" role="img" '
            'aria-label="embedding map"></svg>')


def _error_share_line(stats: dict) -> str:
    """The two estimates of the share of wrong labels side by side (each with its interval where it has
    one), and the one the run used."""
    cal = stats.get("calibration") or {}
    if not cal:
        return ""
    pl, rv = cal.get("planted") or {}, cal.get("reviewed") or {}
    planted = (f"planted flips {_fmt(100 * pl['share'], 0)}%" if pl.get("share") is not None
               else "planted flips: none in this run")
    drops = (f"; {rv['n_image_drops']} drops of face, duplicate or blurry cards left out: they are not wrong labels"
             if rv.get("n_image_drops") else "")
    if rv.get("share") is not None:
        reviewed = (f"your decisions {_fmt(100 * rv['share'], 0)}% (95 % interval {_fmt(100 * rv['lo'], 0)}–"
                    f"{_fmt(100 * rv['hi'], 0)}%; {rv['n_reviewed']} label decisions, {rv['n_errors']} wrong; "
                    f"{rv['n_spot_checks']} spot checks, {rv['n_spot_errors']} of them wrong{drops})")
    elif rv.get("n_reviewed") or rv.get("n_image_drops"):
        reviewed = f"your decisions: not yet — {rv.get('why')}{drops}"
    else:
        reviewed = "your decisions: none yet (audit-labels --trusted or train --trusted with a saved decisions file)"
    used = {"reviewed": "your decisions'", "planted": "the planted flips'"}.get(cal.get("used"), "neither")
    flags = ""
    if cal.get("used") == "reviewed" and cal.get("share_for_flags") not in (None, cal.get("share")):
        flags = (f" No wrong label among the spot checks is no proof of none: the planted rule flags up to the top "
                 f"of the interval ({_fmt(100 * cal['share_for_flags'], 0)}%).")
    auroc = (f" Among the reviewed cards the score put the wrong labels first at AUROC {_fmt(rv['auroc'])}."
             if rv.get("auroc") is not None else "")
    return (f'<br><span class="muted" id="error-share">Share of wrong labels: {_e(planted)}; {_e(reviewed)}. '
            f'This audit uses {used} estimate (the <code>planted</code> threshold rule reads it).{_e(flags)}'
            f'{_e(auroc)}</span>')


def decisions_stem(run_id: str | None) -> str:
    """The decisions file's name without extension, as the page's script saves it."""
    return "decisions-" + re.sub(r"[^A-Za-z0-9._-]", "_", run_id or "report")


def export_command(workspace: str | None, run_id: str | None) -> str:
    """The command that applies the saved decisions, runnable as printed once the file is in the
    current folder (browsers save it to their download folder)."""
    ws = workspace or "WS"
    out = f"{ws.rstrip('/')}/cleaned.parquet"
    return (f"fercure export-cleaned -w {shlex.quote(ws)} -o {shlex.quote(out)} --force "
            f"--decisions {shlex.quote(decisions_stem(run_id) + '.csv')}")


def loop_command(workspace: str | None, run_id: str | None) -> str:
    """The review loop with the saved decisions: re-rank the rest in seconds (no training; reviewed rows
    never flagged again), or retrain with them; either writes the next report."""
    ws = shlex.quote(workspace or "WS")
    f = shlex.quote(decisions_stem(run_id) + ".csv")
    return (f"fercure audit-labels -w {ws} --trusted {f}  (re-rank, no training) · "
            f"fercure train -w {ws} --trusted {f} && fercure audit-labels -w {ws}  (retrain)")


def render_report(
    audit: pd.DataFrame,
    stats: dict,
    classes: Sequence[str],
    *,
    crops: np.ndarray | None = None,
    run_id: str | None = None,
    manifest: pd.DataFrame | None = None,
    rejects: pd.DataFrame | None = None,
    actions: Sequence[str] | None = None,
    thumb_size: int = THUMB_SIZE,
    thumb_budget: int = THUMB_BUDGET,
    workspace: str | None = None,
    list_missed_faces: bool = False,
    input_root: str | None = None,
    neighbours=None,
) -> str:
    """The review report as one HTML string.

    Parameters
    ----------
    audit : DataFrame
        ``fercure.audit.build_audit``'s table (store_index locates each crop).
    stats : dict
        ``build_audit``'s statistics (thresholds, per-class counts, transition matrix, model strength).
    classes : sequence of str
    crops : ndarray (N, S, S, 3) uint8, optional
        The crop store (memory-mapped is fine: only listed rows' crops are read).
    run_id : str, optional
    manifest : DataFrame, optional
        WS/manifest.parquet, for prepare's brightness and contrast.
    rejects : DataFrame, optional
        WS/rejects.parquet: input rows that never became samples.
    actions : sequence of str, optional
        What fercure's default export does with each audit row (shown on every card).
    thumb_size, thumb_budget : int
        Thumbnail edge in pixels; bytes of thumbnails at most (the rest of the review order goes without).
    workspace, input_root : str, optional
        Where the workspace and the input images are (absolute): the page names the export command
        with the real workspace and links each card to its original file.
    neighbours : fercure.groups.Neighbours, optional
        The run's nearest neighbours, aligned with ``audit``: each card's similar faces.
    """
    classes = [str(c) for c in classes]
    payload = build_payload(audit, stats, classes, crops=crops, manifest=manifest, actions=actions,
                            thumb_budget=thumb_budget, thumb_size=thumb_size, neighbours=neighbours,
                            list_missed_faces=list_missed_faces)
    _add_page_keys(payload, run_id, input_root, len(audit))
    return _page_html(audit, stats, classes, payload, rejects, run_id, workspace)


def _add_page_keys(payload: dict, run_id: str | None, input_root: str | None, n_rows: int) -> None:
    """What the page's script needs beyond the rows: the run, the decisions file's name, the input
    root, the key its saved decisions are kept under, the note on thumbnails left out."""
    payload["run_id"] = run_id
    payload["stem"] = decisions_stem(run_id)
    payload["input_root"] = input_root
    payload["key"] = f"{run_id or ''}:{n_rows}"
    th = payload["thumbs"]
    left_out = th["n_with_crop"] - th["n"]
    th["note"] = (f"Thumbnails: {th['size']} px JPEGs for the {th['n']} listed samples earliest in review order"
                  + (f"; {left_out} later ones are listed without one (the report keeps thumbnails under "
                     f"{th['budget_bytes'] // 2**20} MB)" if left_out > 0 else "")
                  + ". Samples that are not listed have no thumbnail.")


def _kpis(audit: pd.DataFrame, payload: dict) -> str:
    counts = payload["counts"]
    trained = C.flag(audit, "trained").to_numpy() if C.name(audit, "trained") else \
        pd.to_numeric(C.column(audit, "score", np.nan), errors="coerce").notna().to_numpy()
    kpis = [("samples", len(audit)), ("trained", int(trained.sum())), ("label issues", counts["label_issue"]),
            ("ambiguous", counts["ambiguous"]), ("duplicates", duplicate_count(audit)),
            ("face problems", counts["face"]),
            ("image quality", counts["quality"]),
            ("listed for review", len(payload["rows"]["id"]))]
    return "".join(f'<span class="kpi"><b>{v}</b>{_e(k)}</span>' for k, v in kpis)


def _per_class_table(audit: pd.DataFrame, stats: dict, classes: list[str]) -> str:
    """Counts, mean score and cut per class (the classes with most issues), and a balance note."""
    per_class = stats.get("per_class", {})
    pc_items = list(per_class.items())
    keep = top_classes(np.array([float(d.get("n_label_issues") or 0) for _, d in pc_items]), MAX_TABLE_CLASSES)
    pc_rows = [[_e(c), _count(d.get("n", 0)), _count(d.get("n_label_issues", 0)), _count(d.get("n_ambiguous", 0)),
                _fmt(d.get("mean_label_score", d.get("mean_label_quality"))), _fmt(d.get("threshold"), 3)]
               for c, d in (pc_items[i] for i in keep)]
    pc_html = _capped_note(len(keep), len(pc_items), "this table") + _table(["class", "samples", "label issues", "ambiguous", "mean label score",
                      _rule(stats).table_heading() if _rule(stats) else "threshold"], pc_rows)
    given_counts = C.column(audit, "given", "").astype(str).value_counts()
    balance = balance_note({c: int(given_counts.get(c, 0)) for c in classes})
    if balance:
        pc_html += f'<p class="verdict v-weak" id="balance">Class balance: {_e(balance)}</p>'
    return pc_html


def _page_html(audit: pd.DataFrame, stats: dict, classes: list[str], payload: dict, rejects,
               run_id: str | None, workspace: str | None) -> str:
    """The page itself: one template over the sections (long because it is the page's HTML)."""
    kpi_html = _kpis(audit, payload)
    pc_html = _per_class_table(audit, stats, classes)
    counts, th = payload["counts"], payload["thumbs"]
    used = stats.get("threshold_method_used", stats.get("threshold_method"))
    tm = np.asarray(stats.get("transition_matrix", np.zeros((len(classes), len(classes)))), dtype=np.int64)
    score = pd.to_numeric(C.column(audit, "score", np.nan), errors="coerce").to_numpy(dtype=float)
    mix_t = (stats.get("mixture") or {}).get("threshold")
    method = stats.get("method", "confidence")
    method_txt = method if isinstance(method, str) else ", ".join(f"{k}×{v}" for k, v in method.items())
    chance = 1 / len(classes) if classes else float("nan")

    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fercure review{_e(' — run ' + run_id) if run_id else ''}</title>
<style>{_asset("report.css")}</style></head><body>
<h1>fercure label review</h1>
<p class="muted">run {_e(run_id or '?')} · fercure {_e(__version__)} · score: {_e(method_txt)} ·
is_label_issue: {_e(_threshold_line(stats))} · ambiguous: top-2 gap &lt; {_fmt(stats.get('ambiguity_margin'))}
and top-1 &lt; {_fmt(stats.get('ambiguity_max_confidence'))}</p>
{_strength(stats)}
{_evidence_and_health(stats)}
<div>{kpi_html}</div>
<nav class="muted">Jump to: <a href="#review">the review list</a> · <a href="#per-class">per class</a> ·
<a href="#matrix">transition matrix</a> · <a href="#calibration">calibration</a> · <a href="#face-stage">face stage</a> ·
<a href="#quality">image quality</a> · <a href="#groups">conflicting duplicates</a></nav>
<p class="muted">How sure a suggestion is, in colour and words: {_bands_line(stats, len(classes), chance)}</p>
<h2 id="per-class">Per class</h2>{pc_html}
<p class="muted">Label score per class (0 = the given label is likely wrong, 1 = likely right); red = flagged,
dashed line = the cut that decided the flags.</p>
{_per_class_charts(audit, stats, classes)}
<h2>Noise transition (given → suggested)</h2>
<p class="muted">Counts over trained samples; off-diagonal cells are the suggested corrections. Click a cell
to list its samples below (on the diagonal only the listed ones: ambiguous, duplicates, face or quality issues).</p>
{_transition_table(tm, classes) if classes else ''}
<h2>Label score, all classes</h2>
{histogram_svg(score, C.flag(audit, "is_issue").to_numpy(), threshold=mix_t if getattr(_rule(stats), "cut", None) == "score" else None, rule=used)}
<h2>Calibration</h2>{_calibration(audit, classes)}
<h2 id="face-stage">Face stage</h2>{_face_stage(audit, rejects)}
<h2 id="quality">Image quality</h2>{_quality(counts, stats)}
<h2>Duplicate groups with conflicting labels</h2>
<p class="muted">Near-identical crops that carry different labels: at most one label can be right.</p>
<div class="groups" id="groups"></div>
<h2 id="review">Review</h2>
<p class="muted">Every listed sample: label issues, ambiguous samples, duplicates, face and image-quality
problems. Record a decision per card (accept the suggestion, another class, keep, drop), or for every
card the filters show at once (the buttons above the cards); keys: <kbd>j</kbd> / <kbd>k</kbd> next /
previous card, <kbd>a</kbd> accept its suggestion, <kbd>s</kbd> keep, <kbd>d</kbd> drop, <kbd>u</kbd> undo
its decision, <kbd>[</kbd> / <kbd>]</kbd> previous / next page. A click on a thumbnail shows the crop larger,
with the original file. Decisions stay in this browser until you save them as a file for
<code>fercure export-cleaned --decisions</code>.
{_e(th['note'])}</p>
{_progress_line(payload["progress"])}
{_map_section(payload)}
{_CONTROLS}
{_BAR.format(command=_e(export_command(workspace, run_id)), loop=_e(loop_command(workspace, run_id)))}
<script type="application/json" id="fercure-data">{json_for_script(payload)}</script>
<script>{_asset("report.js")}</script>
</body></html>
"""

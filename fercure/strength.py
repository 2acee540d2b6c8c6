"""How strong a run's evidence is, in two parts (pure functions): the *ranking's* (does the score put
the wrong labels first?) and the *suggestions'* (is the class a card suggests the right one?).

They are separate questions with separate evidence. The ranking is measured on labels known to be
wrong: the planted flips (the run's self-check), and once a reviewer has decided random spot checks,
the real wrong labels among them — an AUROC with its interval (Hanley and McNeil). The suggestions
can only be measured on the cards a reviewer decided that offered one: how often the reviewer chose
the suggested class. The probe's held-out agreement with the *given* labels is no measure of either:
those labels are the noisy ones under audit (on FER+ it overstated the suggestions 2–6×), so it is
shown as what it is and decides only when nothing else was measured.

``verdict`` folds both into the ``ok | weak | too_weak`` the export's policies read
(``fercure.export.situations``): ``too_weak`` only when the ranking does not beat chance clearly
(its interval reaches 0.5), ``weak`` when the ranking is useful but its suggestions are not shown to be
(review in this order, do not accept the suggestions blindly), ``ok`` when both hold.
"""

from __future__ import annotations

import math

import numpy as np

from fercure.metrics import auroc

Z = 1.96  # two-sided 95 %
MIN_RATE_ROWS = 30  # a share (a band's accuracy, the suggestions') is printed from this many rows
MIN_AUROC_ROWS = 5  # wrong and right labels each, before an AUROC of reviewed rows means anything
RANKING_STRONG = 0.8  # planted-flip AUROC from which a model's confident relabels were measured to help


def wilson(k: int, n: int, z: float = Z) -> tuple[float, float]:
    """The Wilson score interval of a share of ``k`` in ``n`` ((nan, nan) for n = 0). Unlike the normal
    interval it does not shrink to a point at 0 or n: 0 of 30 gives an upper bound of about 11 %."""
    if n <= 0:
        return math.nan, math.nan
    p = k / n
    denom = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, mid - half), min(1.0, mid + half)


def hanley_mcneil(auc: float, n_pos: int, n_neg: int, z: float = Z) -> tuple[float, float]:
    """The interval of an AUROC from ``n_pos`` positives and ``n_neg`` negatives (Hanley and McNeil
    1982, the exponential approximation of its variance), clipped to [0, 1]; (nan, nan) without both."""
    if not (n_pos > 0 and n_neg > 0 and math.isfinite(auc)):
        return math.nan, math.nan
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    half = z * math.sqrt(max(var, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else round(float(x), digits)


def share_with_interval(k: int, n: int, minimum: int = MIN_RATE_ROWS) -> dict:
    """``k`` of ``n`` as a share with its Wilson interval; ``share`` None (the words: not enough rows to
    measure) below ``minimum`` rows."""
    lo, hi = wilson(k, n)
    enough = n >= minimum
    return {"k": int(k), "n": int(n), "share": _r(k / n) if enough else None,
            "lo": _r(lo) if enough else None, "hi": _r(hi) if enough else None, "enough": bool(enough)}


def ranking_strength(planted_auroc: float | None, n_planted: int, n_other: int,
                     spot_error: np.ndarray | None = None, spot_rank: np.ndarray | None = None) -> dict:
    """How well the score ranks wrong labels first, with the interval of the measure that decides.

    Parameters
    ----------
    planted_auroc : the self-check's AUROC of the planted flips among the trained rows (None: no flips).
    n_planted, n_other : the planted flips and the other rows that AUROC was measured on.
    spot_error, spot_rank : per decided spot check (random rows), whether the reviewer found its label
        wrong, and its rank in the queue when reviewed (low = suspect).

    Returns
    -------
    dict: ``source`` ("reviewed" once the spot checks hold ``MIN_AUROC_ROWS`` wrong and right labels
    each, else "planted", else None), ``auroc``, ``lo``, ``hi``, ``n_pos``, ``n_neg``, ``useful``
    (the interval lies above 0.5; None when not measured), and both measures under ``planted`` and
    ``reviewed``.
    """
    out: dict = {"source": None, "auroc": None, "lo": None, "hi": None, "n_pos": 0, "n_neg": 0, "useful": None,
                 "planted": None, "reviewed": None}
    if planted_auroc is not None and math.isfinite(planted_auroc) and n_planted > 0 and n_other > 0:
        lo, hi = hanley_mcneil(planted_auroc, n_planted, n_other)
        out["planted"] = {"auroc": _r(planted_auroc), "lo": _r(lo), "hi": _r(hi), "n_pos": int(n_planted),
                          "n_neg": int(n_other)}
    if spot_error is not None and spot_rank is not None:
        err = np.asarray(spot_error, bool)
        rank = np.asarray(spot_rank, float)
        ok = np.isfinite(rank)
        err, rank = err[ok], rank[ok]
        n_pos, n_neg = int(err.sum()), int((~err).sum())
        if n_pos >= MIN_AUROC_ROWS and n_neg >= MIN_AUROC_ROWS:
            a = auroc(err, -rank)
            lo, hi = hanley_mcneil(a, n_pos, n_neg)
            out["reviewed"] = {"auroc": _r(a), "lo": _r(lo), "hi": _r(hi), "n_pos": n_pos, "n_neg": n_neg}
    pick = out["reviewed"] or out["planted"]
    if pick is not None:
        out.update({k: pick[k] for k in ("auroc", "lo", "hi", "n_pos", "n_neg")},
                   source="reviewed" if out["reviewed"] else "planted", useful=bool(pick["lo"] > 0.5))
    return out


def suggestion_strength(agreed: np.ndarray) -> dict:
    """How often a reviewer chose the suggested class, over the decided cards that offered one
    (``agreed``: per such card). ``share`` None below ``MIN_RATE_ROWS`` cards; ``good`` when the
    interval lies above one half, ``weak`` when below, else ``unsure``."""
    a = np.asarray(agreed, bool)
    out = share_with_interval(int(a.sum()), len(a))
    out["judged"] = None if not out["enough"] else "good" if out["lo"] >= 0.5 else "weak" if out["hi"] < 0.5 \
        else "unsure"
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def ranking_words(r: dict) -> str:
    """The ranking's measure in a phrase, e.g. "the planted flips ranked at AUROC 0.74 (0.66–0.82)"."""
    if r.get("source") is None:
        return "the ranking was not measured (no planted flips, no decided spot checks)"
    what = ("the wrong labels among your spot checks" if r["source"] == "reviewed"
            else f"the {r['n_pos']} planted flips")
    return f"{what} ranked at AUROC {r['auroc']:.2f} (95 % interval {r['lo']:.2f}–{r['hi']:.2f})"


def suggestion_words(s: dict, probe: dict | None = None) -> str:
    """The suggestions' measure in a phrase; before enough reviewed cards, what is not known."""
    if s.get("enough"):
        return (f"your decisions chose the suggested class on {s['k']} of {s['n']} cards that offered one "
                f"({_pct(s['share'])}, 95 % interval {_pct(s['lo'])}–{_pct(s['hi'])})")
    head = (f"not measured yet ({s.get('n', 0)} of the {MIN_RATE_ROWS} decided cards with a suggestion "
            "needed)")
    acc, chance = (probe or {}).get("holdout_accuracy"), (probe or {}).get("chance_accuracy")
    if acc is not None and chance is not None:
        head += (f"; held out, the model's top class matched the given label for {_pct(acc)} of "
                 f"{(probe or {}).get('n_holdout', 0)} probe rows (chance {_pct(chance)}), but those labels are "
                 "the noisy ones under audit, so that is no measure of how often a suggestion is right")
    return head


def probe_lift_clear(probe: dict | None) -> bool | None:
    """The probe's held-out accuracy is clearly above chance (2 standard errors and 5 points); None
    without a probe."""
    p = probe or {}
    acc, chance, se = p.get("holdout_accuracy"), p.get("chance_accuracy"), p.get("standard_error")
    if acc is None or chance is None:
        return None
    return bool(acc - chance >= max(0.05, 2 * (se or 0)))


def verdict(ranking: dict, suggestions: dict, probe: dict | None = None) -> dict:
    """``ok | weak | too_weak | unknown``, the sentence the terminal shows (``message``: both parts and
    what to do) and what to do alone (``advice``, the report's headline beside its two lines).

    too_weak: the ranking does not beat chance clearly (its interval reaches 0.5): its flags are no
    better than a random draw. Without any measure of the ranking (no planted flips, no spot checks)
    the probe decides as it always did: too_weak when its accuracy is not clearly above chance.
    weak: the ranking is useful, but the suggestions are weak or unproven — decided cards show them
    weak, or (before enough decided cards) the probe barely beats chance or the ranking is below
    ``RANKING_STRONG``. ok: otherwise. The sentence always says what to do with each part."""
    sugg = suggestion_words(suggestions, probe)
    lift = probe_lift_clear(probe)
    blind = "Do not accept suggestions blindly."
    if ranking.get("source") is None:
        if lift is None:
            return {"verdict": "unknown", "advice": "Not measured.",
                    "message": "Not measured: no planted flips, no probe, no decided spot checks (holdout = 0 "
                               "and plant_rate = 0)."}
        if not lift:
            advice = ("Treat the flags as unproven leads; train longer, on more images, or with --pretrained "
                      "weights.")
            return {"verdict": "too_weak", "advice": advice,
                    "message": "Ranking not measured (no planted flips) and the model's held-out predictions "
                               f"barely beat chance; suggestions {sugg}. {advice}"}
        advice = f"Review in this order. {blind}"
        return {"verdict": "ok", "advice": advice,
                "message": f"Ranking not measured (no planted flips); suggestions {sugg}. {advice}"}
    rank = ranking_words(ranking)
    if not ranking["useful"]:
        advice = "Treat the flags as noise; train longer, on more images, or with --pretrained weights."
        return {"verdict": "too_weak", "advice": advice,
                "message": f"The ranking does not beat chance clearly: {rank}. {advice}"}
    judged = suggestions.get("judged")
    if judged == "good":
        advice = "Review in this order; the suggestions hold up."
        return {"verdict": "ok", "advice": advice,
                "message": f"The ranking is useful: {rank}. Review in this order. The suggestions hold up: {sugg}."}
    weak = judged in ("weak", "unsure") or (judged is None and (lift is False or (ranking["auroc"] or 0) < RANKING_STRONG))
    advice = f"Review in this order. {blind}"
    if weak:
        word = "weak" if judged == "weak" else "unproven"
        return {"verdict": "weak", "advice": advice,
                "message": f"The ranking is useful: {rank}. Review in this order. The suggestions are {word}: "
                           f"{sugg}. {blind}"}
    return {"verdict": "ok", "advice": advice + " Your decisions will measure them.",
            "message": f"The ranking is useful: {rank}. Review in this order; suggestions {sugg}. {blind[:-1]} "
                       "until your decisions have measured them."}

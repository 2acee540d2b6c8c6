"""Words that match the evidence: the verdict split into the ranking's and the suggestions' strength,
intervals instead of point figures, bands only from enough rows, and reviewed shares that count only
decisions about labels."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from fercure import audit as core
from fercure import review_calibration as rc
from fercure import strength as st
from fercure.report import render_report

from test_report import CLASSES, small_audit


def text_of(html: str, element_id: str) -> str:
    """The visible text of the element with ``element_id`` (tags dropped; the element is a div, span or p
    whose own closing tag ends it)."""
    tag = re.search(rf'<(div|span|p)\b[^>]*id="{element_id}"', html).group(1)
    m = re.search(rf'id="{element_id}"[^>]*>(.*?)</{tag}>', html, re.S)
    assert m, element_id
    return re.sub(r"<[^>]+>", "", m.group(1))


def reviewed(table: pd.DataFrame, ids, actions, spot, labels=None, suggested=None) -> pd.DataFrame:
    g = table.set_index("sample_id")["given_label"]
    labels = labels if labels is not None else [g[i] if a == "keep" else None for i, a in zip(ids, actions)]
    return pd.DataFrame({"sample_id": list(ids), "action": list(actions), "label": labels,
                         "given_label": [g[i] for i in ids], "source": "test row 2",
                         "rank_when_reviewed": np.linspace(0.01, 0.99, len(ids)), "spot_check": spot,
                         "review_round": 1,
                         "suggested_when_reviewed": suggested if suggested is not None else [None] * len(ids)})


def trained_as(preds: pd.DataFrame, ids, labels) -> pd.DataFrame:
    """The predictions of a run that trained ``ids`` with their reviewed ``labels``."""
    out = preds.copy()
    new = dict(zip(ids, labels))
    out["given_label"] = [new.get(i, g) for i, g in zip(out["sample_id"], out["given_label"])]
    return out


def test_intervals_wilson_and_hanley_mcneil():
    lo, hi = st.wilson(0, 30)
    assert lo == 0.0 and hi == pytest.approx(0.1135, abs=5e-4)  # the "rule of three" region, not ± 0
    lo, hi = st.wilson(24, 60)
    assert (lo, hi) == (pytest.approx(0.2857, abs=5e-4), pytest.approx(0.5263, abs=5e-4))
    lo, hi = st.hanley_mcneil(0.76, 45, 1455)
    assert lo == pytest.approx(0.677, abs=0.005) and hi == pytest.approx(0.843, abs=0.005) and lo > 0.5
    assert np.isnan(st.wilson(0, 0)[0]) and np.isnan(st.hanley_mcneil(0.7, 0, 10)[0])


# probe at chance against the (noisy) given labels, planted flips ranked clearly above chance
CHANCE_PROBE = {"n_holdout": 70, "holdout_accuracy": 0.30, "chance_accuracy": 0.27, "standard_error": 0.055}
USEFUL = {"n_planted": 45, "n_scored": 1500, "auroc_mean_p": 0.76, "estimated_error_share": 0.3,
          "recall_at_estimated_share": 0.5}


def test_a_useful_ranking_with_weak_suggestions_says_review_in_this_order_and_not_accept_blindly():
    man, preds, _ = small_audit(n=600, seed=3)
    meta = {"self_check": USEFUL, "model_strength": {**CHANCE_PROBE, "planted_auroc": 0.76}}
    table, stats = core.build_audit(man, preds, CLASSES, run_meta=meta)
    ms = stats["model_strength"]
    assert ms["verdict"] == "weak"  # not too_weak: the ranking beats chance clearly
    assert ms["ranking"]["source"] == "planted" and ms["ranking"]["useful"] and ms["ranking"]["lo"] > 0.5
    assert ms["suggestions"]["share"] is None  # no reviewed card offered a suggestion yet
    html = render_report(table, stats, CLASSES)
    words = text_of(html, "verdict")
    assert "Review in this order" in words and "Do not accept suggestions blindly" in words
    assert "noise" not in words and "too weak" not in words.lower()
    assert "not a measure" in words or "no measure" in words  # the probe's agreement is not passed off as one
    # the same ranking judged no better than chance: then, and only then, the flags are noise
    meta_bad = {"self_check": {**USEFUL, "auroc_mean_p": 0.56}, "model_strength": CHANCE_PROBE}
    _, stats_bad = core.build_audit(man, preds, CLASSES, run_meta=meta_bad)
    assert stats_bad["model_strength"]["verdict"] == "too_weak"
    assert stats_bad["model_strength"]["ranking"]["lo"] <= 0.5
    assert "Treat the flags as noise" in stats_bad["model_strength"]["message"]


def test_decided_suggestion_cards_measure_the_suggestions():
    man, preds, _ = small_audit(n=600, seed=3)
    strong_probe = {"n_holdout": 70, "holdout_accuracy": 0.9, "chance_accuracy": 0.5, "standard_error": 0.03}
    meta = {"self_check": {**USEFUL, "auroc_mean_p": 0.95}, "model_strength": strong_probe}
    before, st0 = core.build_audit(man, preds, CLASSES, run_meta=meta)
    assert st0["model_strength"]["verdict"] == "ok"
    other = {"happy": "sad", "sad": "happy"}
    ids = before["sample_id"].to_numpy()[:40]
    g = before.set_index("sample_id")["given_label"]
    sugg = [other[g[i]] for i in ids]
    # 40 cards offered a suggestion; the reviewer took it on 10 and kept the given label on 30
    actions = ["relabel"] * 10 + ["keep"] * 30
    labels = sugg[:10] + [g[i] for i in ids[10:]]
    _, st1 = core.build_audit(man, trained_as(preds, ids, labels), CLASSES, run_meta=meta,
                              reviewed=reviewed(before, ids, actions, np.zeros(40, bool), labels, sugg))
    s = st1["model_strength"]["suggestions"]
    assert (s["k"], s["n"], s["judged"]) == (10, 40, "weak") and s["hi"] < 0.5
    assert st1["model_strength"]["verdict"] == "weak"
    assert "Do not accept suggestions blindly" in st1["model_strength"]["message"]
    # taken on 36 of 40: the suggestions hold up
    labels = sugg[:36] + [g[i] for i in ids[36:]]
    _, st2 = core.build_audit(man, trained_as(preds, ids, labels), CLASSES, run_meta=meta, reviewed=reviewed(
        before, ids, ["relabel"] * 36 + ["keep"] * 4, np.zeros(40, bool), labels, sugg))
    assert st2["model_strength"]["suggestions"]["judged"] == "good" and st2["model_strength"]["verdict"] == "ok"


def test_zero_wrong_of_30_spot_checks_gives_a_real_interval_and_the_planted_rule_still_flags():
    out = rc.error_share(np.zeros(30, bool), np.ones(30, bool), 1000)
    assert out["share"] == 0.0 and out["lo"] == 0.0 and out["hi"] == pytest.approx(0.1135, abs=5e-4)
    man, preds, _ = small_audit(n=1000, seed=3)
    meta = {"self_check": {"n_planted": 30, "estimated_error_share": 0.2, "auroc_mean_p": 0.9}}
    before, _ = core.build_audit(man, preds, CLASSES, threshold_method="planted", run_meta=meta)
    ids = before.loc[~before["is_label_issue"], "sample_id"].to_numpy()[:30]
    after, stats = core.build_audit(man, preds, CLASSES, threshold_method="planted", run_meta=meta,
                                    reviewed=reviewed(before, ids, ["keep"] * 30, np.ones(30, bool)))
    cal = stats["calibration"]
    assert cal["used"] == "reviewed" and cal["share"] == 0.0
    assert cal["share_for_flags"] == pytest.approx(cal["reviewed"]["hi"]) and cal["share_for_flags"] > 0.1
    assert after["is_label_issue"].sum() > 0.1 * (len(after) - 30)  # not nothing because of a point estimate of 0
    words = text_of(render_report(after, stats, CLASSES), "error-share")
    assert "± 0" not in words and "0–11%" in words


def test_drops_of_face_cards_are_not_counted_as_wrong_labels():
    man, preds, _ = small_audit(n=1000, seed=3)
    man.loc[:39, "face_status"] = "no_face"
    before, _ = core.build_audit(man, preds, CLASSES)
    clean = before.loc[40:, "sample_id"].to_numpy()[:30]
    noface = before.loc[:39, "sample_id"].to_numpy()
    ids = np.r_[clean, noface]
    rev = reviewed(before, ids, ["keep"] * 30 + ["drop"] * 40, np.r_[np.ones(30, bool), np.zeros(40, bool)])
    _, stats = core.build_audit(man, preds[~preds["sample_id"].isin(noface)], CLASSES, reviewed=rev)
    r = stats["calibration"]["reviewed"]
    assert r["n_reviewed"] == 30 and r["n_errors"] == 0 and r["n_image_drops"] == 40
    assert r["share"] == 0.0  # 40 no_face drops were "6 %" before
    # a drop of a clean face is still a decision about its label (no class fits it)
    rev2 = reviewed(before, clean, ["drop"] * 3 + ["keep"] * 27, np.ones(30, bool))
    _, stats2 = core.build_audit(man, preds, CLASSES, reviewed=rev2)
    assert stats2["calibration"]["reviewed"]["n_errors"] == 3


def test_no_band_is_printed_below_its_minimum():
    rng = np.random.default_rng(0)
    conf = np.r_[rng.uniform(0.2, 0.5, 200), np.full(9, 0.95)]  # nine probe rows that sure, all matching
    correct = np.r_[rng.random(200) < conf[:200] * 0.9, np.ones(9, bool)]
    b = core.confidence_bands(conf, correct)
    assert b["calibrated"] and b["cuts"][2] is None  # "likely" folded into the band below: 9 rows measure nothing
    assert all(n >= core.MIN_BAND_ROWS or acc is None for n, acc in zip(b["n"], b["accuracy"]))
    assert all((acc is None) == (lo is None) for acc, lo in zip(b["accuracy"], b["lo"]))
    man, preds, _ = small_audit(n=200, seed=1)
    table, stats = core.build_audit(man, preds, CLASSES)
    stats["confidence_bands"] = {**b, "names": ["guess", "lead", "likely"]}
    html = render_report(table, stats, CLASSES)
    line = re.search(r"How sure a suggestion is, in colour and words: (.*?)</p>", html, re.S).group(1)
    assert "100 % right" not in line and "lower bound" not in line
    assert "No card is called" in line
    for acc, n, lo, hi in zip(b["accuracy"], b["n"], b["lo"], b["hi"]):
        if acc is not None:
            assert f"{100 * acc:.0f} % of {n} held-out probe predictions" in line
            assert f"interval {100 * lo:.0f}–{100 * hi:.0f} %" in line
    # a band with rows below the minimum says so instead of a share
    few = {**b, "cuts": [0.0, 0.4, None], "n": [190, 19, 0], "accuracy": [0.3, None, None], "lo": [0.24, None, None],
           "hi": [0.37, None, None]}
    stats["confidence_bands"] = few
    line = re.search(r"How sure a suggestion is, in colour and words: (.*?)</p>", render_report(table, stats, CLASSES),
                     re.S).group(1)
    assert "not enough rows to measure: 19 probe predictions" in line


def test_a_small_set_says_its_spot_checks_cannot_reach_the_minimum():
    man, preds, _ = small_audit(n=300, seed=2)  # 5 % of 300 rows: 15 spot checks, never 30
    table, stats = core.build_audit(man, preds, CLASSES)
    words = text_of(render_report(table, stats, CLASSES), "progress")
    assert "decide all" not in words
    assert "cannot reach the 30" in words

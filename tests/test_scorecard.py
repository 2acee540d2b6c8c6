"""scorecard.py: figures on hand-made frames (computed by hand), and the bundled reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from fercure.scorecard import KEYS, auroc, render_scorecard, scorecard

REPO = Path(__file__).resolve().parent.parent


def _frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    # id  reference         flagged  label_score    suggested  FER+ majority
    # a   clear error       yes      0.1            happy      happy   → suggestion right
    # b   clear error       yes      0.3            sad        fear    → suggestion wrong
    # c   clear error       no       0.6            -          angry
    # d   clear error       yes      0.2            sad        (none)  → not judged
    # k   clear error       no       NaN            -          sad     → not in the AUROC
    # e   clean             yes      0.4
    # f   clean             yes      0.6   (ties with c)
    # g   clean             no       0.9
    # h   ambiguous         yes      0.05
    # i   (not in the reference: not scored);  j is in the reference only
    audit = pd.DataFrame({
        "source_path": ["x/a.png", "x/b.png", "x/c.png", "x/d.png", "x/k.png", "x/e.png", "x/f.png",
                        "x/g.png", "x/h.png", "x/i.png"],
        "is_label_issue": [True, True, False, True, False, True, True, False, True, True],
        "label_score": [0.1, 0.3, 0.6, 0.2, np.nan, 0.4, 0.6, 0.9, 0.05, 0.0],
        "suggested_label": ["happy", "sad", "angry", "sad", "fear", "sad", "happy", "fear", "sad", "sad"],
        "given_label": ["sad"] * 10,
    })
    reference = pd.DataFrame({
        "path": ["x/a.png", "x/b.png", "x/c.png", "x/d.png", "x/k.png", "x/e.png", "x/f.png", "x/g.png",
                 "x/h.png", "x/j.png"],
        "label": ["sad"] * 10,
        "ferplus_majority": ["happy", "fear", "angry", "", "sad", "sad", "sad", "sad", "", "happy"],
        "ferplus_votes_for_label": [0, 1, 0, 1, 0, 7, 5, 9, 3, 0],
        "clear_error": [1, 1, 1, 1, 1, 0, 0, 0, 0, 1],
        "clean": [0, 0, 0, 0, 0, 1, 1, 1, 0, 0],
    })
    return audit, reference


def test_figures_by_hand():
    audit, reference = _frames()
    card = scorecard(audit, reference, None)
    assert set(card) == set(KEYS)
    assert card["n_scored"] == 9                      # a..h and k; i has no reference row
    assert card["n_known_errors"] == 5 and card["n_clean"] == 3
    assert card["n_flagged"] == 6                     # a b d e f h
    assert card["known_errors_flagged"] == 3          # a b d
    assert card["recall"] == pytest.approx(3 / 5)
    assert card["flagged_with_verdict"] == 5          # a b d e f (h is ambiguous)
    assert card["precision"] == pytest.approx(3 / 5)
    assert card["precision_if_random"] == pytest.approx(5 / 8)
    # 1 − quality: errors a .9 b .7 c .4 d .8 (k has none); clean e .6 f .4 g .1.
    # a, b, d beat all three clean rows (9 pairs); c beats g, ties f (½), loses to e → 10.5 / 12
    assert card["n_auroc"] == 7
    assert card["auroc"] == pytest.approx(10.5 / 12)
    # flagged known errors with a majority: a (right), b (wrong); d has none
    assert (card["suggestions_scored"], card["suggestions_correct"]) == (2, 1)
    assert card["suggestion_accuracy"] == pytest.approx(0.5)
    assert card["model_strength"] is None and card["holdout_accuracy"] is None
    json.dumps(card, allow_nan=False)                 # JSON-ready: no NaN anywhere


def test_verdicts_derived_from_votes_when_columns_are_missing():
    audit, reference = _frames()
    derived = scorecard(audit, reference.drop(columns=["clear_error", "clean"]))
    # votes ≤ 1 → error, ≥ 5 → clean: the same split as the explicit columns here (h has 3 votes)
    assert derived == scorecard(audit, reference)


def test_text_flags_and_nothing_flagged():
    audit, reference = _frames()
    reference = reference.astype({"clear_error": str, "clean": str})
    reference["clear_error"] = reference["clear_error"].map({"1": "True", "0": "False"})
    card = scorecard(audit.assign(is_label_issue=False), reference)
    assert card["n_known_errors"] == 5 and card["n_clean"] == 3
    assert card["n_flagged"] == 0 and card["known_errors_flagged"] == 0 and card["recall"] == 0
    assert card["precision"] is None and card["suggestion_accuracy"] is None
    assert card["auroc"] == pytest.approx(10.5 / 12)  # the ranking does not depend on the flags


def test_model_strength_from_stats():
    audit, reference = _frames()
    stats = {"model_strength": {"verdict": "too_weak", "message": "at chance: do not trust the flags",
                                "holdout_accuracy": 0.16, "chance_accuracy": 0.143, "n_holdout": 50}}
    card = scorecard(audit, reference, stats)
    assert card["model_strength"] == "too_weak"
    assert card["model_strength_message"] == "at chance: do not trust the flags"
    assert card["holdout_accuracy"] == pytest.approx(0.16) and card["chance_accuracy"] == pytest.approx(0.143)
    text = _text(render_scorecard(card))
    assert "too_weak" in text and "16.0%" in text and "at chance" in text
    assert scorecard(audit, reference, {"n_samples": 3})["model_strength"] is None


def test_render_mentions_every_figure():
    audit, reference = _frames()
    text = _text(render_scorecard(scorecard(audit, reference)))
    for piece in ("3 / 5", "60.0%", "62.5%", "0.875", "50.0%", "1 of 2", "n/a"):
        assert piece in text, piece


def test_auroc_edges():
    assert auroc(np.array([True, False]), np.array([1.0, 0.0])) == 1.0
    assert auroc(np.array([True, False]), np.array([0.0, 1.0])) == 0.0
    assert auroc(np.array([True, True, False, False]), np.ones(4)) == 0.5
    assert auroc(np.array([True, True]), np.array([0.1, 0.2])) is None
    assert auroc(np.zeros(0, bool), np.zeros(0)) is None


def test_missing_columns_raise():
    audit, reference = _frames()
    with pytest.raises(ValueError, match="source_path"):
        scorecard(audit.drop(columns=["source_path"]), reference)
    with pytest.raises(ValueError, match="clear_error"):
        scorecard(audit, reference.drop(columns=["clear_error", "clean", "ferplus_votes_for_label"]))


def test_bundled_reference_matches_labels_and_files():
    data = REPO / "sample_data"
    labels = pd.read_csv(data / "labels.csv")
    ref = pd.read_csv(data / "ferplus_reference.csv", keep_default_na=False)
    assert list(ref["path"]) == list(labels["path"]) and list(ref["label"]) == list(labels["label"])
    assert all((data / "images" / p).is_file() for p in labels["path"])
    g, junk = ref["ferplus_votes_for_label"], ref["nf_unknown_votes"]
    assert (ref["clear_error"] == ((g <= 1) & (junk < 5)).astype(int)).all()
    assert (ref["clean"] == ((g >= 5) & (junk < 5)).astype(int)).all()
    assert set(ref["ferplus_majority"]) <= set(labels["label"]) | {""}
    size = sum(f.stat().st_size for f in data.rglob("*") if f.is_file())
    assert size < 5_000_000, f"sample_data/ is {size / 1e6:.1f} MB"
    # the reference scores itself: an audit that flags exactly the known errors is perfect
    audit = pd.DataFrame({"source_path": ref["path"], "is_label_issue": ref["clear_error"] == 1,
                          "label_score": 1.0 - ref["clear_error"], "suggested_label": ref["ferplus_majority"]})
    card = scorecard(audit, ref)
    assert card["recall"] == 1 and card["precision"] == 1 and card["auroc"] == 1
    assert card["n_known_errors"] > 100 and card["n_clean"] > card["n_known_errors"]


def _text(table) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(table)
    return console.export_text()

"""tools/make_sample_data.py: the stratified quotas and the FER+ reference row (pure parts)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parent.parent / "tools" / "make_sample_data.py"
spec = importlib.util.spec_from_file_location("make_sample_data", TOOL)
msd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(msd)


def test_quotas_proportional_with_floors():
    counts = {"a": 600, "b": 300, "c": 100}
    assert msd.quotas(counts, 10, {"a": 0, "b": 0, "c": 0}) == {"a": 6, "b": 3, "c": 1}
    # largest remainder: 7 × (.6, .3, .1) = 4.2, 2.1, 0.7 → c gets the spare one
    assert msd.quotas(counts, 7, {"a": 0, "b": 0, "c": 0}) == {"a": 4, "b": 2, "c": 1}
    # a floor of 3 for c is taken from the largest class
    assert msd.quotas(counts, 10, {"a": 0, "b": 0, "c": 3}) == {"a": 4, "b": 3, "c": 3}


def test_reference_row_protocol():
    votes = dict.fromkeys(msd.VOTE_COLUMNS, "0")
    row = msd.reference_row("sad/x.png", "sad", {**votes, "happiness": "8", "sadness": "1", "NF": "1"})
    assert (row["ferplus_majority"], row["ferplus_votes_for_label"], row["clear_error"], row["clean"]) == ("happy", 1, 1, 0)
    row = msd.reference_row("sad/x.png", "sad", {**votes, "sadness": "5", "neutral": "5"})
    assert (row["ferplus_majority"], row["clear_error"], row["clean"]) == ("", 0, 1)   # a tie: no majority
    row = msd.reference_row("sad/x.png", "sad", {**votes, "contempt": "6", "unknown": "2", "NF": "3"})
    assert (row["ferplus_majority"], row["nf_unknown_votes"], row["clear_error"], row["clean"]) == ("", 5, 0, 0)

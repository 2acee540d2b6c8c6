"""benchmarks/bench_annotators.py on a made-up vote file: the draws, the scores, the model arm."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _bench():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_annotators", BENCH / "bench_annotators.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_draws_split_each_images_votes_without_replacement():
    b = _bench()
    counts = np.array([[10, 0, 0, 0, 0, 0, 0, 0, 0, 0], [3, 3, 2, 0, 0, 0, 0, 0, 1, 1]])
    given, rest = b.draw(counts, 3, seed=0)
    assert given.shape == (2, 3) and rest.shape == (2, 7)
    for i in range(2):
        both = np.concatenate([given[i], rest[i]])
        assert np.bincount(both[both >= 0], minlength=10).tolist() == counts[i].tolist()
    again, _ = b.draw(counts, 3, seed=0)
    assert np.array_equal(given, again)


def test_model_arm_scores_the_consensus_with_out_of_fold_probabilities(tmp_path):
    b = _bench()
    rng = np.random.default_rng(0)
    n = 300
    truth = rng.integers(0, 7, n)
    names = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear"]
    votes = np.zeros((n, 10), dtype=int)
    for i in range(n):
        for _ in range(10):  # 70 % of the votes for the truth
            k = truth[i] if rng.random() < 0.7 else rng.integers(0, 7)
            votes[i, b.VOTE_COLUMNS.index(names[k])] += 1
    paths = [f"images/fer{i:07d}.png" for i in range(n)]
    (tmp_path / "train").mkdir()
    pd.DataFrame({"path": paths, "fer2013_row": range(n), **{c: votes[:, j] for j, c in enumerate(b.VOTE_COLUMNS)}}
                 ).to_csv(tmp_path / "train" / "ferplus_votes.csv", index=False)
    # a strong model on the first 200 rows (class order: the sorted FER2013 names)
    rows = np.arange(200)
    probs = np.full((200, 7), 0.02)
    cls = [b.CLASSES.index(b.FERPLUS_TO_CLASS[names[t]]) for t in truth[rows]]
    probs[np.arange(200), cls] = 0.88
    oof = tmp_path / "oof"
    oof.mkdir()
    np.save(oof / "oof_probs.npy", probs)
    from fercure.workspace import sample_id
    pd.DataFrame({"sample_id": [sample_id(paths[i]) for i in rows]}).to_csv(oof / "answers.csv", index=False)
    out = tmp_path / "res.json"
    assert b.main(["--data", str(tmp_path), "--seeds", "0", "1", "--oof", str(oof), "--out", str(out)]) == 0
    res = json.loads(out.read_text())["ferplus_votes_with_model"]
    s = res["summary"]
    assert s["all_rows"]["majority"]["n"] == n and s["model_rows"]["model"]["n"] == 200
    assert s["model_rows"]["model"]["accuracy"] > s["model_rows"]["majority"]["accuracy"]
    assert res["model_arm"] == "run"

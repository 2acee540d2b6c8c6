"""Consensus from a few annotators (issue 26, part 3), on the FER+ votes of FER2013 train.

FER+ gives ten votes per image. Per image, ``--given`` (3) of its ten votes are drawn (without
replacement, a random order of its votes from ``--seed``) as the annotations a curator would have; the
other seven are the reference: their majority (fercure.annotators.majority_vote, ties by overall votes)
is what the consensus of the three is scored against. Classes: the seven FER2013 classes (FER+ names
mapped); a drawn vote for contempt, unknown or NF is an annotator who gave no class, and images whose
other votes name no class are left out of the scores.

Methods, side by side on the same draws:

* majority       fercure.annotators.majority_vote; its score is the agreement (share of the drawn votes
                 for the consensus);
* dawid_skene    Dawid–Skene EM; FER+ names no annotators, so the three draws are one pooled annotator
                 (a class-confusion matrix learnt over the dataset); score: the posterior of the consensus;
* model          the CROWDLAB-style consensus of the three votes with a model's out-of-fold probabilities
                 (fercure.annotators.model_consensus), on the rows that have them: the 5-fold
                 probabilities a `bench_review_loop.py --keep DIR` run leaves in DIR/oof_probs.npy
                 (``--oof DIR``); the vote-only methods are scored on the same rows beside it.

Figures: accuracy of the consensus against the reference majority (± its binomial standard error), and
AUROC of 1 − score for finding the images whose consensus is wrong, each over ``--seeds`` draws
(mean ± standard deviation over seeds). No training: the vote-only methods take seconds on all 26,892 rows.

    .venv/bin/python benchmarks/bench_annotators.py                          # all rows, vote-only
    .venv/bin/python benchmarks/bench_annotators.py --oof /work/runs/ref_s0  # + the model arm
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import common  # noqa: E402

from fercure.annotators import (Annotations, Consensus, dawid_skene_consensus, majority_consensus,  # noqa: E402
                                majority_vote, model_consensus)
from fercure.metrics import auroc  # noqa: E402
from fercure.workspace import sample_id  # noqa: E402

VOTE_COLUMNS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                "unknown", "NF"]
FERPLUS_TO_CLASS = {"anger": "angry", "disgust": "disgust", "fear": "fear", "happiness": "happy",
                    "sadness": "sad", "surprise": "surprise", "neutral": "neutral"}
CLASSES = sorted(FERPLUS_TO_CLASS.values())  # the order of a run's classes (and of its probabilities)


def vote_categories(votes: pd.DataFrame) -> np.ndarray:
    """(n, 10) vote counts in VOTE_COLUMNS order."""
    return votes[VOTE_COLUMNS].to_numpy(dtype=np.int64)


def draw(counts: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, its votes (one entry per vote, as a category index) in a random order from ``seed``:
    the first ``k`` are given, the rest are the reference. Returns (given (n, k), rest (n, m)), -1 pads."""
    n, _ = counts.shape
    width = int(counts.sum(axis=1).max())
    cats = np.full((n, width), -1, dtype=np.int64)
    for i, row in enumerate(counts):
        v = np.repeat(np.arange(len(row)), row)
        cats[i, :len(v)] = v
    keys = np.random.default_rng(seed).random((n, width))
    keys[cats < 0] = np.inf  # padding last
    order = np.argsort(keys, axis=1, kind="stable")
    shuffled = np.take_along_axis(cats, order, axis=1)
    return shuffled[:, :k], shuffled[:, k:]


def to_class_counts(cats: np.ndarray) -> np.ndarray:
    """Vote categories → (n, 7) counts over CLASSES (other categories and padding dropped)."""
    m = np.full(len(VOTE_COLUMNS), -1)
    for j, name in enumerate(VOTE_COLUMNS):
        if name in FERPLUS_TO_CLASS:
            m[j] = CLASSES.index(FERPLUS_TO_CLASS[name])
    cls = np.where(cats >= 0, m[np.maximum(cats, 0)], -1)
    out = np.zeros((len(cats), len(CLASSES)))
    rows, cols = np.nonzero(cls >= 0)
    np.add.at(out, (rows, cls[rows, cols]), 1.0)
    return out


def annotations(given: np.ndarray) -> Annotations:
    """The drawn votes as annotations of one pooled annotator (FER+ names none)."""
    counts = to_class_counts(given)
    item, label = np.nonzero(counts)
    reps = counts[item, label].astype(np.int64)
    item, label = np.repeat(item, reps), np.repeat(label, reps)
    return Annotations(item, np.zeros_like(item), label, len(given), 1, len(CLASSES))


def score(cons: Consensus, reference: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
    """Accuracy against the reference majority and AUROC of 1 − score for wrong consensus, over
    ``rows`` where both the consensus and the reference exist."""
    ok = rows[(cons.label[rows] >= 0) & (reference[rows] >= 0)]
    wrong = cons.label[ok] != reference[ok]
    acc = 1.0 - float(wrong.mean())
    return {"n": int(len(ok)), "accuracy": acc, "accuracy_se": float(np.sqrt(acc * (1 - acc) / len(ok))),
            "n_wrong": int(wrong.sum()), "auroc_wrong": auroc(wrong, 1.0 - cons.score[ok])}


def load_oof(folder: Path, paths: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """(row positions in ``paths``, (m, 7) probabilities) from a bench_review_loop --keep folder:
    oof_probs.npy is in the order of answers.csv's sample_id column."""
    probs, answers = folder / "oof_probs.npy", folder / "answers.csv"
    if not (probs.exists() and answers.exists()):
        return None
    p = np.load(probs)
    ids = pd.read_csv(answers, dtype=str)["sample_id"].to_numpy()
    if len(ids) != len(p) or p.shape[1] != len(CLASSES):
        raise SystemExit(f"{probs} ({p.shape}) does not match {answers} ({len(ids)} rows) and 7 classes")
    pos = {sample_id(s): i for i, s in enumerate(paths)}
    rows = np.array([pos[s] for s in ids], dtype=np.int64)
    return rows, p


def run(data: Path, k: int, seeds: list[int], oof: Path | None) -> dict[str, Any]:
    votes = pd.read_csv(data / "train" / "ferplus_votes.csv")
    counts10 = vote_categories(votes)
    model = load_oof(oof, votes["path"]) if oof is not None else None
    per_seed: list[dict[str, Any]] = []
    for seed in seeds:
        given, rest = draw(counts10, k, seed)
        reference = majority_vote(to_class_counts(rest))
        ann = annotations(given)
        methods = {"majority": majority_consensus(ann), "dawid_skene": dawid_skene_consensus(ann)}
        everything = np.arange(len(votes))
        out: dict[str, Any] = {"seed": seed, "all_rows": {m: score(c, reference, everything) for m, c in methods.items()}}
        if model is not None:
            rows, p = model
            sub = Annotations(*_subset(ann, rows), n_items=len(rows), n_annotators=1, n_classes=len(CLASSES))
            sub_methods = {"majority": majority_consensus(sub), "dawid_skene": dawid_skene_consensus(sub),
                           "model": model_consensus(sub, p)}
            ref = reference[rows]
            out["model_rows"] = {m: score(c, ref, np.arange(len(rows))) for m, c in sub_methods.items()}
        per_seed.append(out)
    return {"rows": len(votes), "given_votes": k, "seeds": seeds, "per_seed": per_seed,
            "summary": _summary(per_seed), "model_arm": "run" if model is not None else
            f"pending: no oof_probs.npy/answers.csv under {oof}" if oof is not None else "not asked (--oof)"}


def _subset(ann: Annotations, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The annotations of ``rows``, items renumbered 0..len(rows)-1 in that order."""
    new = np.full(ann.n_items, -1)
    new[rows] = np.arange(len(rows))
    keep = new[ann.item] >= 0
    return new[ann.item[keep]], ann.annotator[keep], ann.label[keep]


def _summary(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in ("all_rows", "model_rows"):
        if part not in per_seed[0]:
            continue
        out[part] = {}
        for m in per_seed[0][part]:
            acc = np.array([s[part][m]["accuracy"] for s in per_seed])
            au = np.array([s[part][m]["auroc_wrong"] for s in per_seed])
            out[part][m] = {"n": per_seed[0][part][m]["n"], "accuracy": float(acc.mean()),
                            "accuracy_sd_over_seeds": float(acc.std(ddof=1)) if len(acc) > 1 else None,
                            "accuracy_se": per_seed[0][part][m]["accuracy_se"],
                            "auroc_wrong": float(au.mean()),
                            "auroc_sd_over_seeds": float(au.std(ddof=1)) if len(au) > 1 else None}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "benchmarks" / "fer2013-ferplus",
                    help="the FER2013 + FER+ benchmark folder (train/ferplus_votes.csv)")
    ap.add_argument("--given", type=int, default=3, help="votes per image given as annotations")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="draws of the given votes")
    ap.add_argument("--oof", type=Path, default=None,
                    help="a bench_review_loop.py --keep folder with oof_probs.npy and answers.csv (the model arm)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "annotators.json")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    started_at = common.git_commit()  # the code that runs: later edits during the run do not count
    result = run(args.data, args.given, args.seeds, args.oof)
    result.update(commit=started_at, date=common.today(), seconds=round(time.perf_counter() - t0, 1),
                  command=" ".join(["benchmarks/bench_annotators.py", *(argv if argv is not None else sys.argv[1:])]))
    common.merge_results(args.out, "ferplus_votes_with_model" if result["model_arm"] == "run" else "ferplus_votes", result)
    for part, methods in result["summary"].items():
        for m, r in methods.items():
            sd = r["accuracy_sd_over_seeds"]
            print(f"{part:10s} {m:12s} n={r['n']:6d} accuracy {r['accuracy']:.4f} (± {r['accuracy_se']:.4f} se"
                  + (f", ± {sd:.4f} sd over seeds" if sd is not None else "") + f")  AUROC wrong {r['auroc_wrong']:.4f}"
                  + (f" (± {r['auroc_sd_over_seeds']:.4f})" if r["auroc_sd_over_seeds"] is not None else ""))
    print(f"model arm: {result['model_arm']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

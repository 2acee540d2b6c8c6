#!/usr/bin/env python3
"""Rebuild sample_data/ (what `fercure demo` runs on) from the FER2013 + FER+ benchmark.

Takes a class-stratified random subset of the benchmark's train split (FER2013 'Training' rows),
copies the PNG bytes unchanged and writes:

  sample_data/images/<class>/ferNNNNNNN.png
  sample_data/labels.csv              path,label    the original FER2013 label: fercure's only input
  sample_data/ferplus_reference.csv   the FER+ votes turned into a ground truth, for evaluation only
                                      (the demo's scorecard); never an input to prepare or train

FER2013's own label noise stays in: nothing is planted or filtered. The one exception is that
the 84 images of the earlier sample (12 per class, hand-picked with 2 known errors per class)
are always included and come first in labels.csv, so the first 12 rows of each class are the old
sample (the test suite runs on them) and old references to those files keep meaning. The rest of
each class is drawn at random so that every class keeps its share of the train split.

ferplus_reference.csv columns (protocol of the benchmark's README; g = FER+ votes for the label):
  path, label                 as in labels.csv
  ferplus_majority            the unique plurality of the ten votes when it is one of the 7 classes,
                              else empty (tie, contempt, unknown or not-a-face)
  ferplus_votes_for_label     g
  ferplus_majority_votes      votes of the plurality
  nf_unknown_votes            votes for 'not a face' + 'unknown'
  clear_error                 g <= 1 and nf_unknown_votes < 5: the label is very likely wrong
  clean                       g >= 5 and nf_unknown_votes < 5: the label is very likely right
Rows that are neither are ambiguous and left out of the scorecard's detection metrics.

Usage:  python tools/make_sample_data.py [--source ../shared/benchmarks/fer2013-ferplus/train]
        [--out sample_data] [--n 1800] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
# FER2013 class → FER+ vote column (the benchmark README: anger→angry, happiness→happy, sadness→sad)
CLASS_TO_FERPLUS = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness",
                    "sad": "sadness", "surprise": "surprise", "neutral": "neutral"}
FERPLUS_TO_CLASS = {v: k for k, v in CLASS_TO_FERPLUS.items()}
VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                "unknown", "NF")

# The earlier 84-image sample (FER2013 row numbers, in its labels.csv order): kept, and first.
LEGACY = {
    "angry": (965, 1841, 10215, 28049, 19664, 18122, 5531, 1856, 20741, 22362, 5432, 12876),
    "disgust": (11731, 16580, 21668, 23025, 6488, 12620, 12072, 7837, 8379, 22196, 4737, 4537),
    "fear": (25820, 18279, 20999, 15001, 26333, 17358, 24533, 12255, 27871, 19020, 5196, 14744),
    "happy": (1360, 16611, 16684, 28491, 28649, 12438, 16203, 4104, 28697, 906, 9020, 24703),
    "neutral": (13910, 16796, 23516, 19778, 22627, 23553, 10971, 17549, 5225, 20524, 25667, 8768),
    "sad": (20976, 7864, 20678, 23530, 22237, 19285, 10531, 28086, 1139, 2048, 4294, 22563),
    "surprise": (7211, 18764, 10261, 16997, 18157, 23626, 25539, 128, 18772, 27593, 22145, 7101),
}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict[str, object]], columns: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def quotas(counts: dict[str, int], n: int, floor: dict[str, int]) -> dict[str, int]:
    """n split over the classes in proportion to ``counts`` (largest remainder, ties by name),
    each at least ``floor[c]`` (taken from the largest classes) and at most ``counts[c]``."""
    total = sum(counts.values())
    exact = {c: n * k / total for c, k in counts.items()}
    q = {c: int(v) for c, v in exact.items()}
    for c in sorted(counts, key=lambda c: (-(exact[c] - q[c]), c))[: n - sum(q.values())]:
        q[c] += 1
    for c in counts:
        while q[c] < floor[c]:
            q[c] += 1
            q[max((d for d in counts if q[d] > floor[d]), key=lambda d: (q[d], d))] -= 1
    return {c: min(q[c], counts[c]) for c in counts}


def reference_row(path: str, label: str, votes: dict[str, str]) -> dict[str, object]:
    v = {c: int(votes[c]) for c in VOTE_COLUMNS}
    g = v[CLASS_TO_FERPLUS[label]]
    junk = v["NF"] + v["unknown"]
    top = max(v.values())
    winners = [c for c in VOTE_COLUMNS if v[c] == top]
    majority = FERPLUS_TO_CLASS.get(winners[0], "") if len(winners) == 1 else ""
    return {"path": path, "label": label, "ferplus_majority": majority, "ferplus_votes_for_label": g,
            "ferplus_majority_votes": top, "nf_unknown_votes": junk,
            "clear_error": int(g <= 1 and junk < 5), "clean": int(g >= 5 and junk < 5)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--source", type=Path, default=REPO.parent / "shared" / "benchmarks" / "fer2013-ferplus" / "train",
                    help="the benchmark's train folder: images/, labels.csv, ferplus_votes.csv (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=REPO / "sample_data",
                    help="sample data folder; its images/, labels.csv and ferplus_reference.csv are replaced, "
                         "anything else (wild/) is left alone (default: %(default)s)")
    ap.add_argument("--n", type=int, default=1800, help="number of images (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    args = ap.parse_args(argv)

    src: Path = args.source
    for name in ("labels.csv", "ferplus_votes.csv", "images"):
        if not (src / name).exists():
            ap.error(f"{src / name} not found: pass --source PATH (the benchmark's train folder)")
    labels = read_csv(src / "labels.csv")
    votes = {r["path"]: r for r in read_csv(src / "ferplus_votes.csv")}
    by_class: dict[str, list[str]] = {c: [] for c in CLASSES}
    for r in labels:
        if r["label"] not in by_class:
            ap.error(f"{src}/labels.csv: unexpected label {r['label']!r}")
        by_class[r["label"]].append(r["path"])

    legacy = {c: [f"images/fer{i:07d}.png" for i in rows] for c, rows in LEGACY.items()}
    for c, paths in legacy.items():
        missing = sorted(set(paths) - set(by_class[c]))
        if missing:
            ap.error(f"earlier sample images not in {src} as {c}: {missing[:3]}")
    quota = quotas({c: len(p) for c, p in by_class.items()}, args.n, {c: len(p) for c, p in legacy.items()})

    rng = np.random.default_rng(args.seed)
    chosen: dict[str, list[str]] = {}
    for c in CLASSES:  # fixed order: the draw depends only on the seed and the source
        pool = sorted(set(by_class[c]) - set(legacy[c]))
        extra = rng.choice(len(pool), size=quota[c] - len(legacy[c]), replace=False)
        chosen[c] = legacy[c] + sorted(pool[i] for i in extra)

    out: Path = args.out
    images = out / "images"
    if images.exists():
        shutil.rmtree(images)
    rows, ref = [], []
    for c in CLASSES:
        (images / c).mkdir(parents=True)
        for p in chosen[c]:
            name = Path(p).name
            (images / c / name).write_bytes((src / p).read_bytes())
            rel = f"{c}/{name}"
            rows.append({"path": rel, "label": c})
            ref.append(reference_row(rel, c, votes[p]))
    write_csv(out / "labels.csv", rows, ["path", "label"])
    write_csv(out / "ferplus_reference.csv", ref, list(ref[0]))

    n_err = sum(r["clear_error"] for r in ref)
    n_clean = sum(r["clean"] for r in ref)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {len(rows)} images ({', '.join(f'{c} {len(chosen[c])}' for c in CLASSES)}); "
          f"clear errors {n_err}, clean {n_clean}, ambiguous {len(rows) - n_err - n_clean}; "
          f"{size / 1e6:.2f} MB in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Size and build time of the review report for a large synthetic audit.

N samples (default 30,000) over 7 classes, a share of them given a wrong label (default 20 %), 5 %
without a face, probabilities from a noisy synthetic model; crops are sample_data's FER2013 crops
repeated (``--crop-size`` resizes them, e.g. 112 for aligned crops). The audit is fercure's own
(``build_audit``), so the listed rows, reasons and thumbnails are what a real workspace gets. With
``--embedding`` (default) every row also gets a place on the embedding map (PCA of a synthetic
embedding clustered by true class), 10 nearest neighbours and group cards, as audit-labels --groups adds
them, so the map's points and each card's similar faces are in the figures.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_report_size.py --n 30000 --crop-size 112
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fercure import audit as core
from fercure import embedding_map
from fercure import groups as grouping
from fercure.report import render_report

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def synthetic(n: int, noise: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    given = rng.integers(0, len(CLASSES), n)
    wrong = rng.random(n) < noise
    true = np.where(wrong, rng.integers(0, len(CLASSES), n), given)
    logits = rng.normal(0, 1, (n, len(CLASSES)))
    logits[np.arange(n), true] += 2.5
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    ids = [f"{i:016x}" for i in range(n)]
    man = pd.DataFrame({
        "sample_id": ids, "source_path": [f"train/{CLASSES[g]}/img_{i:06d}.jpg" for i, g in enumerate(given)],
        "label": [CLASSES[g] for g in given], "split": "train",
        "face_status": np.where(rng.random(n) < 0.05, "no_face", "ok"), "reason": "", "face_score": 0.95,
        "sharpness": rng.lognormal(5, 0.5, n), "duplicate_of": "", "store_index": np.arange(n),
        "brightness": rng.normal(120, 30, n), "contrast": rng.normal(50, 12, n),
    })
    preds = pd.DataFrame({"sample_id": ids, "given_label": man["label"]})
    for j, c in enumerate(CLASSES):
        preds[f"mean_p_{c}"] = p[:, j]
    man.attrs["true"] = true
    return man, preds


def with_embedding(table: pd.DataFrame, true: np.ndarray, seed: int) -> grouping.Neighbours:
    """Map coordinates, neighbours and group ids for a synthetic embedding clustered by true class
    (neighbours: 10 rows of the same true class, similarity 0.9 to 0.99)."""
    rng = np.random.default_rng(seed + 1)
    n, k = len(table), 10
    emb = rng.normal(0, 1, (n, 16)) + 3 * np.eye(16)[true % 16]
    table["map_x"], table["map_y"] = embedding_map.project(embedding_map.principal_components(emb)).T
    by_class = [np.flatnonzero(true == c) for c in range(len(CLASSES))]
    index = np.stack([rng.choice(by_class[t], k) for t in true])
    sim = np.sort(rng.uniform(0.9, 0.99, (n, k)), axis=1)[:, ::-1].astype(np.float32)
    nb = grouping.Neighbours(index, sim)
    flagged = table["is_label_issue"].to_numpy(bool)
    order = np.argsort(table["label_score"].fillna(2.0).to_numpy(), kind="stable")
    g = grouping.find_groups(order, flagged, table["given_label"].astype(str).to_numpy(),
                             table["suggested_label"].astype(str).to_numpy(), nb, None, grouping.GroupSettings())
    table["group_id"] = g.ids(table["sample_id"].astype(str).to_numpy())
    return nb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=30000)
    ap.add_argument("--noise", type=float, default=0.2)
    ap.add_argument("--crop-size", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="also write the report here")
    ap.add_argument("--embedding", action=argparse.BooleanOptionalAction, default=True,
                    help="give the audit an embedding map, neighbours and group cards")
    a = ap.parse_args()
    man, preds = synthetic(a.n, a.noise, a.seed)
    files = sorted((REPO / "sample_data" / "images").glob("*/*.png"))
    base = np.stack([np.asarray(Image.open(f).convert("RGB").resize((a.crop_size, a.crop_size), Image.BICUBIC))
                     for f in files])
    crops = base[np.arange(a.n) % len(base)]
    table, stats = core.build_audit(man, preds, CLASSES)
    nb = with_embedding(table, man.attrs["true"], a.seed) if a.embedding else None
    start = time.perf_counter()
    html = render_report(table, stats, CLASSES, crops=crops, run_id="size", manifest=man, neighbours=nb)
    seconds = time.perf_counter() - start
    if a.out:
        a.out.write_text(html, encoding="utf-8")
    data = json.loads(re.search(r'id="fercure-data">(.*?)</script>', html, re.S).group(1))
    print(json.dumps({
        "n": a.n, "crop_size": a.crop_size, "label_issues": int(table["is_label_issue"].sum()),
        "ambiguous": int(table["is_ambiguous_issue"].sum()), "listed": len(data["rows"]["id"]),
        "thumbnails": data["thumbs"]["n"], "listed_with_crop": data["thumbs"]["n_with_crop"],
        "report_mb": round(len(html.encode()) / 2**20, 2), "render_s": round(seconds, 1),
        "map_points": len((data.get("map") or {}).get("x", [])),
        "map_kb": round(len(json.dumps(data.get("map"), separators=(",", ":"))) / 1024, 1),
        "similar_kb": round(len(json.dumps(data["rows"].get("nn"), separators=(",", ":"))) / 1024, 1),
        "group_cards": sum(1 for i, g in enumerate(data["rows"].get("grp", [])) if g == i),
    }, indent=1))


if __name__ == "__main__":
    main()

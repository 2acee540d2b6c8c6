"""Bring-your-own evidence and issues beyond labels, measured on the tables a review-loop run kept
(issue 26 part 1, issue 27 part 2). No training: it reads what ``bench_review_loop.py --keep DIR``
left in DIR and re-audits a copy of its workspace (the kept files are never written).

Read from DIR: ``labels.csv`` (the subset given to fercure), ``ws/manifest.parquet``,
``audit-0.parquet`` (its metadata names the first run; without it the oldest finished run),
``ws/runs/<run>/predictions.parquet`` and ``config.json``, ``oof_probs.npy`` (cleanlab's K-fold
out-of-fold probabilities of the same backbone, rows in ``labels.csv`` order, columns the sorted
classes; the --pred-probs arms are left out until it is there) and ``ws/faces/crops.npy``; the
FER+ votes come from ``--data`` (evaluation only).

Reports, on the FER+ protocol (clear error: the given label got ≤ 1 of 10 votes; clean: ≥ 5; rows
where NF + unknown ≥ 5 left out; ../shared/benchmarks/fer2013-ferplus/README.md):

1. the out-of-fold probabilities as ``--pred-probs`` alone (``--run none``), joined with fercure's
   run (its default rule, and the noise-rate rule), and fercure's run alone: AUROC and AP of
   1 − label_score, macro within-class AUROC, flags' precision / recall, suggestions right (the
   suggested label is the FER+ majority, over flagged clear errors);
2. the outlier score (``fercure.outliers``) against the FER+ ``NF`` (not a face) votes: AUROC for
   NF ≥ 1 and NF + unknown ≥ 5, on the embeddings the kept tables allow: the run's model
   (``model.pt``, its embedding of the crops: the features a user would pass), the crops' pixels
   (grey, 24 × 24, each standardised) and the out-of-fold probabilities;
3. the health summary's per-class estimated share of wrong labels (and its 95 % interval) against the
   true share of clear errors in that class, for each evidence.

    .venv/bin/python benchmarks/bench_issues.py --keep /work/runs/ref_s0
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
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
from bench_label_noise import aligned, detection_metrics, load_split  # noqa: E402


def truth_table(keep: Path, data: Path) -> pd.DataFrame:
    """The kept subset in ``labels.csv`` order with its FER+ truth and its manifest row (the order
    ``oof_probs.npy`` follows)."""
    from fercure.workspace import read_table

    sub = pd.read_csv(keep / "labels.csv", dtype=str, keep_default_na=False)
    votes = load_split(data, "train").drop(columns=["label"])
    sub = sub.merge(votes, on="path", how="left", validate="one_to_one")
    manifest = read_table(keep / "ws" / "manifest.parquet")
    return sub.merge(manifest[["sample_id", "source_path", "store_index"]], left_on="path",
                     right_on="source_path", how="inner", validate="one_to_one")


def first_run(keep: Path) -> str:
    """The run of the loop's first audit (audit-0.parquet's metadata), else the oldest finished run."""
    from fercure.workspace import read_metadata

    if (keep / "audit-0.parquet").exists():
        return read_metadata(keep / "audit-0.parquet")["run_id"]
    done = sorted(p.parent.name for p in (keep / "ws" / "runs").glob("*/predictions.parquet"))
    if not done:
        raise SystemExit(f"{keep / 'ws' / 'runs'} has no finished run yet")
    return done[0]


def scratch_workspace(keep: Path, run_id: str, into: Path) -> Path:
    """A copy of the kept workspace's manifest and first run, to audit without touching the kept files."""
    src, ws = keep / "ws", into / "ws"
    (ws / "runs" / run_id).mkdir(parents=True)
    for name in ("manifest.parquet", "rejects.parquet"):
        if (src / name).exists():
            shutil.copyfile(src / name, ws / name)
    for name in ("predictions.parquet", "config.json", "trusted.parquet"):
        if (src / "runs" / run_id / name).exists():
            shutil.copyfile(src / "runs" / run_id / name, ws / "runs" / run_id / name)
    (ws / "runs" / "LATEST").write_text(run_id + "\n")
    return ws


def label_metrics(truth: pd.DataFrame, audit: pd.DataFrame) -> dict[str, Any]:
    a = aligned(audit, truth["sample_id"])
    score = 1.0 - a["label_score"].to_numpy(dtype=float)
    flagged = a["is_label_issue"].fillna(False).to_numpy(bool)
    out = detection_metrics(truth, score, flagged, a["suggested_label"].to_numpy(dtype=object))
    ev = (truth["positive"] | truth["negative"]).to_numpy() & np.isfinite(score)
    _, out["within_class_auroc_macro"] = common.within_class_auroc(
        truth["positive"].to_numpy()[ev], score[ev], truth["label"].to_numpy(dtype=object)[ev])
    out["evidence"] = {str(k): int(v) for k, v in audit["evidence"].value_counts().items()}
    return out


def health_metrics(truth: pd.DataFrame, stats: dict) -> dict[str, Any]:
    """Each class's estimated share of wrong labels against its true share of clear errors (over
    all its rows) and of rows whose FER+ majority is another class (over rows with a majority)."""
    h = stats["health_summary"]
    rows, covered, errs = {}, 0, []
    for c, d in h["classes"].items():
        m = (truth["label"] == c).to_numpy()
        clear = float(truth["positive"].to_numpy()[m].mean()) if m.any() else float("nan")
        maj = truth["majority"].to_numpy(dtype=object)[m]
        has = pd.notna(maj)
        other = float((maj[has] != c).mean()) if has.any() else float("nan")
        lo, hi = d["label_noise_interval"]
        inside = lo is not None and hi is not None and lo <= clear <= hi
        covered += int(inside)
        if d["label_noise"] is not None:
            errs.append(abs(d["label_noise"] - clear))
        rows[c] = {"n": d["n"], "estimated": d["label_noise"], "interval": [lo, hi], "clear_errors": clear,
                   "majority_disagrees": other, "clear_errors_inside_interval": inside}
    overall_clear = float(truth["positive"].mean())
    return {"per_class": rows, "classes_covered": covered, "n_classes": len(rows),
            "mean_abs_error_vs_clear": float(np.mean(errs)) if errs else None,
            "overall_estimated_wrong": None if h["overall_label_health_score"] is None
            else 1 - h["overall_label_health_score"],
            "overall_interval_wrong": [None if x is None else 1 - x for x in reversed(h["overall_interval"])],
            "overall_clear_errors": overall_clear,
            "underperforming_classes": h["underperforming_classes"], "imbalanced_classes": h["imbalanced_classes"]}


def pixel_embedding(keep: Path, store_index: np.ndarray, side: int = 24) -> np.ndarray:
    """The kept crops as ``pixels``."""
    crops = np.load(keep / "ws" / "faces" / "crops.npy", mmap_mode="r")
    return pixels(np.asarray(crops[store_index]), side)


def pixels(images: np.ndarray, side: int = 24) -> np.ndarray:
    """Grey images pooled to side × side, each standardised (brightness and contrast do not decide)."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 4:
        x = x.mean(axis=3)
    s = x.shape[1] // side
    x = x[:, : s * side, : s * side].reshape(len(x), side, s, side, s).mean(axis=(2, 4)).reshape(len(x), -1)
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.maximum(x.std(axis=1, keepdims=True), 1e-6)


def model_embedding(keep: Path, run_id: str, store_index: np.ndarray | None,
                    images: np.ndarray | None = None) -> np.ndarray | None:
    """The run's first final model's embedding (``model.pt``, eval mode, CPU) of the kept crops at
    ``store_index``, or of ``images``; None when the run kept no model."""
    run = keep / "ws" / "runs" / run_id
    if not (run / "model.pt").exists():
        return None
    import torch

    from fercure.train.config import TrainConfig
    from fercure.train.loop import predict
    from fercure.train.model import build_model

    saved = json.loads((run / "config.json").read_text(encoding="utf-8"))
    config = TrainConfig.from_dict({**saved, "pretrained": None, "device": "cpu"})
    model = build_model(config, len(saved["classes"]))
    model.load_state_dict(torch.load(run / "model.pt", map_location="cpu", weights_only=True))
    crops = images if images is not None else \
        np.asarray(np.load(keep / "ws" / "faces" / "crops.npy", mmap_mode="r")[store_index])
    return predict(model, crops, config, batch_size=256, device=torch.device("cpu"))["embedding"]


def softmax_regression_oof(x: np.ndarray, y: np.ndarray, n_classes: int, folds: int = 5, l2: float = 1e-2,
                           steps: int = 300, lr: float = 0.5, seed: int = 0) -> np.ndarray:
    """Out-of-fold probabilities of a multinomial logistic regression (numpy, full-batch gradient
    descent on standardised features): a weak stand-in for a user's model when the kept run has no
    out-of-fold probabilities yet."""
    rng = np.random.default_rng(seed)
    fold = rng.permutation(len(y)) % folds
    out = np.zeros((len(y), n_classes))
    for f in range(folds):
        tr, te = fold != f, fold == f
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
        a, b = (x[tr] - mu) / sd, (x[te] - mu) / sd
        w = np.zeros((x.shape[1], n_classes))
        c = np.zeros(n_classes)
        onehot = np.eye(n_classes)[y[tr]]
        for _ in range(steps):
            z = a @ w + c
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            g = (p - onehot) / len(a)
            w -= lr * (a.T @ g + l2 * w)
            c -= lr * g.sum(0)
        z = b @ w + c
        p = np.exp(z - z.max(1, keepdims=True))
        out[te] = p / p.sum(1, keepdims=True)
    return out


def outlier_metrics(truth: pd.DataFrame, embeddings: dict[str, np.ndarray], classes: list[str]) -> dict[str, Any]:
    from fercure import outliers

    given = truth["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64)
    nf = truth["NF"].to_numpy(dtype=np.int64)
    junk = nf + truth["unknown"].to_numpy(dtype=np.int64)
    targets = {"NF>=1": nf >= 1, "NF+unknown>=5": junk >= 5, "NF>=5": nf >= 5}
    out: dict[str, Any] = {"n_positive": {k: int(v.sum()) for k, v in targets.items()}, "n_rows": len(truth)}
    for name, emb in embeddings.items():
        r = outliers.outlier_scores(outliers.nearest_neighbours(emb, outliers.DEFAULT_K), given)
        res = {k: (common.auroc(y, -r.score) if 0 < y.sum() < len(y) else None) for k, y in targets.items()}
        res["n_flagged"] = int(r.is_issue.sum())
        res["flagged_with_NF>=1"] = int((r.is_issue & (nf >= 1)).sum())
        out[name] = res
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--keep", type=Path, default=Path("/work/runs/ref_s0"),
                    help="the folder bench_review_loop.py --keep filled")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "benchmarks" / "fer2013-ferplus")
    ap.add_argument("--outliers-full", action=argparse.BooleanOptionalAction, default=False,
                    help="also score the outlier score on every train image (26,892; the run's model embeds them: "
                         "about 10 minutes of one core)")
    ap.add_argument("--proxy-oof", action=argparse.BooleanOptionalAction, default=False,
                    help="without oof_probs.npy, give the --pred-probs arms a weak stand-in: 5-fold softmax "
                         "regression on the crops' pixels (labelled PROXY in the results)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "issues.json",
                    help="results merge into this JSON under the key 'cpu'")
    args = ap.parse_args(argv)

    from fercure.stages.audit import run_audit
    from fercure.workspace import read_metadata, read_table

    t0 = time.perf_counter()
    started_at = common.git_commit()
    run_id = first_run(args.keep)
    truth = truth_table(args.keep, args.data)
    classes = sorted(truth["label"].unique().tolist())
    notes: list[str] = []
    oof = np.load(args.keep / "oof_probs.npy") if (args.keep / "oof_probs.npy").exists() else None
    pix = pixel_embedding(args.keep, truth["store_index"].to_numpy(np.int64))
    oof_source = "cleanlab's 5-fold out-of-fold probabilities of the plain recipe (oof_probs.npy)"
    if oof is None and args.proxy_oof:
        given = truth["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
        oof = softmax_regression_oof(pix, given, len(classes))
        oof_source = "PROXY: 5-fold softmax regression on the crops' pixels (a weak user's model)"
        notes.append(f"{args.keep / 'oof_probs.npy'} is not there (yet): the --pred-probs arms use a proxy, {oof_source}")
    elif oof is None:
        notes.append(f"{args.keep / 'oof_probs.npy'} is not there (yet): the --pred-probs arms are left out")
    elif oof.shape != (len(truth), len(classes)):
        raise SystemExit(f"{args.keep / 'oof_probs.npy'} has shape {oof.shape}, expected {(len(truth), len(classes))}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_issues_"))
    try:
        ws = scratch_workspace(args.keep, run_id, tmp)
        oof_file = tmp / "oof.parquet"
        if oof is not None:
            pd.DataFrame(oof, columns=classes).assign(sample_id=truth["sample_id"].to_numpy()).to_parquet(oof_file)
        feat_file = tmp / "pixels.parquet"
        pd.DataFrame({"sample_id": truth["sample_id"].to_numpy(), "embedding": list(pix)}).to_parquet(feat_file)
        arms = {
            "pred-probs alone": dict(run_id="none", pred_probs=oof_file),
            "pred-probs + pixel features": dict(run_id="none", pred_probs=oof_file, features=feat_file),
            "pred-probs + fercure (default rule)": dict(run_id=run_id, pred_probs=oof_file),
            "pred-probs + fercure (noise_rate rule)": dict(run_id=run_id, pred_probs=oof_file,
                                                           threshold_method="noise_rate"),
            "pred-probs score, fercure's rule": dict(run_id=run_id, pred_probs=oof_file, method="self_confidence"),
            "fercure alone": dict(run_id=run_id),
        }
        arms = {k: v for k, v in arms.items() if oof is not None or "pred_probs" not in v}
        results: dict[str, Any] = {"labels": {}, "health": {}}
        for name, kw in arms.items():
            s = run_audit(ws, write_report=False, **kw)
            audit = read_table(s.audit_path)
            stats = read_metadata(s.audit_path)
            stats = {**stats.get("stats", {}), **stats.get("thresholds", {})}
            results["labels"][name] = {**label_metrics(truth, audit), "rule": stats.get("threshold_method_used"),
                                       "score": stats.get("method"), "seconds": s.seconds}
            results["health"][name] = health_metrics(truth, stats)
        if args.outliers_full:  # every train image: the subset holds few non-faces
            full = load_split(args.data, "train")
            imgs = common.load_images([args.data / "train" / p for p in full["path"]], workers=1)
            full_emb = model_embedding(args.keep, run_id, None, images=imgs)
            results["outliers_full_train"] = outlier_metrics(
                full, {"pixels": pixels(imgs), **({"model": full_emb} if full_emb is not None else {})}, classes)
        emb = model_embedding(args.keep, run_id, truth["store_index"].to_numpy(np.int64))
        if emb is None:
            notes.append(f"run {run_id} kept no model.pt: no model embedding for the outlier score")
        results["outliers"] = outlier_metrics(
            truth, {"pixels": pix, **({"model": emb} if emb is not None else {}),
                    **({"oof_probs": oof} if oof is not None else {})}, classes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    payload = {"keep": str(args.keep), "run_id": run_id, "n_rows": len(truth), "notes": notes,
               "pred_probs_source": oof_source if oof is not None else None,
               "n_clear_errors": int(truth["positive"].sum()), "n_clean": int(truth["negative"].sum()),
               **results, "seconds": time.perf_counter() - t0, "date": common.today(), **started_at}
    common.merge_results(args.out, "cpu", payload)
    print_tables(payload)
    return 0


def _f(x: Any, nd: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


def print_tables(r: dict[str, Any]) -> None:
    print(f"{r['n_rows']} rows, {r['n_clear_errors']} clear errors, {r['n_clean']} clean (run {r['run_id']})")
    for note in r["notes"]:
        print(f"note: {note}")
    print("\n| evidence | AUROC | AP | within-class AUROC | flagged | precision | recall | suggestions right | rule |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, m in r["labels"].items():
        print(f"| {name} | {_f(m['auroc'])} | {_f(m['ap'])} | {_f(m['within_class_auroc_macro'])} | "
              f"{m.get('flagged_all')} | {_f(m.get('precision'))} | {_f(m.get('recall'))} | "
              f"{_f(m.get('suggested_label_accuracy'))} (n={m.get('n_flagged_positive')}) | {m['rule']} |")
    for key, what in (("outliers", "the subset"), ("outliers_full_train", "every train image")):
        o = r.get(key)
        if not o:
            continue
        print(f"\noutlier score vs FER+ votes, {what} (positives: {o['n_positive']}, of {o['n_rows']})")
        for name in ("pixels", "model", "oof_probs"):
            if name not in o:
                continue
            m = o[name]
            print(f"  {name}: AUROC NF>=1 {_f(m['NF>=1'])}, NF+unknown>=5 {_f(m['NF+unknown>=5'])}, "
                  f"NF>=5 {_f(m['NF>=5'])}; flagged {m['n_flagged']} ({m['flagged_with_NF>=1']} with NF>=1)")
    print("\nhealth: estimated share of wrong labels per class vs the true share of clear errors")
    for name, h in r["health"].items():
        cells = ", ".join(f"{c} {_f(d['estimated'], 2)} [{_f(d['interval'][0], 2)}–{_f(d['interval'][1], 2)}] "
                          f"vs {_f(d['clear_errors'], 2)}" for c, d in h["per_class"].items())
        print(f"  {name}: overall {_f(h['overall_estimated_wrong'], 3)} [{_f(h['overall_interval_wrong'][0], 3)}–"
              f"{_f(h['overall_interval_wrong'][1], 3)}] vs {_f(h['overall_clear_errors'], 3)}; "
              f"{h['classes_covered']}/{h['n_classes']} classes inside; mean |error| "
              f"{_f(h['mean_abs_error_vs_clear'], 3)}\n    {cells}")


if __name__ == "__main__":
    raise SystemExit(main())

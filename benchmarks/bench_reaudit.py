"""Re-audit a finished label-noise benchmark run under other audit options, without retraining its
models, and train the downstream model on that export.

bench_label_noise.py audits every chain under every score × threshold rule (``audit_variants``) but
trains its downstream model on the export of the audit defaults in force when it started. When the
benchmark itself then changes the defaults, this script measures the new default's export on the
same fits, the same train subset, the same publictest images and the same downstream seed, and
merges the figure into the same results JSON under ``reaudit``.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_reaudit.py --workspace .bench/ref \\
        --results benchmarks/results/label_noise_cpu_reference.json --chain fercure
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_label_noise as bln  # noqa: E402
import common  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--workspace", type=Path, required=True, help="the --workspace of the benchmark run")
    ap.add_argument("--results", type=Path, required=True, help="its results JSON (settings are read from it)")
    ap.add_argument("--chain", default="fercure", help="which chain's run to re-audit")
    ap.add_argument("--score", default=None, help="label_score signal (default: fercure's current default)")
    ap.add_argument("--threshold", default=None, help="threshold rule (default: fercure's current default)")
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "benchmarks" / "fer2013-ferplus")
    args = ap.parse_args(argv)

    import pandas as pd

    from fercure import audit as core
    from fercure.export import apply_policy
    from fercure.workspace import read_metadata, read_table

    t0 = time.perf_counter()
    doc = json.loads(args.results.read_text())["cpu"]
    cfg = dict(doc["settings"])
    score = args.score or core.DEFAULT_SCORE
    rule = args.threshold or core.DEFAULT_THRESHOLD
    ws = args.workspace / "ws"
    run_id = doc[args.chain]["run_id"]
    pred_path = ws / "runs" / run_id / "predictions.parquet"
    manifest, pred, meta = read_table(ws / "manifest.parquet"), read_table(pred_path), read_metadata(pred_path)
    classes = list(meta["classes"])
    table, stats = core.build_audit(manifest, pred, classes, method=score, threshold_method=rule, run_meta=meta)
    cleaned = apply_policy(table, classes)

    data = args.data.resolve()
    train = bln.load_split(data, "train")
    sub = train.iloc[bln.stratified_subset(train["label"].to_numpy(), cfg["n_train"], seed=0)].reset_index(drop=True)
    truth = sub.merge(manifest[["sample_id", "source_path"]], left_on="path", right_on="source_path", how="left")
    test = bln.load_split(data, "publictest")
    eligible = test[test["majority"].notna() & (test["majority_votes"] >= 5)].reset_index(drop=True)
    ev = eligible.iloc[bln.stratified_subset(eligible["majority"].to_numpy(), cfg["test_limit"], seed=0)]
    index = {c: i for i, c in enumerate(classes)}
    cl = cleaned.set_index("source_path").reindex(truth["path"].to_numpy())
    keep = cl["clean_label"].notna().to_numpy() & cl["clean_label"].isin(classes).to_numpy()
    labels = np.where(keep, cl["clean_label"].map(index).fillna(-1).to_numpy(), 0).astype(np.int64)
    a = bln.aligned(table, truth["sample_id"])
    m = bln.detection_metrics(truth, 1.0 - a["label_score"].to_numpy(float),
                              a["is_label_issue"].fillna(False).to_numpy(bool), a["suggested_label"].to_numpy(dtype=object))

    b = bln.Bench(argparse.Namespace(backbone=cfg["backbone"], out=args.results), cfg, "cpu", args.workspace,
                  bln.LogReporter(t0))
    train_images = common.load_images([data / "train" / p for p in truth["path"]])
    test_images = common.load_images([data / "publictest" / p for p in ev["path"]])
    y_test = ev["majority"].map(index).to_numpy()
    pr = bln.downstream_fit(b, train_images, labels, keep, test_images, classes, seed=0)
    acc = float((pr["probs"].argmax(1) == y_test).mean())
    raw = truth["label"].map(index).to_numpy()
    out = {"chain": args.chain, "run_id": run_id, "score": score, "threshold": rule,
           "detection": m, "actions": {k: int(v) for k, v in pd.Series(cleaned["action"]).value_counts().items()},
           "downstream_accuracy": acc, "n_train": int(keep.sum()), "n_relabelled": int(((labels != raw) & keep).sum()),
           "n_dropped": int((~keep).sum()), "seconds": time.perf_counter() - t0, **common.git_commit(),
           "date": common.today(), "command": [sys.executable, *sys.argv]}
    print(json.dumps(common.to_jsonable(out), indent=1))
    reaudit = dict(doc.get("reaudit") or {})
    reaudit[f"{args.chain}|{score}|{rule}"] = out
    common.merge_results(args.results, "cpu", {**doc, "reaudit": reaudit})
    return 0


if __name__ == "__main__":
    sys.exit(main())

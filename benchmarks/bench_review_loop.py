"""The review loop measured with a simulated reviewer (issue 18, part 4), on FER2013 + FER+ votes.

The reviewer answers from the FER+ votes (evaluation data, never a training input of fercure): the
majority class where it has ≥ 5 of 10 votes (keep when that is the given label, relabel otherwise);
drop where NF + unknown ≥ 5; otherwise keep. Rounds of ``--round-share`` (2.5 %) of the rows, ``--rounds``
(2). Compared in one run, on the same fits:

* fercure_retrain   the report's queue (label issues by score, then ambiguous; reviewed hidden), with
                    ``train --trusted`` (all decisions so far) and a new audit between rounds;
* fercure_queue     the same first queue, no retraining: round r reviews the next cards of it;
* cleanlab          self-confidence ranking (p_oof(given), lowest first) on K-fold out-of-fold
                    probabilities of the same backbone (what cleanlab.rank's self_confidence does);
* random            a random order.

Per round: errors found per 100 cards (an error = the reviewer relabels or drops). At the end, for every
method: the final labels = the reviewer's decisions plus fercure's export default policy on the rest
(the first run's audit; fercure_retrain: the last run's), their accuracy against the FER+ majority over
the whole subset, and a downstream accuracy (a fresh plain model on those labels, scored on publictest
against the FER+ majority).

    .venv/bin/python benchmarks/bench_review_loop.py --scale tiny --device cpu        # proves it runs
    .venv/bin/python benchmarks/bench_review_loop.py --scale reference --device cpu   # ~1.5 h on 2 cores

The fits that do not depend on the loop (cleanlab's folds, the downstream models of the raw labels and
of the arms without retraining) run in a second process beside the loop's own fits (``--side-worker``,
one torch thread each on a CPU), so the run takes the time of the longer chain, not of both.
Results merge into benchmarks/results/review_loop.json under "cpu" or "cuda"; the tables behind them
(audits, the reviewer's answers, the out-of-fold probabilities, the queues) stay in ``--keep``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
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
from bench_label_noise import (VOTE_COLUMNS, FERPLUS_TO_CLASS, LogReporter, downstream_fit,  # noqa: E402
                               load_split, oof_probabilities, stratified_subset)

SCALES = {
    "tiny": {"n_train": 400, "image_size": 48, "epochs": 3, "test_limit": 300, "folds": 3, "batch_size": 64},
    "reference": {"n_train": 4000, "image_size": 48, "epochs": 15, "test_limit": 1500, "folds": 5, "batch_size": 128},
    "full": {"n_train": 0, "image_size": 96, "epochs": 20, "test_limit": 0, "folds": 5, "batch_size": 128},
}
METHODS = ("fercure_retrain", "fercure_queue", "cleanlab", "random")


def reviewer_answers(truth: pd.DataFrame) -> pd.DataFrame:
    """The simulated reviewer's decision per row: action (keep | relabel | drop) and label."""
    v = truth[VOTE_COLUMNS].to_numpy(dtype=np.int64)
    col = {c: i for i, c in enumerate(VOTE_COLUMNS)}
    top, arg = v.max(axis=1), v.argmax(axis=1)
    major = [FERPLUS_TO_CLASS.get(VOTE_COLUMNS[a]) if t >= 5 else None for a, t in zip(arg, top)]
    junk = v[:, col["NF"]] + v[:, col["unknown"]]
    given = truth["label"].to_numpy(dtype=object)
    action, label = [], []
    for g, m, j in zip(given, major, junk):
        if m is not None:
            action.append("keep" if m == g else "relabel")
            label.append(None if m == g else m)
        elif j >= 5:
            action.append("drop")
            label.append(None)
        else:
            action.append("keep")
            label.append(None)
    return pd.DataFrame({"sample_id": truth["sample_id"].to_numpy(), "action": action, "label": label})


def fercure_queue(audit: pd.DataFrame, exclude: set[str]) -> list[str]:
    """The report's queue (``fercure.report.data.review_order``: label issues by score, then ambiguous;
    reviewed rows hidden), then every other scored row by label_score, lowest first."""
    from fercure.report.data import BIT, review_order, review_rows

    bits, listed = review_rows(audit)
    order = review_order(audit, listed, bits)
    ids = audit["sample_id"].astype(str).to_numpy()
    first = [ids[r] for r in order if bits[r] & (BIT["label_issue"] | BIT["ambiguous"]) and not bits[r] & BIT["reviewed"]]
    rest = audit.assign(_s=audit["label_score"].fillna(2.0)).sort_values(["_s"], kind="stable")["sample_id"].astype(str)
    seen = set(first)
    return [s for s in first + [s for s in rest if s not in seen] if s not in exclude]


def queue_orders(audit: pd.DataFrame) -> dict[str, list[str]]:
    """Candidate orders of the first audit's rows (no extra fit): the report's queue; label_score alone;
    class-balanced (round-robin over given classes, each by label_score); expected change of the final
    label (flagged rows first, by the suggestion's confidence, highest first)."""
    reviewed = audit["is_reviewed"].fillna(False).astype(bool) if "is_reviewed" in audit.columns else False
    a = audit[audit["trained"].astype(bool) & ~reviewed].copy()
    a["_s"] = a["label_score"].fillna(2.0)
    by_score = a.sort_values("_s", kind="stable")
    a["_rank"] = by_score.groupby("given_label").cumcount().reindex(a.index)
    balanced = a.sort_values(["_rank", "_s"], kind="stable")
    changes = a["is_label_issue"].astype(bool) & (a["suggested_label"].astype(str) != a["given_label"].astype(str))
    a["_c"] = np.where(changes, -a["suggested_label_confidence"].fillna(0.0), 1.0 + a["_s"])
    change = a.sort_values("_c", kind="stable")
    return {"report_queue": fercure_queue(audit, set()), "score": by_score["sample_id"].astype(str).tolist(),
            "class_balanced": balanced["sample_id"].astype(str).tolist(),
            "expected_change": change["sample_id"].astype(str).tolist()}


def take(queue: list[str], k: int) -> list[str]:
    return queue[:k]


def decisions_file(path: Path, answers: pd.DataFrame, ids: list[str]) -> Path:
    """The reviewed cards as the report saves them (sample_id,action,label)."""
    a = answers.set_index("sample_id").loc[ids].reset_index()
    a.assign(label=a["label"].fillna(""))[["sample_id", "action", "label"]].to_csv(path, index=False)
    return path


def final_labels(audit: pd.DataFrame, classes: list[str], verdict: str | None, answers: pd.DataFrame,
                 reviewed: list[str]) -> pd.Series:
    """sample_id → final label (None = dropped): the reviewer's decisions, the export default policy on the rest."""
    from fercure import decisions as dec
    from fercure import export as core

    cleaned = core.apply_policy(audit, classes, model_verdict=verdict)
    a = answers.set_index("sample_id").loc[reviewed].reset_index()
    table = pd.DataFrame({"sample_id": a["sample_id"], "action": a["action"],
                          "label": a["label"].where(a["action"] == "relabel", None), "row": "simulated"}, dtype=object)
    out = dec.apply(cleaned, dec.Decisions(table=table, file="reviewer"), classes)
    return pd.Series(out["clean_label"].to_numpy(dtype=object), index=out["sample_id"].astype(str).to_numpy())


def label_accuracy(labels: pd.Series, truth: pd.DataFrame) -> dict[str, float]:
    """Share of rows whose FER+ majority (≥ 5 votes, one of the 7 classes) equals the final label; a drop
    counts as wrong there, and as right on a row the reviewer would drop (no class majority)."""
    t = truth.set_index("sample_id")
    lab = labels.reindex(t.index)
    has = t["majority"].notna() & (t["majority_votes"] >= 5)
    right = has & (lab.to_numpy(dtype=object) == t["majority"].to_numpy(dtype=object))
    return {"accuracy": float(right[has].mean()), "n_scored": int(has.sum()), "n_dropped": int(lab.isna().sum())}


class _B:
    """What bench_label_noise's fit helpers read from their Bench."""

    def __init__(self, args: argparse.Namespace, cfg: dict, device: str, reporter: LogReporter) -> None:
        self.args, self.cfg, self.device, self.reporter = args, cfg, device, reporter

    def train_config(self, **kw: Any):
        from fercure.train.config import TrainConfig

        base = dict(backbone=self.args.backbone, image_size=self.cfg["image_size"], epochs=self.cfg["epochs"],
                    batch_size=self.cfg["batch_size"], device=self.device, seed=self.args.seed)
        return TrainConfig(**{**base, **kw})


def _side_init() -> None:
    import torch

    torch.set_num_threads(1)


def _side_oof(args: argparse.Namespace, cfg: dict, device: str, store: np.ndarray, rows: np.ndarray,
              given: np.ndarray, classes: list[str]) -> np.ndarray:
    b = _B(args, cfg, device, LogReporter(time.perf_counter()))
    return oof_probabilities(b, store, rows, given, classes, cfg["folds"])[1]


def _side_downstream(args: argparse.Namespace, cfg: dict, device: str, images: np.ndarray, y: np.ndarray,
                     keep: np.ndarray, test_images: np.ndarray, classes: list[str]) -> np.ndarray:
    b = _B(args, cfg, device, LogReporter(time.perf_counter()))
    return downstream_fit(b, images, y, keep, test_images, classes, seed=0)["probs"]


class _Inline:
    """The side worker's interface run in this process (``--side-worker`` off, or a GPU)."""

    def submit(self, fn, *a):
        f: cf.Future = cf.Future()
        f.set_result(fn(*a))
        return f

    def shutdown(self) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    command = [sys.executable, *sys.argv] if argv is None else ["bench_review_loop.main", *argv]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "benchmarks" / "fer2013-ferplus")
    ap.add_argument("--scale", choices=sorted(SCALES), default="tiny",
                    help="tiny: proves the loop runs (minutes); reference: the CPU reference scale (~1 h, 2 cores)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--round-share", type=float, default=0.025, help="share of the rows reviewed per round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subset-seed", type=int, default=0,
                    help="which stratified subset of FER2013 train (another one tells a gain from noise)")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--n-train", type=int, default=None, help="override the scale's subset size")
    ap.add_argument("--epochs", type=int, default=None, help="override the scale's epochs")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "review_loop.json")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                    help="the arms to run (cleanlab's folds are trained only with the cleanlab arm)")
    ap.add_argument("--raw-downstream", action=argparse.BooleanOptionalAction, default=True,
                    help="train the downstream model of the raw labels too")
    ap.add_argument("--keep", type=Path, default=None,
                    help="folder for the workspace and the tables behind the figures (default: a new temp folder)")
    ap.add_argument("--side-worker", action=argparse.BooleanOptionalAction, default=None,
                    help="run the fits that do not depend on the loop in a second process (default: on a CPU)")
    args = ap.parse_args(argv)

    from fercure.stages.audit import run_audit
    from fercure.stages.prepare import run_prepare
    from fercure.stages.train import run_train
    from fercure.train.loop import resolve_device
    from fercure.workspace import read_table

    cfg = dict(SCALES[args.scale])
    for k in ("n_train", "epochs"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    t0 = time.perf_counter()
    started_at = common.git_commit()  # the code that runs: later commits during a long run do not count
    rep = LogReporter(t0)
    device = str(resolve_device(args.device))
    b = _B(args, cfg, device, rep)
    train = load_split(args.data, "train")
    sub = train.iloc[stratified_subset(train["label"].to_numpy(), cfg["n_train"], seed=args.subset_seed)
                     ].reset_index(drop=True)
    scratch = Path(tempfile.mkdtemp(prefix="review_loop_")) if args.keep is None else args.keep
    scratch.mkdir(parents=True, exist_ok=True)
    side_on = args.side_worker if args.side_worker is not None else device == "cpu"
    if side_on:
        import torch

        torch.set_num_threads(1)
    side = (cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=_side_init)
            if side_on else _Inline())
    ws = scratch / "ws"
    labels_file = scratch / "labels.csv"
    sub[["path", "label"]].to_csv(labels_file, index=False)  # only path,label: the votes never reach fercure
    run_prepare(args.data / "train", ws, labels_file=labels_file, device=device, image_size=cfg["image_size"],
                crop="as-given", reporter=rep)
    manifest = read_table(ws / "manifest.parquet")
    truth = sub.merge(manifest[["sample_id", "source_path", "store_index"]], left_on="path", right_on="source_path",
                      how="inner", validate="one_to_one")
    answers = reviewer_answers(truth)
    is_error = answers.set_index("sample_id")["action"] != "keep"
    k = max(1, int(round(args.round_share * len(truth))))
    rep.log(f"{len(truth)} rows; reviewer: {answers['action'].value_counts().to_dict()}; {k} cards a round")

    config = b.train_config()

    def fit_and_audit(trusted: list[Path]) -> tuple[pd.DataFrame, list[str], str | None]:
        ts = run_train(ws, config.__class__(**{**config.to_dict(), "trusted": [str(p) for p in trusted]}),
                       reporter=rep)
        au = run_audit(ws, run_id=ts.run_id, write_report=False, reporter=rep)
        return read_table(au.audit_path), ts.classes, au.model_verdict

    classes = sorted(truth["label"].unique().tolist())
    cidx = {c: i for i, c in enumerate(classes)}
    given = truth["label"].map(cidx).to_numpy(dtype=np.int64)
    # cleanlab: self-confidence on K-fold out-of-fold probabilities (same backbone, size and epochs)
    store = np.asarray(np.load(ws / "faces" / "crops.npy", mmap_mode="r"))
    methods = tuple(m for m in METHODS if m in args.methods)
    oof_job = (side.submit(_side_oof, args, cfg, device, store, truth["store_index"].to_numpy(np.int64), given,
                           classes) if "cleanlab" in methods else None)
    test = load_split(args.data, "publictest")
    eligible = test[test["majority"].notna() & (test["majority_votes"] >= 5)].reset_index(drop=True)
    ev = eligible.iloc[stratified_subset(eligible["majority"].to_numpy(), cfg["test_limit"], seed=0)]
    y_test = ev["majority"].map(cidx).to_numpy()
    images = common.load_images([args.data / "train" / p for p in truth["path"]])
    test_images = common.load_images([args.data / "publictest" / p for p in ev["path"]])
    downstream_jobs: dict[str, cf.Future] = {}

    def downstream(name: str, lab: pd.Series, here: bool = False) -> None:
        """A fresh plain model on ``lab`` (the side worker's unless ``here``)."""
        lab = lab.reindex(truth["sample_id"].to_numpy())
        keep = lab.notna().to_numpy() & lab.isin(classes).to_numpy()
        y = np.where(keep, lab.map(cidx).fillna(0).to_numpy(), 0).astype(np.int64)
        job = (_Inline() if here else side).submit(_side_downstream, args, cfg, device, images, y, keep,
                                                   test_images, classes)
        downstream_jobs[name] = job

    raw = pd.Series(truth["label"].to_numpy(dtype=object), index=truth["sample_id"].to_numpy())
    if args.raw_downstream:
        downstream("raw", raw)
    audit0, run_classes, verdict0 = fit_and_audit([])
    assert run_classes == classes, (run_classes, classes)
    shutil.copyfile(ws / "audit.parquet", scratch / "audit-0.parquet")  # with fercure's metadata
    answers.rename(columns={"label": "reviewer_label"}).merge(
        truth[["sample_id", "label", "majority", "majority_votes"]], on="sample_id").to_csv(
        scratch / "answers.csv", index=False)  # label: the given one
    reviewed: dict[str, list[list[str]]] = {m: [] for m in methods}
    cl_queue: list[str] = []
    if oof_job is not None:
        oof = oof_job.result()
        np.save(scratch / "oof_probs.npy", oof)
        cl_queue = truth["sample_id"].to_numpy()[np.argsort(oof[np.arange(len(given)), given], kind="stable")].tolist()
    rand_queue = truth["sample_id"].to_numpy()[np.random.default_rng(args.seed).permutation(len(truth))].tolist()
    q0 = fercure_queue(audit0, set())

    # the arms without a retrain review their whole queue's head now; their downstream fits go to the side
    no_retrain = [m for m in ("fercure_queue", "cleanlab", "random") if m in methods]
    for m, q in (("fercure_queue", q0), ("cleanlab", cl_queue), ("random", rand_queue)):
        if m in methods:
            reviewed[m] = [q[r * k:(r + 1) * k] for r in range(args.rounds)]
    finals: dict[str, pd.Series] = {"raw": raw}
    for m in no_retrain:
        finals[m] = final_labels(audit0, classes, verdict0, answers, [s for rnd in reviewed[m] for s in rnd])
        downstream(m, finals[m])
    audit_r, verdict_r = audit0, verdict0
    files: list[Path] = []
    for r in range(args.rounds if "fercure_retrain" in methods else 0):
        done = {s for rnd in reviewed["fercure_retrain"] for s in rnd}
        reviewed["fercure_retrain"].append(take(fercure_queue(audit_r, done), k))
        files.append(decisions_file(scratch / f"decisions-{r + 1}.csv", answers, reviewed["fercure_retrain"][-1]))
        audit_r, _, verdict_r = fit_and_audit(files)  # the loop: every decision so far trains the next run
        shutil.copyfile(ws / "audit.parquet", scratch / f"audit-{r + 1}.parquet")
        rep.log(f"round {r + 1}: " + ", ".join(f"{m} {int(is_error.loc[reviewed[m][r]].sum())}/{k}" for m in methods))
    (scratch / "queues.json").write_text(json.dumps({"reviewed": reviewed, "fercure_queue_0": q0,
                                                     "cleanlab": cl_queue, "random": rand_queue}))

    out: dict[str, Any] = {"n_rows": len(truth), "cards_per_round": k, "rounds": args.rounds,
                           "reviewer": answers["action"].value_counts().to_dict(),
                           "error_share": float(is_error.mean()), "kept_in": str(scratch)}
    out["raw"] = label_accuracy(raw, truth)
    n_cards = k * args.rounds  # the orders compared on the first audit, over as many cards as the loop reviews
    out["queue_orders"] = {name: float(100 * is_error.reindex(q[:n_cards]).fillna(False).mean())
                           for name, q in queue_orders(audit0).items()}
    rep.log(f"errors per 100 cards over the first {n_cards}, by order: {out['queue_orders']}")
    if "fercure_retrain" in methods:
        finals["fercure_retrain"] = final_labels(audit_r, classes, verdict_r, answers,
                                                 [s for rnd in reviewed["fercure_retrain"] for s in rnd])
        downstream("fercure_retrain", finals["fercure_retrain"], here=True)
    for m in methods:
        out[m] = {"errors_per_100_cards": [float(100 * is_error.loc[rnd].mean()) for rnd in reviewed[m]],
                  **label_accuracy(finals[m], truth)}
    pd.DataFrame({m: finals[m].reindex(truth["sample_id"].to_numpy()).to_numpy() for m in finals},
                 index=truth["sample_id"].to_numpy()).rename_axis("sample_id").to_csv(scratch / "final_labels.csv")

    # downstream: a fresh plain model on each method's final labels, scored on publictest (FER+ majority)
    for name, job in downstream_jobs.items():
        acc = float((job.result().argmax(axis=1) == y_test).mean())
        out.setdefault(name, {})["downstream_accuracy"] = acc
        rep.log(f"downstream {name}: {acc:.3f}")
    side.shutdown()

    payload = {"device_name": common.device_name(device), "date": common.today(), **started_at,
               "command": command, "scale": args.scale, "settings": cfg,
               "total_seconds": time.perf_counter() - t0, "results": out}
    common.merge_results(args.out, common.device_kind(device), payload)
    for m in ("raw",) + methods:
        r = out[m]
        print(f"{m:16s} errors/100 cards {r.get('errors_per_100_cards', '-')}  label accuracy "
              f"{r['accuracy']:.3f}  downstream {r.get('downstream_accuracy', float('nan')):.3f}")
    print(f"results merged into {args.out} ({payload['total_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How many spot checks it takes before a reviewer's decisions estimate the share of wrong labels
better than the planted flips do (issue 18, part 2); and how close the report's "expected errors in
the next 100 cards" comes to the count.

Reads the tables ``bench_review_loop.py --keep DIR`` leaves (audit-0.parquet: the first audit;
answers.csv: the simulated reviewer's answer for every row, from the FER+ votes) and replays reviews
on them, no training: the report's queue head (``--queue-cards``) plus ``m`` spot checks drawn at
random among the scored rows, ``--draws`` times each. Per (queue cards, m): the reviewed estimate's
error against the reviewer's own error share over all scored rows (median and 90th percentile of
|error|, how often it beats the planted flips' estimate of the same run, and how often it exists under
``fercure.review_calibration``'s minimum). Then, after reviewing the queue's first 100 / 200 / 300
cards: the errors expected among the next 100 (the last 50 reviewed cards' error rate, and the model's
own sum of 1 − p(given)) against the count.
Last, the queue orders of issue 18, part 3 on every kept audit (the report's queue, label_score alone,
class-balanced, expected change of the final label, the second model's held-out p(given); on the first
audit also cleanlab's and the random order when the kept folder has them): errors per 100 cards over
the first 100, 200 and 400 cards.

    .venv/bin/python benchmarks/bench_review_calibration.py --kept /path/to/keep

Results merge into benchmarks/results/review_calibration.json under "cpu" (no device is used).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import common  # noqa: E402
from bench_review_loop import fercure_queue, queue_orders  # noqa: E402

from fercure import review_calibration as rc  # noqa: E402
from fercure.workspace import read_metadata  # noqa: E402


def replay(is_error: pd.Series, queue: list[str], n_queue: int, n_spot: int, rng: np.random.Generator,
           ignore_minimums: bool = False) -> float | None:
    """The reviewed estimate after the queue's first ``n_queue`` cards and ``n_spot`` spot checks drawn
    at random among all scored rows (as the report draws them); with ``ignore_minimums`` whatever
    their number."""
    spot = list(rng.choice(is_error.index, size=n_spot, replace=False)) if n_spot else []
    head = [s for s in queue[:n_queue] if s not in set(spot)]
    if not head and not spot:
        return None
    ids = head + spot
    is_spot = np.r_[np.zeros(len(head), bool), np.ones(len(spot), bool)]
    err = is_error.loc[ids].to_numpy()
    if ignore_minimums and n_spot:
        rest = len(is_error) - len(head)
        return (err[~is_spot].sum() + err[is_spot].mean() * rest) / len(is_error)
    return rc.error_share(err, is_spot, len(is_error))["share"]


def held_out_order(audit: pd.DataFrame, predictions: Path | None) -> list[str]:
    """The label issues by the second model's held-out p(given), lowest first, then the other scored
    rows by label score; reviewed rows left out. An audit written before it carried retrain_p_given
    takes it from its run's predictions (``predictions``)."""
    a = audit[audit["trained"].astype(bool)].copy()
    if "is_reviewed" in a.columns:
        a = a[~a["is_reviewed"].fillna(False).astype(bool)]
    if "retrain_p_given" not in a.columns and predictions is not None:
        held = pd.read_parquet(predictions, columns=["sample_id", "retrain_p_given"])
        a = a.merge(held, on="sample_id", how="left")
    key = a["retrain_p_given"].to_numpy(dtype=float) if "retrain_p_given" in a.columns else np.full(len(a), np.nan)
    flagged = a["is_label_issue"].astype(bool).to_numpy()
    key = np.where(flagged, np.nan_to_num(key, nan=2.0), 3.0 + a["label_score"].fillna(2.0).to_numpy())
    return a["sample_id"].astype(str).to_numpy()[np.argsort(key, kind="stable")].tolist()


def main(argv: list[str] | None = None) -> int:
    command = [sys.executable, *sys.argv] if argv is None else ["bench_review_calibration.main", *argv]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--kept", type=Path, required=True, help="a bench_review_loop.py --keep folder")
    ap.add_argument("--queue-cards", type=int, nargs="+", default=[0, 100, 200])
    ap.add_argument("--spot-checks", type=int, nargs="+", default=[10, 20, 30, 40, 60, 100])
    ap.add_argument("--draws", type=int, default=300)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "review_calibration.json")
    args = ap.parse_args(argv)

    audit = pd.read_parquet(args.kept / "audit-0.parquet")
    answers = pd.read_csv(args.kept / "answers.csv", dtype={"sample_id": str})
    scored = audit[np.isfinite(audit["label_score"].to_numpy(dtype=float))]
    rank = pd.Series(rc.ranks_of(scored["label_score"].to_numpy(dtype=float)), index=scored["sample_id"].astype(str))
    is_error = (answers.set_index("sample_id")["action"] != "keep").reindex(rank.index).fillna(False).astype(bool)
    truth = float(is_error.mean())
    # the planted flips' estimate of the same run: the first run's self-check
    first_run = sorted(p for p in (args.kept / "ws" / "runs").iterdir() if (p / "predictions.parquet").exists())[0]
    planted = (read_metadata(first_run / "predictions.parquet").get("self_check") or {}).get("estimated_error_share")
    queue = [s for s in fercure_queue(audit, set()) if s in rank.index]
    listed = audit["is_label_issue"].astype(bool) | audit["is_ambiguous_issue"].astype(bool)
    queue = queue[:int(listed.sum())]  # the report's queue: the listed label issues and ambiguous rows
    rng = np.random.default_rng(0)
    grid = []
    for q in args.queue_cards:
        for m in args.spot_checks:
            if m == 0:
                continue
            est = [replay(is_error, queue, q, m, rng) for _ in range(args.draws)]
            raw = np.array([replay(is_error, queue, q, m, rng, ignore_minimums=True) for _ in range(args.draws)])
            have = np.array([e for e in est if e is not None], float)
            row = {"queue_cards": q, "spot_checks": m, "estimate_exists": float(len(have) / args.draws),
                   "abs_error_median": float(np.median(np.abs(raw - truth))),
                   "abs_error_p90": float(np.quantile(np.abs(raw - truth), 0.9)),
                   "estimate_median": float(np.median(raw)),
                   "beats_planted": (float(np.mean(np.abs(raw - truth) < abs(planted - truth)))
                                     if planted is not None else None)}
            grid.append(row)
            print(f"queue {q:4d} + spot {m:4d}: exists {row['estimate_exists']:.2f}  median est "
                  f"{row['estimate_median']:.3f}  |err| median {row['abs_error_median']:.3f} p90 "
                  f"{row['abs_error_p90']:.3f}  beats planted {row['beats_planted']}")
    # expected errors among the next 100 queue cards, after reviewing the first n (and the spot checks)
    nxt = []
    # the report's figure without reviewed cards: 1 − p(given) of the audit distribution
    given = audit["given_label"].astype(str).to_numpy()
    pg = np.array([audit[f"p_{g}"].iat[i] if f"p_{g}" in audit.columns else np.nan for i, g in enumerate(given)])
    one_minus = pd.Series(1.0 - np.where(np.isfinite(pg), pg, 0.5), index=audit["sample_id"].astype(str).to_numpy())
    for n in (100, 200, 300):
        head, after = queue[:n], queue[n:n + 100]
        recent = rc.recent_queue_rate(rank.loc[head].to_numpy(), is_error.loc[head].to_numpy(), np.zeros(len(head), bool))
        exp = recent["rate"] * len(after)
        nxt.append({"reviewed_queue_cards": n, "actual": int(is_error.loc[after].sum()), "expected_recent_cards": exp,
                    "expected_one_minus_p_given": float(one_minus.loc[after].sum())})
        print(f"after {n} queue cards: next 100 hold {nxt[-1]['actual']} errors; the last {recent['n']} reviewed "
              f"say {exp:.1f}; 1 - p(given) says {nxt[-1]['expected_one_minus_p_given']:.1f}")
    # queue orders (issue 18, part 3): errors per 100 cards over the first n cards, on every kept audit
    # (the first, and the retrained rounds' with the reviewed rows left out)
    errs = answers.set_index("sample_id")["action"] != "keep"
    order_rows: dict[str, dict] = {}
    runs = sorted(p for p in (args.kept / "ws" / "runs").iterdir() if (p / "predictions.parquet").exists())
    for i, path in enumerate(sorted(args.kept.glob("audit-*.parquet"))):
        a = pd.read_parquet(path)
        orders = queue_orders(a)
        orders["held_out"] = held_out_order(a, runs[i] / "predictions.parquet" if i < len(runs) else None)
        kept_queues = args.kept / "queues.json"
        if path.name == "audit-0.parquet" and kept_queues.exists():
            q = json.loads(kept_queues.read_text())
            orders.update(cleanlab=q["cleanlab"], random=q["random"])
        order_rows[path.stem] = {name: {str(n): float(100 * errs.reindex(o[:n]).fillna(False).mean())
                                        for n in (100, 200, 400)} for name, o in orders.items()}
        for name, row in order_rows[path.stem].items():
            print(f"{path.stem} order {name:16s} errors per 100 cards over the first 100 / 200 / 400: "
                  + " / ".join(f"{v:.1f}" for v in row.values()))
    payload = {"device_name": "none (replays saved tables)", "date": common.today(), **common.git_commit(),
               "command": command, "kept": str(args.kept), "n_scored": int(len(rank)), "true_error_share": truth,
               "planted_estimate": planted, "draws": args.draws,
               "minimums": {"MIN_SPOT_CHECKS": rc.MIN_SPOT_CHECKS, "SPOT_CARDS": rc.SPOT_CARDS,
                            "RECENT_CARDS": rc.RECENT_CARDS},
               "grid": grid, "next_100": nxt, "queue_orders": order_rows}
    common.merge_results(args.out, "cpu", payload)
    print(f"true share {truth:.3f}; planted estimate {planted}; merged into {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

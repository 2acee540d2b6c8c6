"""How many reviewed cards it takes before a reviewer's decisions estimate the share of wrong labels
better than the planted flips do (issue 18, part 2); and how close the report's "expected errors in
the next 100 cards" comes to the count.

Reads the tables ``bench_review_loop.py --keep DIR`` leaves (audit-0.parquet: the first audit;
answers.csv: the simulated reviewer's answer for every row, from the FER+ votes) and replays reviews
on them, no training: the report's queue head (``--queue-cards``) plus ``m`` random spot checks from
the ranks past the queue, ``--draws`` times each. Per (queue cards, m): the reviewed estimate's error
against the reviewer's own error share over all scored rows (median and 90th percentile of |error|,
and how often the estimate exists under ``fercure.review_calibration``'s minimums), beside the planted
flips' estimate of the same run. Then, after reviewing the queue's first 100 / 200 cards: the expected
errors among the next 100 (reviewed-rank curve, and the model's own sum of 1 − p(given)) vs the count.

    .venv/bin/python benchmarks/bench_review_calibration.py --kept /path/to/keep

Results merge into benchmarks/results/review_calibration.json under "cpu" (no device is used).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import common  # noqa: E402
from bench_review_loop import fercure_queue  # noqa: E402

from fercure import review_calibration as rc  # noqa: E402
from fercure.workspace import read_metadata  # noqa: E402


def replay(rank: pd.Series, is_error: pd.Series, queue: list[str], unlisted: pd.Index, n_queue: int, n_spot: int,
           rng: np.random.Generator, ignore_minimums: bool = False) -> float | None:
    """The reviewed estimate after the queue's first ``n_queue`` cards and ``n_spot`` random rows
    among the ranks past the queue; with ``ignore_minimums`` whatever the coverage."""
    head = queue[:n_queue]
    spot = list(rng.choice(unlisted, size=min(n_spot, len(unlisted)), replace=False)) if n_spot else []
    ids = head + spot
    r, e = rank.loc[ids].to_numpy(), is_error.loc[ids].to_numpy()
    if not len(ids):
        return None
    if ignore_minimums:
        return rc.share_over_ranks(r, e)[0]
    return rc.error_share(r, e)["share"]


def main(argv: list[str] | None = None) -> int:
    command = [sys.executable, *sys.argv] if argv is None else ["bench_review_calibration.main", *argv]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--kept", type=Path, required=True, help="a bench_review_loop.py --keep folder")
    ap.add_argument("--queue-cards", type=int, nargs="+", default=[0, 100, 200])
    ap.add_argument("--spot-checks", type=int, nargs="+", default=[0, 10, 20, 30, 50, 100, 200])
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
    # the report draws its spot checks from the scored rows it does not list for review
    listed = audit["is_label_issue"].astype(bool) | audit["is_ambiguous_issue"].astype(bool)
    unlisted = rank.index[~rank.index.isin(audit.loc[listed, "sample_id"].astype(str))]
    rng = np.random.default_rng(0)
    grid = []
    for q in args.queue_cards:
        for m in args.spot_checks:
            if q + m == 0:
                continue
            est = [replay(rank, is_error, queue, unlisted, q, m, rng) for _ in range(args.draws)]
            raw = np.array([replay(rank, is_error, queue, unlisted, q, m, rng, ignore_minimums=True) for _ in range(args.draws)])
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
    # expected errors among the next 100 queue cards, after reviewing the first n
    nxt = []
    # the report's figure without a reviewed curve: 1 − p(given) of the audit distribution
    given = audit["given_label"].astype(str).to_numpy()
    pg = np.array([audit[f"p_{g}"].iat[i] if f"p_{g}" in audit.columns else np.nan for i, g in enumerate(given)])
    one_minus = pd.Series(1.0 - np.where(np.isfinite(pg), pg, 0.5), index=audit["sample_id"].astype(str).to_numpy())
    for n in (100, 200, 300):
        head, after = queue[:n], queue[n:n + 100]
        rng2 = np.random.default_rng(1)
        spot = list(rng2.choice(unlisted, size=min(2 * rc.MIN_SPOT_CHECKS, len(unlisted)), replace=False))
        ids = head + [s for s in spot if s not in head]
        exp = rc.expected_errors(rank.loc[ids].to_numpy(), is_error.loc[ids].to_numpy(), rank.loc[after].to_numpy())
        nxt.append({"reviewed_queue_cards": n, "spot_checks": 2 * rc.MIN_SPOT_CHECKS, "actual": int(is_error.loc[after].sum()),
                    "expected_reviewed_curve": exp, "expected_one_minus_p_given": float(one_minus.loc[after].sum())})
        print(f"after {n} queue cards: next 100 hold {nxt[-1]['actual']} errors; reviewed curve says "
              f"{exp:.1f}; 1 - p(given) says {nxt[-1]['expected_one_minus_p_given']:.1f}")
    payload = {"device_name": "none (replays saved tables)", "date": common.today(), **common.git_commit(),
               "command": command, "kept": str(args.kept), "n_scored": int(len(rank)), "true_error_share": truth,
               "planted_estimate": planted, "draws": args.draws,
               "minimums": {"MIN_REVIEWED": rc.MIN_REVIEWED, "MIN_SPOT_CHECKS": rc.MIN_SPOT_CHECKS,
                            "SPOT_CHECK_FROM": rc.SPOT_CHECK_FROM, "MAX_RANK_GAP": rc.MAX_RANK_GAP},
               "grid": grid, "next_100": nxt}
    common.merge_results(args.out, "cpu", payload)
    print(f"true share {truth:.3f}; planted estimate {planted}; merged into {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

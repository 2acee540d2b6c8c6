"""Do a reviewer's decisions re-rank the rest of the queue better than the hand-made order (issue 28,
parts 1 and 3)? A replay on kept tables, no training.

Reads the tables ``bench_review_loop.py --keep DIR`` leaves (audit-0.parquet: the first audit;
answers.csv: the simulated reviewer's answer for every row, from the FER+ votes; ws/runs/<first run>/
predictions.parquet and dynamics.parquet). A simulated reviewer decides ``--batch`` (50) cards at a time
in queue order, plus the report's ``SPOT_CARDS`` (40) random spot checks with the first batch, for
``--rounds`` rounds. Orders replayed:

* today        the hand-made order (``fercure.rerank.hand_order_key``: the flagged rows by the second
               model's held-out p(given), then the rest by label score); static;
* class_spread the hand-made order dealt round-robin over the given classes (each class's next card in
               turn); static;
* unambiguous  likely wrong and unambiguous first (active label cleaning: cross-entropy to the given
               label minus entropy, flagged rows first); static;
* rerank ...   ``fercure.rerank``'s model refitted on every decision so far after each batch, for each
               setting of the grid (``--l2``, ``--weighting``, flagged rows first or not), forced (used
               whenever it can be fitted) and as the audit decides (``auto``: from ``--min-reviewed``
               rows, unless the hand-made order's AUROC beats its cross-validated one by more than
               ``rerank.AUROC_MARGIN``).

Per round: errors among the cards decided (per 100), errors among the next 100 cards of the order,
AUROC and macro within-class AUROC on the rows nobody reviewed yet. With ``--spot-draws N``, today's order
and the re-ranker's defaults again with N other random draws of the spot checks (the spread). Then each
signal alone on every scored row (AUROC, AP, macro within-class AUROC against the reviewer's verdict).

    .venv/bin/python benchmarks/bench_rerank.py --kept /path/to/keep

Results merge into benchmarks/results/rerank.json under "cpu" (no device is used).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import common  # noqa: E402

from fercure import dynamics_signals as ds  # noqa: E402
from fercure import rerank  # noqa: E402
from fercure import review_calibration as rc  # noqa: E402
from fercure.workspace import read_metadata  # noqa: E402

# each signal alone: column, and +1 where high = likely wrong (−1 where low = likely wrong)
SIGNALS = {"label_score": -1, "retrain_p_given": -1, "p_given": -1, "aum": -1, "logit_margin": -1,
           "el2n_early": 1, "learned_epoch": 1, "knn_agreement": -1, "uncertainty_entropy": 1,
           "suggested_label_confidence": 1, "unambiguous_wrong": 1}


def first_run(kept: Path) -> Path | None:
    runs = kept / "ws" / "runs"
    found = sorted(p for p in runs.iterdir() if (p / "predictions.parquet").exists()) if runs.is_dir() else []
    return found[0] if found else None


def with_signals(audit: pd.DataFrame, run: Path | None, classes: list[str]) -> pd.DataFrame:
    """The audit with the columns an audit of today's code has (the dynamics signals, neighbour
    agreement, the held-out p(given)) taken from its run where it lacks them, and p(given) and the
    active-label-cleaning priority for the per-signal table."""
    a = audit.copy()
    if run is not None:
        preds = pd.read_parquet(run / "predictions.parquet")
        for col in ("knn_agreement", "retrain_p_given"):
            if col not in a.columns and col in preds.columns:
                a = a.merge(preds[["sample_id", col]], on="sample_id", how="left")
        if (run / "dynamics.parquet").exists() and "logit_margin" not in a.columns:
            sig = ds.from_dynamics(pd.read_parquet(run / "dynamics.parquet")).frame()
            a = a.merge(sig, on="sample_id", how="left")
    given = a["given_label"].astype(str).to_numpy()
    probs = np.stack([a[f"p_{c}"].to_numpy(dtype=float) for c in classes], axis=1)
    gi = np.array([classes.index(g) if g in classes else -1 for g in given])
    ok = gi >= 0
    a["p_given"] = np.where(ok, probs[np.arange(len(a)), np.clip(gi, 0, None)], np.nan)
    pr = np.full(len(a), np.nan)
    pr[ok] = ds.unambiguous_wrong(probs[ok], gi[ok])
    a["unambiguous_wrong"] = pr
    return a


def within(y: np.ndarray, score: np.ndarray, groups: np.ndarray) -> float | None:
    return common.within_class_auroc(y, score, groups)[1]


def replay(audit: pd.DataFrame, classes: list[str], err: np.ndarray, order: str, rounds: int, batch: int,
           opts: dict, min_reviewed: int | None = None, spot_seed: int | None = None,
           relabel: np.ndarray | None = None) -> list[dict]:
    """Rounds of ``batch`` cards in the order's queue (spot checks with the first), each round's order
    recomputed from the decisions so far. ``min_reviewed`` None: the re-ranker orders the queue
    whenever it can be fitted (forced); a number: as the audit decides (``auto``). ``spot_seed``: the
    spot checks drawn at random with this seed (as many as the report's) instead of the report's draw."""
    ids = audit["sample_id"].astype(str).to_numpy()
    score = audit["label_score"].to_numpy(dtype=float)
    scored = np.isfinite(score)
    groups = audit["given_label"].astype(str).to_numpy()
    rule_flags = audit["is_label_issue"].fillna(False).astype(bool).to_numpy()
    spot_pos = rc.spot_checks(ids, score, np.zeros(len(ids), bool))
    if spot_seed is not None:
        spot_pos = np.sort(np.random.default_rng(spot_seed).choice(np.flatnonzero(scored), len(spot_pos), replace=False))
    reviewed, spot = np.zeros(len(ids), bool), np.zeros(len(ids), bool)
    rows = []
    for r in range(rounds + 1):
        t = audit.assign(is_reviewed=reviewed, is_label_issue=rule_flags & ~reviewed)
        verdicts = pd.DataFrame({"sample_id": ids[reviewed], "action": np.where(err[reviewed], "drop", "keep"),
                                 "spot_check": spot[reviewed]})
        ff = opts.get("flagged_first", rerank.FLAGGED_FIRST)
        fit_opts = {k: v for k, v in opts.items() if k in ("l2", "weighting", "margin")}
        if order == "rerank":
            fit_opts["min_reviewed"] = 0 if min_reviewed is None else min_reviewed
            q = rerank.order_queue(t, classes, verdicts, "auto", rule_flags=rule_flags, flagged_first=ff, **fit_opts)
            if min_reviewed is None and q.fit is not None and q.fit.probability is not None and not q.fit.used:
                key = rerank.queue_key(q.fit.probability, rule_flags & ~reviewed, ff)
                q = rerank.QueueOrder(rerank.review_rank(key, scored & ~reviewed), "rerank", "forced", q.fit)
        else:
            q = rerank.order_queue(t, classes, verdicts, "unambiguous" if order == "unambiguous" else "score",
                                   rule_flags=rule_flags, flagged_first=ff)
            if order == "class_spread":
                q = rerank.QueueOrder(class_spread(q.rank, groups), "class_spread", "score", None)
        rank = q.rank
        open_rows = scored & ~reviewed
        by_rank = np.argsort(np.where(np.isfinite(rank), rank, np.inf), kind="stable")[: int(open_rows.sum())]
        row = {"reviewed": int(reviewed.sum()), "queue_cards": int((reviewed & ~spot).sum()),
               "order_used": q.order,
               "next_100_errors": int(err[by_rank[:100]].sum()),
               "auroc_unreviewed": float(common.auroc(err[open_rows], -rank[open_rows])),
               "within_auroc_unreviewed": within(err[open_rows], -rank[open_rows], groups[open_rows])}
        if relabel is not None:  # labels the reviewer has corrected so far (each one a row made right)
            row["relabels_so_far"] = int(relabel[reviewed].sum())
        if q.fit is not None:
            row.update(cv_auroc=q.fit.cv_auroc, hand_auroc=q.fit.hand_auroc)
        if r == rounds:
            rows.append(row)
            break
        take = by_rank[:batch]
        row["batch_errors_per_100"] = float(100 * err[take].mean()) if len(take) else None
        rows.append(row)
        reviewed[take] = True
        if r == 0:
            new = spot_pos[~reviewed[spot_pos]]
            reviewed[new], spot[new] = True, True
    return rows


def fixed_order_replay(audit: pd.DataFrame, err: np.ndarray, relabel: np.ndarray, key: np.ndarray,
                       rounds: int, batch: int) -> list[dict]:
    """The same rounds in an order no decision changes (``key`` per audit row, lowest first: cleanlab's
    self-confidence, or a random order). No spot checks: neither tool has them."""
    scored = np.isfinite(audit["label_score"].to_numpy(dtype=float)) & np.isfinite(key)
    order = np.flatnonzero(scored)[np.argsort(key[scored], kind="stable")]
    rows = []
    for r in range(rounds + 1):
        done = order[: r * batch]
        row = {"reviewed": len(done), "queue_cards": len(done), "relabels_so_far": int(relabel[done].sum())}
        if r < rounds:
            row["batch_errors_per_100"] = float(100 * err[order[r * batch:(r + 1) * batch]].mean())
        rows.append(row)
    return rows


def class_spread(rank: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``rank`` dealt round-robin over ``groups``: each group's k-th card before any group's (k+1)-th,
    ties by the rank itself. NaN stays NaN."""
    s = pd.Series(rank)
    k = s.groupby(groups).rank(method="first")
    order = np.lexsort((rank, k.to_numpy()))
    out = np.full(len(rank), np.nan)
    ok = order[np.isfinite(rank[order])]
    out[ok] = np.arange(1, len(ok) + 1)
    return out


def signal_table(a: pd.DataFrame, err: np.ndarray) -> dict:
    """Each signal alone on the scored rows where it has a value."""
    out = {}
    groups = a["given_label"].astype(str).to_numpy()
    scored = np.isfinite(a["label_score"].to_numpy(dtype=float))
    for name, sign in SIGNALS.items():
        if name not in a.columns:
            continue
        s = sign * pd.to_numeric(a[name], errors="coerce").to_numpy(dtype=float)
        ok = scored & np.isfinite(s)
        if ok.sum() < 10 or len(np.unique(err[ok])) < 2:
            continue
        out[name] = {"n": int(ok.sum()), "auroc": common.auroc(err[ok], s[ok]),
                     "ap": common.average_precision(err[ok], s[ok]), "within_auroc": within(err[ok], s[ok], groups[ok])}
    return out


def main(argv: list[str] | None = None) -> int:
    command = [sys.executable, *sys.argv] if argv is None else ["bench_rerank.main", *argv]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--kept", type=Path, required=True, help="a bench_review_loop.py --keep folder")
    ap.add_argument("--rounds", type=int, default=6, help="batches of cards decided")
    ap.add_argument("--batch", type=int, default=50, help="cards per batch")
    ap.add_argument("--l2", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    ap.add_argument("--weighting", nargs="+", choices=rerank.WEIGHTINGS, default=list(rerank.WEIGHTINGS))
    ap.add_argument("--flagged-first", nargs="+", choices=("yes", "no"), default=["yes", "no"])
    ap.add_argument("--min-reviewed", type=int, default=rerank.MIN_REVIEWED,
                    help="the auto rows' minimum of reviewed rows before the re-ranker may order the queue")
    ap.add_argument("--spot-draws", type=int, default=0,
                    help="also replay today's order and the re-ranker's defaults with this many other random "
                         "draws of the spot checks (the spread of the figures)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "rerank.json")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    audit = pd.read_parquet(args.kept / "audit-0.parquet")
    classes = [str(c) for c in (read_metadata(args.kept / "audit-0.parquet").get("classes") or [])]
    answers = pd.read_csv(args.kept / "answers.csv", dtype={"sample_id": str})
    run = first_run(args.kept)
    a = with_signals(audit, run, classes)
    err = (answers.set_index("sample_id")["action"] != "keep").reindex(a["sample_id"].astype(str)) \
        .fillna(False).astype(bool).to_numpy()
    scored = np.isfinite(a["label_score"].to_numpy(dtype=float))
    print(f"{int(scored.sum())} scored rows, {int(err[scored].sum())} wrong by the reviewer "
          f"({100 * err[scored].mean():.1f} %); run {run.name if run else 'none'}")

    # A relabel makes a row right against the FER+ majority where there is one (ties have none).
    fixes = (answers["action"] == "relabel")
    if "majority" in answers:
        fixes &= answers["reviewer_label"].astype(str) == answers["majority"].astype(str)
    if "majority_votes" in answers:
        fixes &= answers["majority_votes"] >= 5
    relabel = fixes.set_axis(answers["sample_id"]).reindex(a["sample_id"].astype(str)).fillna(False) \
        .astype(bool).to_numpy()
    results: dict[str, list[dict]] = {}
    results["today"] = replay(a, classes, err, "today", args.rounds, args.batch, {}, relabel=relabel)
    results["class_spread"] = replay(a, classes, err, "class_spread", args.rounds, args.batch, {}, relabel=relabel)
    results["unambiguous"] = replay(a, classes, err, "unambiguous", args.rounds, args.batch, {}, relabel=relabel)
    results["rerank defaults auto"] = replay(a, classes, err, "rerank", args.rounds, args.batch, {},
                                             min_reviewed=rerank.MIN_REVIEWED, relabel=relabel)
    # The kept out-of-fold probabilities and bench_review_loop's random order follow answers.csv's rows.
    pos = pd.Series(np.arange(len(answers)), index=answers["sample_id"]).reindex(a["sample_id"].astype(str))
    at = pos.to_numpy(dtype=float)
    oof = args.kept / "oof_probs.npy"
    if oof.exists():  # cleanlab's self-confidence: the given label's out-of-fold probability
        p = np.load(oof)
        cidx = {c: i for i, c in enumerate(classes)}
        g = answers["label"].astype(str).map(cidx).to_numpy()
        self_conf = p[np.arange(len(p)), g]
        key = np.where(np.isfinite(at), self_conf[np.nan_to_num(at).astype(int)], np.inf)
        results["cleanlab self-confidence"] = fixed_order_replay(a, err, relabel, key, args.rounds, args.batch)
    rand = np.empty(len(answers))
    rand[np.random.default_rng(0).permutation(len(answers))] = np.arange(len(answers))
    key = np.where(np.isfinite(at), rand[np.nan_to_num(at).astype(int)], np.inf)
    results["random"] = fixed_order_replay(a, err, relabel, key, args.rounds, args.batch)
    if "majority" in answers:  # label accuracy against the FER+ majority, raw and after each round
        has = answers["majority"].notna()  # bench_review_loop's rule: a majority of at least 5 of 10 votes
        if "majority_votes" in answers:
            has &= answers["majority_votes"] >= 5
        n_major = int(has.sum())
        raw_acc = float((answers.loc[has, "label"].astype(str) == answers.loc[has, "majority"].astype(str)).mean())
        for rows in results.values():
            for row in rows:
                if "relabels_so_far" in row:
                    row["label_accuracy"] = raw_acc + row["relabels_so_far"] / n_major
        print(f"label accuracy against the FER+ majority ({n_major} rows with one): raw {raw_acc:.4f}; after "
              f"{4 * args.batch} queue cards: " + ", ".join(
                  f"{name} {rows[4]['label_accuracy']:.4f}" for name, rows in results.items()
                  if len(rows) > 4 and "label_accuracy" in rows[4]))
    for ff in args.flagged_first:
        for w in args.weighting:
            for l2 in args.l2:
                opts = {"l2": l2, "weighting": w, "flagged_first": ff == "yes"}
                tag = f"rerank l2={l2:g} {w} flagged_first={ff}"
                results[tag] = replay(a, classes, err, "rerank", args.rounds, args.batch, opts)
                results[tag + " auto"] = replay(a, classes, err, "rerank", args.rounds, args.batch, opts,
                                                min_reviewed=args.min_reviewed)
    for name, rows in results.items():
        if "next_100_errors" not in rows[0]:  # a fixed order: its figures are in the JSON
            print(f"{name:48s} errors per 100 cards by batch: "
                  + " ".join(f"{r['batch_errors_per_100']:.0f}" for r in rows[:-1]))
            continue
        print(f"{name:48s} next-100 errors after 0/{args.batch}/... cards: "
              + " ".join(f"{r['next_100_errors']:3d}" for r in rows)
              + " | AUROC open: " + " ".join(f"{r['auroc_unreviewed']:.3f}" for r in rows)
              + " | within: " + " ".join(f"{(r['within_auroc_unreviewed'] or float('nan')):.3f}" for r in rows)
              + " | used: " + "".join(r["order_used"][0] for r in rows))
    spread = {}
    for s in range(args.spot_draws):
        for name, order, kw in (("today", "today", {}),
                                ("rerank defaults auto", "rerank", {"min_reviewed": rerank.MIN_REVIEWED})):
            rows = replay(a, classes, err, order, args.rounds, args.batch, {}, spot_seed=s + 1, **kw)
            spread.setdefault(name, []).append(rows)
    for name, draws in spread.items():
        per = np.array([[100 * np.mean([r["batch_errors_per_100"] for r in rows[:k]]) / 100 for k in (4, 8)]
                        for rows in draws])
        print(f"{name:24s} over {len(draws)} spot-check draws: errors per 100 cards over the first "
              f"{4 * args.batch} / {8 * args.batch}: mean {per[:, 0].mean():.1f} / {per[:, 1].mean():.1f}, "
              f"range {per[:, 0].min():.1f}–{per[:, 0].max():.1f} / {per[:, 1].min():.1f}–{per[:, 1].max():.1f}")
    signals = signal_table(a, err)
    for name, s in signals.items():
        print(f"signal {name:28s} n {s['n']:5d}  AUROC {s['auroc']:.3f}  AP {s['ap']:.3f}  "
              f"within-class AUROC {(s['within_auroc'] or float('nan')):.3f}")
    payload = {"device_name": "none (replays saved tables)", "date": common.today(), **common.git_commit(),
               "command": command, "kept": str(args.kept), "n_scored": int(scored.sum()),
               "error_share": float(err[scored].mean()), "batch": args.batch, "rounds": args.rounds,
               "spot_checks": rc.SPOT_CARDS, "min_reviewed": args.min_reviewed, "orders": results,
               "spot_draws": spread, "signals": signals, "seconds": time.perf_counter() - t0}
    common.merge_results(args.out, "cpu", payload)
    print(f"merged into {args.out} ({payload['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

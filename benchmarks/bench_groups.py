"""Group cards replayed on a kept review-loop run (issue 28, part 2): rows fixed per card and group
precision for a few grouping settings, against the queue without groups.

Reads what ``bench_review_loop.py --keep DIR`` leaves: ``DIR/audit-0.parquet`` (the first audit),
``DIR/answers.csv`` (the simulated reviewer's answer for every row, from the FER+ votes) and the
first run under ``DIR/ws/runs/`` (its ``embedding.parquet``; a run written before fercure kept one
is embedded again from its ``model.pt`` and the crop store, one eval pass on the CPU). No training.

The queue is the report's (label issues by the queue key, then ambiguous). With groups, a group
card stands at its first member's place and its other members leave the queue. The reviewer decides
a group card by its first member's answer, then either

* ``take out``: takes out every member whose own answer differs and decides it as a card of its own
  (one card more each), so every member ends with its own answer; or
* ``blind``: applies the one decision to every member: a member whose answer differs is not fixed
  (a wrong label kept), or broken (a right label changed) when the decision changes it.

Per setting, over the first ``--cards`` cards: rows fixed per card (an error is a row the reviewer
relabels or drops), rows broken per card (blind), and the group precision: the share of group
members (first members included) whose label really is wrong, beside the precision of the plain
queue over as many cards. Prints a table and writes ``--out`` (JSON).

    .venv/bin/python benchmarks/bench_groups.py --keep /work/runs/ref_s0
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

TIGHTNESS = (0.1, 0.25, 0.5, 0.75, 0.9)


def first_run(keep: Path, audit_meta: dict) -> Path:
    """The run the first audit came from."""
    run = keep / "ws" / "runs" / str(audit_meta.get("run_id"))
    if not run.is_dir():
        raise SystemExit(f"{run} does not exist: {keep} is not a kept review-loop folder (bench_review_loop.py --keep)")
    return run


def neighbours_of(run: Path, keep: Path, sample_ids: np.ndarray, k: int):
    """The run's nearest neighbours aligned with ``sample_ids``: from its embedding.parquet, else by
    embedding its crops again with its model.pt (a run written before 0.5)."""
    from fercure.stages.audit import read_embedding

    if (run / "embedding.parquet").exists():
        _, nb = read_embedding(run, sample_ids)
        return nb, "embedding.parquet"
    import torch

    from fercure.groups import Neighbours
    from fercure.train.config import TrainConfig
    from fercure.train.loop import predict
    from fercure.train.model import build_model
    from fercure.train.signals import knn_votes_and_neighbours
    from fercure.workspace import read_table

    cfg = json.loads((run / "config.json").read_text())
    config = TrainConfig.from_dict({**cfg.get("config", cfg), "device": "cpu"}) if "config" in cfg else \
        TrainConfig.from_dict({k2: v for k2, v in cfg.items() if k2 in TrainConfig.__dataclass_fields__} | {"device": "cpu"})
    classes = cfg.get("classes")
    model = build_model(config, len(classes))
    state = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    missing = model.load_state_dict(state, strict=False).missing_keys
    if missing:  # the embedding must be the run's own, not a fresh network's
        raise SystemExit(f"{run / 'model.pt'} does not fit the run's config ({len(missing)} weights missing, e.g. "
                         f"{missing[0]}); cannot embed the crops again.")
    manifest = read_table(keep / "ws" / "manifest.parquet").set_index("sample_id")
    store_rows = manifest["store_index"].reindex(sample_ids).to_numpy()
    placed = np.isfinite(store_rows.astype(float)) & (store_rows.astype(float) >= 0)
    crops = np.load(keep / "ws" / "faces" / "crops.npy", mmap_mode="r")
    emb = predict(model, crops, config, index=store_rows[placed].astype(np.int64), flip=True)["embedding"]
    _, nb = knn_votes_and_neighbours(emb, [np.zeros(len(emb), np.int64)], 1, k=k, device="cpu")
    rows = np.full(len(sample_ids), -1, dtype=np.int64)
    rows[placed] = np.arange(int(placed.sum()))
    return Neighbours(nb.index, nb.similarity).take(rows, len(sample_ids)), "model.pt (embedded again)"


def replay(audit: pd.DataFrame, answers: pd.DataFrame, queue: list[str], groups, n_cards: int) -> dict:
    """Walk the queue as the page shows it (group cards at their first member's place)."""
    ids = audit["sample_id"].astype(str).to_numpy()
    gid = pd.Series(groups.ids(ids) if groups is not None else np.full(len(ids), "", dtype=object), index=ids)
    ans = answers.set_index("sample_id")
    action = ans["action"].astype(str)
    label = ans["reviewer_label"].fillna("").astype(str)
    wrong = action != "keep"
    answer = action + ":" + label
    members: dict[str, list[str]] = {}
    for s, g in gid.items():
        if g:
            members.setdefault(g, []).append(s)
    cards = fixed = broken = fixed_blind = 0
    in_groups = wrong_in_groups = taken_out = n_group_cards = 0
    seen: set[str] = set()
    for s in queue:
        if cards >= n_cards:
            break
        if s in seen:
            continue
        g = gid.get(s, "")
        group = [s] + [m for m in members.get(g, []) if m != s] if g else [s]
        seen.update(group)
        cards += 1
        if len(group) == 1:
            fixed += int(wrong.get(s, False))
            fixed_blind += int(wrong.get(s, False))
            continue
        n_group_cards += 1
        decision = answer.get(s, "keep:")
        for m in group:
            in_groups += 1
            wrong_in_groups += int(wrong.get(m, False))
            same = answer.get(m, "keep:") == decision
            fixed += int(wrong.get(m, False))
            if not same and m != s:
                taken_out += 1
            # blind: the one decision lands on every member
            fixed_blind += int(wrong.get(m, False) and same)
            broken += int(not same and not decision.startswith("keep") and not wrong.get(m, False))
    cards_take_out = cards + taken_out
    return {"cards": cards, "group_cards": n_group_cards, "rows_in_groups": in_groups,
            "group_precision": wrong_in_groups / in_groups if in_groups else None,
            "take_out": {"cards": cards_take_out, "rows_fixed": fixed,
                         "rows_fixed_per_card": fixed / cards_take_out if cards_take_out else None},
            "blind": {"cards": cards, "rows_fixed": fixed_blind, "rows_broken": broken,
                      "rows_fixed_per_card": fixed_blind / cards if cards else None,
                      "rows_broken_per_card": broken / cards if cards else None}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--keep", type=Path, default=Path("/work/runs/ref_s0"),
                    help="a folder kept by bench_review_loop.py --keep (audit-0.parquet, answers.csv, ws/)")
    ap.add_argument("--cards", type=int, nargs="+", default=[100, 200], help="queue depths to report")
    ap.add_argument("--tightness", type=float, nargs="+", default=list(TIGHTNESS),
                    help="grouping settings tried (fercure.groups.GroupSettings.tightness)")
    ap.add_argument("--max-size", type=int, default=6)
    ap.add_argument("--k", type=int, default=10, help="neighbours searched when the run kept none")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "groups.json")
    args = ap.parse_args(argv)

    import common
    from bench_review_loop import fercure_queue

    from fercure import groups as grouping
    from fercure.stages.audit import group_candidates, queue_positions
    from fercure.workspace import read_metadata, read_table

    audit_path = args.keep / "audit-0.parquet"
    if not audit_path.exists() or not (args.keep / "answers.csv").exists():
        raise SystemExit(f"{args.keep} has no audit-0.parquet and answers.csv: run bench_review_loop.py --keep "
                         f"{args.keep} first.")
    audit = read_table(audit_path)
    meta = read_metadata(audit_path)
    answers = pd.read_csv(args.keep / "answers.csv", dtype={"sample_id": str})
    ids = audit["sample_id"].astype(str).to_numpy()
    neighbours, source = neighbours_of(first_run(args.keep, meta), args.keep, ids, args.k)
    queue = fercure_queue(audit, set())

    flagged = group_candidates(audit)  # as audit-labels picks them (spot checks left out)
    order = queue_positions(audit, flagged)  # as audit-labels orders the leaders
    pos = pd.Series(np.arange(len(ids)), index=ids)
    dup = pos.reindex(audit["duplicate_of"].fillna("").astype(str).to_numpy()).fillna(-1).to_numpy(np.int64)
    given = audit["given_label"].astype(str).to_numpy()
    sugg = audit["suggested_label"].astype(str).to_numpy()

    out = {"command": [sys.executable, *sys.argv] if argv is None else ["bench_groups.main", *argv],
           "date": common.today(), **common.git_commit(), "kept_audit_run": meta.get("run_id"),
           "kept_audit_fercure_version": meta.get("fercure_version"),
           "keep": str(args.keep), "neighbours_from": source, "n_rows": len(ids), "n_flagged": int(flagged.sum()),
           "error_share": float((answers["action"] != "keep").mean()), "settings": {}}
    for n in args.cards:
        out.setdefault("no_groups", {})[str(n)] = replay(audit, answers, queue, None, n)
    for same in (True, False):
        for t in args.tightness:
            s = grouping.GroupSettings(tightness=t, max_size=args.max_size, same_suggestion=same)
            g = grouping.find_groups(order, flagged, given, sugg, neighbours, dup, s)
            name = f"tightness {t:g}, {'same suggestion' if same else 'any suggestion'}"
            out["settings"][name] = {"min_similarity": g.min_similarity, "n_groups": g.n_groups,
                                     "n_grouped": int((g.group >= 0).sum()),
                                     **{str(n): replay(audit, answers, queue, g, n) for n in args.cards}}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"{out['n_rows']} rows, {out['n_flagged']} flagged, error share {out['error_share']:.3f}; "
          f"neighbours from {source}")
    for n in args.cards:
        base = out["no_groups"][str(n)]
        print(f"\nfirst {n} cards: no groups: {base['take_out']['rows_fixed_per_card']:.3f} rows fixed per card "
              f"(precision {base['take_out']['rows_fixed'] / base['cards']:.3f})")
        print(f"{'setting':42s} {'groups':>6s} {'in grp':>6s} {'prec':>6s} {'fixed/card':>10s} {'cards':>6s} "
              f"{'blind fixed/card':>16s} {'broken/card':>11s}")
        for name, r in out["settings"].items():
            x = r[str(n)]
            prec = "–" if x["group_precision"] is None else f"{x['group_precision']:.3f}"
            print(f"{name:42s} {x['group_cards']:6d} {x['rows_in_groups']:6d} {prec:>6s} "
                  f"{x['take_out']['rows_fixed_per_card']:10.3f} {x['take_out']['cards']:6d} "
                  f"{x['blind']['rows_fixed_per_card']:16.3f} {x['blind']['rows_broken_per_card']:11.3f}")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Do the words the audit prints match the evidence (issue 28, part 4)? Re-audits a finished run in
memory (nothing is written into the workspace) and scores what the page would print against the
FER+ votes: the verdict and the ranking's interval, each confidence band's agreement with the given
labels (what the page prints, with its interval) against how often a flagged row's suggestion in that
band is the FER+ majority, the next 100 cards' expected wrong labels against the clear errors among the
first 100 flagged cards, and the flag rates of the run's trained, probe and planted rows (clear errors,
clean rows).

    .venv/bin/python benchmarks/bench_evidence_words.py --workspace W \\
        --votes /path/to/fer2013-ferplus/train/ferplus_votes.csv

Results merge into benchmarks/results/evidence_words.json under "cpu" (no device is used).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from fercure import audit as core  # noqa: E402
from fercure.report import data as rd  # noqa: E402
from fercure.workspace import Workspace, read_metadata, read_table  # noqa: E402

FERPLUS = {"angry": "anger", "happy": "happiness", "sad": "sadness"}  # FER2013 name → FER+ column
FER_CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear"]


def truth(table: pd.DataFrame, votes: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per audit row: clear error (given label ≤ 1 of 10 votes), clean (≥ 5), the FER+ majority
    (None without votes); NF + unknown ≥ 5 is neither (the benchmark's protocol)."""
    v = votes.assign(key=votes["path"].str.split("/").str[-1]).set_index("key")
    vc = v.reindex(table["source_path"].str.split("/").str[-1].to_numpy())
    cnt = vc[FER_CLASSES].to_numpy(float)
    back = {b: a for a, b in FERPLUS.items()}
    has = np.isfinite(cnt).all(axis=1)
    maj = np.array([back.get(FER_CLASSES[i], FER_CLASSES[i]) for i in np.argmax(np.nan_to_num(cnt, nan=-1), 1)],
                   dtype=object)
    maj[~has] = None
    g = np.array([vc[FERPLUS.get(lab, lab)].to_numpy()[i] if FERPLUS.get(lab, lab) in vc.columns else np.nan
                  for i, lab in enumerate(table["given_label"])], float)
    nfu = (vc["NF"] + vc["unknown"]).to_numpy(float)
    return (g <= 1) & (nfu < 5), (g >= 5) & (nfu < 5), maj


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--workspace", required=True, type=Path)
    ap.add_argument("--votes", required=True, type=Path, help="ferplus_votes.csv of the images the run trained")
    ap.add_argument("--run", default=None, help="run id (default: the latest)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "evidence_words.json")
    args = ap.parse_args(argv)

    ws = Workspace(args.workspace)
    run = args.run or ws.latest_run()
    pp = ws.run_dir(run) / "predictions.parquet"
    pred, man = read_table(pp), read_table(ws.manifest)
    classes = json.loads((ws.run_dir(run) / "config.json").read_text(encoding="utf-8"))["classes"]
    table, stats = core.build_audit(man, pred, classes, run_meta=read_metadata(pp))
    pos, neg, maj = truth(table, pd.read_csv(args.votes))

    ms, b = stats["model_strength"], stats["confidence_bands"]
    flagged = table["is_label_issue"].to_numpy(bool)
    band = core.band_of(table["suggested_label_confidence"].to_numpy(float), b.get("cuts") or [0.0])
    sugg = table["suggested_label"].to_numpy(object)
    bands = []
    for i, name in enumerate(b.get("names") or []):
        m = flagged & (band == i) & pd.notna(maj)
        bands.append({"band": name, "printed": b["cuts"][i] is not None if b.get("cuts") else False,
                      "probe_n": (b.get("n") or [None] * 3)[i], "probe_agreement": (b.get("accuracy") or [None] * 3)[i],
                      "probe_lo": (b.get("lo") or [None] * 3)[i], "probe_hi": (b.get("hi") or [None] * 3)[i],
                      "flagged_rows": int(m.sum()), "ferplus_accuracy": float((sugg[m] == maj[m]).mean()) if m.any() else None})

    bits, listed = rd.review_rows(table)
    order = rd.review_order(table, listed, bits)
    progress = rd.review_progress(table, classes, order, bits, stats["calibration"])
    first = order[(bits[order] & rd.BIT["label_issue"]) > 0][: rd.NEXT_CARDS]
    grp = np.where(pred.set_index("sample_id")["probe"].reindex(table["sample_id"]).fillna(False).to_numpy(bool), "probe",
                   np.where(pred.set_index("sample_id")["planted"].reindex(table["sample_id"]).fillna(False)
                            .to_numpy(bool), "planted", "trained"))
    groups = {g: {"flagged": float(flagged[grp == g].mean()), "clear_errors": int((pos & (grp == g)).sum()),
                  "flagged_clear_errors": float(flagged[pos & (grp == g)].mean()),
                  "clean": int((neg & (grp == g)).sum()), "flagged_clean": float(flagged[neg & (grp == g)].mean())}
              for g in ("trained", "probe", "planted")}
    payload = {"workspace": str(args.workspace), "run": run, "commit": common.git_commit(), "date": common.today(),
               "verdict": ms["verdict"], "message": ms["message"], "ranking": ms["ranking"],
               "bands": bands,
               "expected_next_100": {k: progress[k] for k in ("expected_errors_next", "expected_lo", "expected_hi",
                                                              "expected_from", "next_cards")},
               "first_100_flagged": {"clear_errors": int(pos[first].sum()), "clean": int(neg[first].sum()),
                                     "no_verdict": int((~pos[first] & ~neg[first]).sum())},
               "groups": groups}
    print(json.dumps(common.to_jsonable(payload), indent=1))
    common.merge_results(args.out, "cpu", payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

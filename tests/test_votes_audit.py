"""The audit of a workspace with several annotators per image: agreement, disagreement flags, annotator quality, votes on the card."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd

from conftest import make_small_workspace
from fercure import schema
from fercure.stages.audit import run_audit
from fercure.stages.train import run_train
from fercure.train.config import TrainConfig
from fercure.workspace import read_metadata, read_table, write_table

CLASSES = ["happy", "neutral", "sad"]


def test_audit_scores_agreement_flags_disagreement_and_ranks_the_spammer(tmp_path):
    ws, _ = make_small_workspace(tmp_path / "ws", 45, 24, CLASSES)
    m = read_table(ws.manifest)
    rng = np.random.default_rng(0)
    rows = []
    for i, (sid, path, label) in enumerate(zip(m["sample_id"], m["source_path"], m["label"])):
        y = CLASSES.index(label)
        b = (y + 1) % 3 if i < 4 else y  # the first four images: a, b and the spammer all differ
        spam = (y + 2) % 3 if i < 4 else int(rng.integers(0, 3))
        rows += [(sid, path, "a", CLASSES[y], 1.0, 2), (sid, path, "b", CLASSES[b], 1.0, 2),
                 (sid, path, "spammer", CLASSES[spam], 1.0, 2)]
    write_table(pd.DataFrame(rows, columns=["sample_id", "source_path", "annotator", "label", "votes", "row"]),
                ws.annotations, {"classes": CLASSES}, table=schema.ANNOTATIONS)
    run_train(ws, TrainConfig(backbone="test_resnet", image_size=24, epochs=2, batch_size=16, device="cpu",
                              holdout=0.0, plant_rate=0.0, retrain=False, knn=0))
    summary = run_audit(ws)
    audit = read_table(ws.audit)
    assert audit["n_votes"].tolist() == [3.0] * 45
    assert np.allclose(audit["annotator_agreement"].to_numpy()[:4], 1 / 3)
    assert audit["is_disagreement_issue"].tolist() == [True] * 4 + [False] * 41
    assert all("annotators disagree" in r for r in audit["reason"][:4])
    assert audit["votes"].iloc[0] == f"{CLASSES[0]} 1 · {CLASSES[1]} 1 · {CLASSES[2]} 1"
    assert audit["consensus_label"].notna().all() and audit["consensus_score"].between(0, 1).all()
    per = read_metadata(ws.audit)["stats"]["annotators"]["per_annotator"]
    assert per[0]["annotator"] == "spammer" and per[0]["votes"] == 45
    assert per[0]["agreement_with_consensus"] < 0.6 < min(r["agreement_with_consensus"] for r in per[1:])
    assert summary.annotators["annotators_disagree"] == 4 and summary.annotators["lowest_quality"].startswith("spammer")
    # the card data carries the votes
    html = ws.report.read_text(encoding="utf-8")
    payload = json.loads(re.search(r'<script type="application/json" id="fercure-data">(.*?)</script>', html,
                                   re.S).group(1))
    listed = dict(zip(payload["rows"]["id"], payload["rows"]["votes"]))
    by_id = audit.set_index("sample_id")["votes"]
    assert listed and all(v == by_id[i] for i, v in listed.items())
    assert all(v.count(" · ") <= 2 and v for v in listed.values())

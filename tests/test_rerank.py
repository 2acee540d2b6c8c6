"""Decisions re-rank the queue (issue 28, part 1) and the signals from a run's own records (part 3).

The math on hand-checkable examples; the re-ranker on a toy set whose errors in one class the hand-made
score ranks low; the audit with decisions made after the run; and `audit-labels --trusted` on a real
(tiny) run, which must not train anything."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import make_small_workspace
from fercure import audit as core
from fercure import dynamics_signals as ds
from fercure import rerank
from fercure.cli import app
from fercure.metrics import auroc
from fercure.workspace import read_metadata, read_table

from test_report import small_audit

CLASSES2 = ["happy", "sad"]


# ---------------------------------------------------------------------------------------------
# part 3: each signal's math


def test_logit_margin_is_the_log_ratio_of_the_given_and_the_strongest_other_class():
    # epoch 0: p 0.5, best other 0.25 → log 2; epoch 1: p 0.2, best other 0.6 → log(1/3)
    p = np.array([[0.5], [0.2]])
    margin = np.array([[0.25], [-0.4]])
    assert ds.logit_margin(p, margin)[0] == pytest.approx((math.log(2) + math.log(1 / 3)) / 2)


def test_el2n_averages_the_early_epochs_only():
    p = np.array([[0.6, 1.0], [0.6, 1.0], [0.0, 0.0]])
    margin = np.array([[0.3, 1.0], [0.3, 1.0], [-1.0, -1.0]])  # best other 0.3 (then 0; the late epoch 1)
    assert ds.el2n(p, margin, early=2) == pytest.approx([0.5, 0.0])  # √(0.4² + 0.3²); a sure right label
    assert ds.early_epochs(15) == 3 and ds.early_epochs(2) == 1


def test_learned_epoch_is_where_the_prediction_stays_the_given_label():
    predicted = np.array([[1, 0, 0, 2],
                          [0, 0, 0, 2],
                          [0, 1, 0, 2]])
    assert ds.learned_epoch(predicted, np.zeros(4, int)).tolist() == [1.0, 3.0, 0.0, 3.0]


def test_signals_from_a_dynamics_table_average_the_members():
    rows = []
    for member, (p0, p1) in enumerate([(0.5, 0.8), (0.7, 0.8)]):
        for epoch, p in enumerate((p0, p1)):
            rows.append({"sample_id": "a", "member": member, "epoch": epoch, "given_index": 0, "p_given": p,
                         "margin": p - (1 - p), "predicted": 0 if (epoch or member) else 1})
    s = ds.from_dynamics(pd.DataFrame(rows))
    assert s.sample_ids.tolist() == ["a"] and s.n_epochs == 2
    lm = lambda p: math.log(p / (1 - p))  # noqa: E731  two classes: the other is 1 − p
    assert s.logit_margin[0] == pytest.approx(((lm(0.5) + lm(0.8)) / 2 + (lm(0.7) + lm(0.8)) / 2) / 2)
    assert s.learned_epoch[0] == pytest.approx(0.5)  # member 0 learned it at epoch 1, member 1 at 0
    # the first epoch only (a fifth of 2, at least one): √(0.5² + 0.5²) and √(0.3² + 0.3²)
    assert s.el2n_early[0] == pytest.approx((math.sqrt(0.5) + math.sqrt(0.18)) / 2)


def test_fine_alignment_is_the_cosine_to_the_class_principal_direction():
    emb = np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, 1.0], [np.nan, 1.0]])
    labels = np.array([0, 0, 0, 1, 1])
    a = ds.fine_alignment(emb, labels, 2)
    assert a[:4] == pytest.approx([1.0, 1.0, 0.0, 1.0]) and np.isnan(a[4])


def test_unambiguous_wrong_puts_a_confident_contradiction_before_a_coin_toss():
    p = np.array([[0.5, 0.5], [0.1, 0.9], [0.9, 0.1]])
    v = ds.unambiguous_wrong(p, np.array([0, 0, 0]))
    h = -(0.1 * math.log(0.1) + 0.9 * math.log(0.9))
    assert v == pytest.approx([0.0, -math.log(0.1) - h, -math.log(0.9) - h])
    assert v[1] > v[0] > v[2]


# ---------------------------------------------------------------------------------------------
# part 1: the re-ranker


def _toy(n=2400, seed=0):
    """An audit-like table of 4 classes: the label score finds the wrong labels of classes a–c, but every
    row of class d scores low whether right or wrong (a hard class; 30 % wrong), so the hand-made order
    fills its first cards with class d's right labels (as FER2013's disgust filled the first 50 cards)."""
    rng = np.random.default_rng(seed)
    classes = ["a", "b", "c", "d"]
    given = rng.integers(0, 4, n)
    wrong = np.where(given == 3, rng.random(n) < 0.3, rng.random(n) < 0.15)
    score = np.clip(np.where(wrong | (given == 3), rng.normal(0.3, 0.15, n), rng.normal(0.65, 0.15, n)), 0, 1)
    table = pd.DataFrame({"sample_id": [f"s{i:05d}" for i in range(n)],
                          "given_label": np.array(classes, dtype=object)[given], "label_score": score,
                          "retrain_p_given": np.nan, "is_label_issue": False, "is_reviewed": False})
    for j, c in enumerate(classes):
        table[f"p_{c}"] = np.where(given == j, score, (1 - score) / 3)
    return table, classes, wrong


def _review(table, wrong, ids_queue, ids_spot):
    t = table.copy()
    done = list(ids_queue) + list(ids_spot)
    t.loc[t["sample_id"].isin(done), "is_reviewed"] = True
    is_err = pd.Series(wrong, index=table["sample_id"])
    verdicts = pd.DataFrame({"sample_id": done, "action": np.where(is_err.loc[done], "drop", "keep"),
                             "spot_check": [False] * len(ids_queue) + [True] * len(ids_spot)})
    return t, verdicts


def test_the_reranker_learns_from_decisions_what_the_hand_made_score_misses():
    table, classes, wrong = _toy()
    first = rerank.order_queue(table, classes, None)
    assert first.order == "score" and first.fit is not None and not first.fit.used
    by_rank = np.argsort(first.rank)
    queue = table["sample_id"].to_numpy()[by_rank[:200]]
    rest = table["sample_id"].to_numpy()[by_rank[200:]]
    spot = np.random.default_rng(1).choice(rest, 40, replace=False)
    t, verdicts = _review(table, wrong, queue, spot)
    hand = rerank.order_queue(t, classes, verdicts, "score")
    q = rerank.order_queue(t, classes, verdicts, "auto")
    assert q.order == "rerank" and q.fit.used
    assert q.fit.n_reviewed == 240 and q.fit.n_spot_checks == 40
    assert q.fit.cv_auroc > q.fit.hand_auroc
    # the next cards: the hand-made order goes on through class d's right labels, the re-ranker does not
    nxt = lambda r: int(wrong[np.argsort(r)[:100]].sum())  # noqa: E731  NaN ranks (reviewed) sort last
    assert nxt(q.rank) >= nxt(hand.rank) + 25
    assert np.isnan(q.rank[t["is_reviewed"].to_numpy()]).all()
    # its weights say what it learned: a low score in class d is less often a wrong label
    w = q.fit.stats()["weights"]
    assert w["class d"] < min(w["class a"], w["class b"], w["class c"])


def test_below_the_minimum_the_hand_made_order_stays_and_says_why():
    table, classes, wrong = _toy()
    ids = table["sample_id"].to_numpy()
    t, verdicts = _review(table, wrong, ids[:30], ids[30:50])
    q = rerank.order_queue(t, classes, verdicts)
    hand = rerank.order_queue(t, classes, verdicts, "score")
    assert q.order == "score" and not q.fit.used and q.fit.cv_auroc is None
    assert f"needs {rerank.MIN_REVIEWED}" in q.fit.why and "50 reviewed rows" in q.fit.why
    assert np.array_equal(q.rank, hand.rank, equal_nan=True)


def test_review_rank_numbers_the_open_rows_and_leaves_reviewed_and_unscored_rows_null():
    table, classes, wrong = _toy(n=50)
    table.loc[[3, 7], "is_reviewed"] = True
    table.loc[9, "label_score"] = np.nan
    q = rerank.order_queue(table, classes, None)
    r = q.rank
    assert np.isnan(r[[3, 7, 9]]).all()
    assert sorted(r[np.isfinite(r)].astype(int).tolist()) == list(range(1, 48))
    s = table["label_score"].to_numpy()
    ordered = np.argsort(r)[:47]
    assert np.all(np.diff(s[ordered]) >= 0)  # nothing flagged, no held-out view: the label score, low first


def test_the_fit_is_deterministic_and_the_spot_checks_stand_for_the_unreviewed_rows():
    w = rerank.sample_weights(np.array([False] * 60 + [True] * 40), n_population=1060, weighting="population")
    # 60 queue cards stand for themselves, 40 spot checks for the other 1000 rows; sum = 100
    assert w[:60] == pytest.approx([100 / 1060] * 60) and w[60:] == pytest.approx([100 / 1060 * 25] * 40)
    assert rerank.sample_weights(np.array([False, True]), 10, "equal").tolist() == [1.0, 1.0]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 3)), rng.random(200) < 0.3
    a, b = rerank.fit_logistic(x, y), rerank.fit_logistic(x, y)
    assert np.array_equal(a.weights, b.weights) and a.bias == b.bias


# ---------------------------------------------------------------------------------------------
# the audit with decisions made after the run


def test_decisions_after_the_run_are_never_flagged_and_have_no_place_in_the_queue():
    man, preds, _ = small_audit(n=80, seed=3)
    audit0, _ = core.build_audit(man, preds, CLASSES2, threshold_method="confident_joint")
    flagged = audit0.loc[audit0["is_label_issue"], "sample_id"].tolist()
    assert len(flagged) >= 3 and audit0["review_rank"].notna().sum() == 80
    assert sorted(audit0["review_rank"].astype(int)) == list(range(1, 81))
    # the flagged rows come first in the queue
    assert set(audit0.nsmallest(len(flagged), "review_rank")["sample_id"]) == set(flagged)
    g = audit0.set_index("sample_id")["given_label"]
    decided = pd.DataFrame({"sample_id": flagged[:3], "action": ["keep", "relabel", "drop"],
                            "label": [g[flagged[0]], "sad" if g[flagged[1]] == "happy" else "happy", None],
                            "given_label": [g[s] for s in flagged[:3]], "source": ["d.csv row 2"] * 3})
    # the run trained every row with its given label: the predictions are unchanged
    audit, stats = core.build_audit(man, preds, CLASSES2, threshold_method="confident_joint", decided=decided)
    a = audit.set_index("sample_id")
    assert a.loc[flagged[:3], "is_reviewed"].all() and not a.loc[flagged[:3], "is_label_issue"].any()
    assert a.loc[flagged[:3], "review_rank"].isna().all()
    assert sorted(a["review_rank"].dropna().astype(int)) == list(range(1, 78))
    assert a.at[flagged[1], "given_label"] == g[flagged[1]]
    assert stats["queue"]["order"] == "score" and "needs" in stats["queue"]["rerank"]["why"]
    assert stats["reviewed"]["n_reviewed"] == 3


# ---------------------------------------------------------------------------------------------
# audit-labels --trusted on a real run


def invoke(*args, code=0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


def test_audit_labels_trusted_applies_decisions_without_retraining(tmp_path):
    ws, _ = make_small_workspace(tmp_path / "ws", 60, 24, ("happy", "neutral", "sad"), flip_rate=0.2)
    invoke("train", "-w", ws.root, "--backbone", "test_resnet", "--image-size", 24, "--epochs", 2,
           "--batch-size", 16, "--device", "cpu")
    invoke("audit-labels", "-w", ws.root)
    runs = sorted(p.name for p in ws.runs_dir.iterdir())
    before = read_table(ws.audit)
    assert "review_rank" in before.columns and "logit_margin" in before.columns
    dyn_rows = before["trained"] & before["logit_margin"].notna()
    assert dyn_rows.sum() > 30  # the run's dynamics reached the audit
    assert before["fine_alignment"].between(0, 1).sum() > 30  # and its embedding's class directions
    first = before.sort_values("review_rank")["sample_id"].tolist()[:4]
    g = before.set_index("sample_id")["given_label"]
    decisions = tmp_path / "decisions.csv"
    decisions.write_text("sample_id,action,label\n" + f"{first[0]},drop,\n{first[1]},keep,\n"
                         + f"{first[2]},relabel,{'sad' if g[first[2]] != 'sad' else 'happy'}\n", encoding="utf-8")
    out = invoke("audit-labels", "-w", ws.root, "--trusted", decisions, "--json")
    assert sorted(p.name for p in ws.runs_dir.iterdir()) == runs  # nothing trained
    data = json.loads(out.stdout)
    assert data["review_queue"]["order"] == "hand-made score"
    assert "reviewed rows" in data["review_queue"]["why"]
    after = read_table(ws.audit).set_index("sample_id")
    assert after.loc[first[:3], "is_reviewed"].all() and not after.loc[first[:3], "is_label_issue"].any()
    assert after.loc[first[:3], "review_rank"].isna().all() and after.at[first[3], "review_rank"] == 1
    assert (after.loc[first[:3], "decided_by"] == "reviewer").all()
    # kept with where each card stood, for the next round
    kept = read_table(ws.reviewed).set_index("sample_id")
    assert set(kept.index) == set(first[:3]) and kept["rank_when_reviewed"].notna().all()
    assert read_metadata(ws.audit)["trusted"]["audit_trusted"]["n_reviewed"] == 3
    # the report's queue follows review_rank
    from fercure.report.data import BIT, review_order, review_rows

    bits, listed = review_rows(after.reset_index())
    order = review_order(after.reset_index(), listed, bits)
    issues = [i for i in order if bits[i] & BIT["label_issue"]]
    ranks = after["review_rank"].to_numpy(dtype=float, na_value=np.nan)[issues]
    assert np.all(np.diff(ranks) > 0)


def test_weighted_auroc_counts_a_row_as_often_as_its_weight():
    rng = np.random.default_rng(0)
    y, s = rng.random(300) < 0.3, np.round(rng.normal(size=300), 1)
    s = s + y
    w = rng.integers(1, 4, 300)
    assert auroc(y, s, np.ones(300)) == pytest.approx(auroc(y, s))
    assert auroc(y, s, w.astype(float)) == pytest.approx(auroc(np.repeat(y, w), np.repeat(s, w)))


def test_bench_rerank_replays_a_kept_folder(tmp_path):
    import importlib.util
    from pathlib import Path

    from fercure.workspace import write_table
    from fercure import schema

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_rerank.py"
    spec = importlib.util.spec_from_file_location("bench_rerank", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    man, preds, _ = small_audit(n=400, seed=5)
    audit, stats = core.build_audit(man, preds, CLASSES2, threshold_method="confident_joint")
    kept = tmp_path / "kept"
    kept.mkdir()
    write_table(audit, kept / "audit-0.parquet", {"classes": CLASSES2}, table=schema.AUDIT)
    rng = np.random.default_rng(0)
    p_given = np.where(audit["given_label"] == "happy", audit["p_happy"], audit["p_sad"])
    wrong = np.where(p_given < 0.5, rng.random(400) < 0.7, rng.random(400) < 0.05)
    pd.DataFrame({"sample_id": audit["sample_id"], "action": np.where(wrong, "relabel", "keep")}).to_csv(
        kept / "answers.csv", index=False)
    out = tmp_path / "rerank.json"
    assert bench.main(["--kept", str(kept), "--rounds", "3", "--batch", "20", "--l2", "10", "--weighting", "equal",
                       "--flagged-first", "yes", "--min-reviewed", "30", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["cpu"]
    today = res["orders"]["today"]
    assert [r["queue_cards"] for r in today] == [0, 20, 40, 60]
    n_spot = today[1]["reviewed"] - 20  # the report's spot checks (5 % of 400) not among the first cards
    assert 15 <= n_spot <= 20 and [r["reviewed"] for r in today] == [0, 20 + n_spot, 40 + n_spot, 60 + n_spot]
    assert today[0]["next_100_errors"] == int(wrong[np.argsort(audit["review_rank"].to_numpy(float))[:100]].sum())
    assert {"today", "unambiguous", "rerank l2=10 equal flagged_first=yes"} <= set(res["orders"])
    assert res["signals"]["label_score"]["auroc"] > 0.8


def test_only_decisions_about_the_label_the_run_scored_teach_the_reranker():
    run = pd.DataFrame({"sample_id": ["a", "b"], "action": ["relabel", "keep"], "label": ["sad", "happy"],
                        "given_label": ["happy", "happy"], "source": ["t.csv row 2", "t.csv row 3"]})
    later = pd.DataFrame({"sample_id": ["a", "b", "c"], "action": ["drop", "drop", "keep"], "label": [None, None, "sad"],
                          "given_label": ["happy", "happy", "sad"], "source": ["d.csv row 2", "d.csv row 3", "d.csv row 4"]})
    both = core.combine_reviewed(run, later)
    assert both.set_index("sample_id")["action"].to_dict() == {"a": "drop", "b": "drop", "c": "keep"}
    # a was trained with its reviewed label (sad): its scores are about that label, not the given one judged
    # later; b (kept) and c were trained with their given label
    assert core.learnable_verdicts(later, run)["sample_id"].tolist() == ["b", "c"]
    assert core.learnable_verdicts(later, None)["sample_id"].tolist() == ["a", "b", "c"]


def test_the_report_lists_the_unflagged_rows_a_reranked_queue_puts_first():
    from fercure.report.data import BIT, review_order, review_rows

    man, preds, _ = small_audit(n=80, seed=3)
    audit, _ = core.build_audit(man, preds, CLASSES2, threshold_method="confident_joint")
    issues = np.flatnonzero(audit["is_label_issue"].to_numpy())
    calm = np.flatnonzero(~audit["is_label_issue"].to_numpy() & ~audit["is_ambiguous_issue"].to_numpy())
    bits, listed = review_rows(audit)
    assert not (bits & BIT["queue"]).any()  # the hand-made order: its first cards are the label issues
    # a re-ranked queue: an unflagged row first, the last label issue past the label issues' count
    rank = audit["review_rank"].astype(float).to_numpy().copy()
    rank[calm[0]], rank[issues[-1]] = 0.5, len(audit) + 1.0
    audit["review_rank"] = pd.Series(pd.Series(rank).rank(method="first").to_numpy(), dtype="Int64")
    bits, listed = review_rows(audit)
    assert np.flatnonzero(bits & BIT["queue"]).tolist() == [calm[0]]
    order = review_order(audit, listed, bits)
    assert order[0] == calm[0] and issues[-1] in order[: len(issues) + 1]


def test_an_unflagged_card_the_reranked_queue_puts_first_gets_a_suggestion():
    from fercure.audit.table import queue_suggestions

    man, preds, _ = small_audit(n=80, seed=3)
    audit, _ = core.build_audit(man, preds, CLASSES2, threshold_method="confident_joint")
    issues = np.flatnonzero(audit["is_label_issue"].to_numpy())
    calm = np.flatnonzero(~audit["is_label_issue"].to_numpy())
    # the hand-made order's first cards are the label issues: nothing to add
    probs = audit[[f"p_{c}" for c in CLASSES2]].to_numpy(float)
    assert len(queue_suggestions(audit.copy(), probs, CLASSES2)) == 0
    before = audit.copy()
    rank = audit["review_rank"].astype(float).to_numpy().copy()
    rank[calm[0]], rank[issues[-1]] = 0.5, len(audit) + 1.0  # an unflagged row first, a flagged one last
    audit["review_rank"] = pd.Series(pd.Series(rank).rank(method="first").to_numpy(), dtype="Int64")
    assert queue_suggestions(audit, probs, CLASSES2).tolist() == [calm[0]]
    other = [c for c in CLASSES2 if c != audit["given_label"].iloc[calm[0]]]
    assert audit["suggested_label"].iloc[calm[0]] == other[0]  # two classes: the other one
    assert audit["suggested_label_confidence"].iloc[calm[0]] == pytest.approx(probs[calm[0], CLASSES2.index(other[0])])
    assert "in the re-ranked queue (review_rank 1): if the label is wrong" in audit["reason"].iloc[calm[0]]
    assert not audit["is_label_issue"].iloc[calm[0]]  # no export policy relabels it on its own
    keep = np.setdiff1d(np.arange(len(audit)), [calm[0]])
    assert audit["suggested_label"].iloc[keep].tolist() == before["suggested_label"].iloc[keep].tolist()

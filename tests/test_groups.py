"""Group cards (issue 28, part 2) and the embedding map (issue 27, part 3): flagged look-alikes form
one card, one decision reaches every member in the export and in `train --trusted`, a member taken
out keeps its own decision, and the map's points stay bounded however large the audit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fercure import decisions as dec
from fercure import embedding_map
from fercure import groups as grouping
from fercure import review_calibration as rc
from fercure import schema
from fercure import trusted as trusted_labels
from fercure.progress import NULL
from fercure.report.data import build_payload
from fercure.report.page import json_for_script
from fercure.stages.audit import run_audit
from fercure.stages.export import read_provenance, run_export
from fercure.workspace import read_metadata, read_table, write_table

from test_report import CLASSES, make_workspace, small_audit


def nb(rows: list[list[tuple[int, float]]]) -> grouping.Neighbours:
    k = max(len(r) for r in rows)
    index = np.full((len(rows), k), -1, dtype=np.int64)
    sim = np.full((len(rows), k), np.nan, dtype=np.float32)
    for i, r in enumerate(rows):
        for j, (n, s) in enumerate(r):
            index[i, j], sim[i, j] = n, s
    return grouping.Neighbours(index, sim)


# ---------------------------------------------------------------------------------------------
# the grouping math


def test_flagged_look_alikes_with_one_label_form_one_group_around_the_first_in_review_order():
    # rows 0-3 flagged "sad" → "happy" and close together; row 4 flagged but "happy" → "sad"; row 5 not flagged
    neighbours = nb([[(1, 0.99), (2, 0.98), (4, 0.99)], [(0, 0.99), (3, 0.97)], [(0, 0.98), (1, 0.9)],
                     [(1, 0.97), (5, 0.99)], [(0, 0.99), (1, 0.5)], [(3, 0.99), (0, 0.5)]])
    flagged = np.array([True, True, True, True, True, False])
    given = np.array(["sad"] * 4 + ["happy", "sad"])
    sugg = np.array(["happy"] * 4 + ["sad", "sad"])
    order = np.array([1, 0, 2, 3, 4, 5])  # row 1 is the most suspect
    g = grouping.find_groups(order, flagged, given, sugg, neighbours, settings=grouping.GroupSettings(tightness=0.0))
    assert g.leaders.tolist() == [1]
    # the leader's own neighbours only: 0 and 3 (row 2 is 0's neighbour, not 1's: no chaining)
    assert g.group.tolist() == [1, 1, -1, 1, -1, -1]
    assert g.members(1).tolist() == [1, 0, 3]
    assert g.ids([f"s{i}" for i in range(6)]).tolist() == ["s1", "s1", "", "s1", "", ""]


def test_the_similarity_cut_follows_the_embeddings_own_scale_and_the_size_is_capped():
    # every nearest-neighbour cosine lies near 1 (a ReLU embedding): tightness picks among them
    first = np.array([0.90, 0.92, 0.94, 0.96, 0.98, 0.99])
    neighbours = nb([[(j, float(first[j]))] + [((j + d) % 6, 0.91) for d in range(1, 5)] for j in range(6)])
    assert grouping.similarity_cut(neighbours, 0.5) == pytest.approx(np.quantile(first, 0.5))
    flagged = np.ones(6, bool)
    same = np.array(["sad"] * 6)
    loose = grouping.find_groups(np.arange(6), flagged, same, same, neighbours,
                                 settings=grouping.GroupSettings(tightness=0.0, max_size=3))
    assert (np.bincount(loose.group[loose.group >= 0]) <= 3).all() and loose.n_groups == 2
    tight = grouping.find_groups(np.arange(6), flagged, same, same, neighbours,
                                 settings=grouping.GroupSettings(tightness=0.9))
    assert tight.n_groups == 0  # 0.91 is closer than only a few nearest neighbours are


def test_near_copies_join_their_original_whatever_the_embedding_says():
    flagged = np.array([True, True, True])
    lab = np.array(["sad", "sad", "sad"])
    g = grouping.find_groups(np.array([2, 0, 1]), flagged, lab, lab, None, duplicate_of=np.array([-1, -1, 0]))
    assert g.group.tolist() == [2, -1, 2] and g.leaders.tolist() == [2]


def test_neighbours_follow_a_new_row_order():
    n = nb([[(1, 0.9), (2, 0.8)], [(0, 0.9), (2, 0.7)], [(0, 0.8), (1, 0.7)]])
    moved = n.take(np.array([2, -1, 0]), 3)  # new row 0 = old 2, new row 1 unknown, new row 2 = old 0
    assert moved.index.tolist() == [[2, -1], [-1, -1], [-1, 0]]
    assert np.isnan(moved.similarity[1]).all() and moved.similarity[0, 0] == pytest.approx(0.8)


# ---------------------------------------------------------------------------------------------
# through the stages: audit → decisions (as the page saves them) → export / train --trusted


def grouped_workspace(tmp_path: Path):
    """small_audit's workspace with an embedding.parquet in which the flagged rows of each given label
    sit close together; audited with groups on."""
    man, preds, _ = small_audit()
    ws = make_workspace(tmp_path / "ws", man, preds)
    run_audit(ws, write_report=False)
    a = read_table(ws.audit)
    flagged = a["is_label_issue"].to_numpy(bool)
    given = a["given_label"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    comps = rng.normal(size=(len(a), 4)).astype(np.float32)
    rows_nb, rows_sim = [], []
    for i in range(len(a)):
        mates = [j for j in np.flatnonzero(flagged & (given == given[i])) if j != i] if flagged[i] else []
        others = [j for j in range(len(a)) if j != i and j not in mates][:3]
        rows_nb.append(np.array(mates + others, np.int32))
        rows_sim.append(np.array([0.99] * len(mates) + [0.5] * len(others), np.float32))
    write_table(pd.DataFrame({"sample_id": a["sample_id"], "components": list(comps), "neighbours": rows_nb,
                              "neighbour_similarity": rows_sim}),
                ws.run_dir("r1") / "embedding.parquet", {"run_id": "r1", "classes": CLASSES}, table=schema.EMBEDDING)
    run_audit(ws, groups=grouping.GroupSettings(tightness=0.0, same_suggestion=False))
    return ws, read_table(ws.audit)


def test_audit_writes_group_ids_and_map_coordinates_from_the_runs_embedding(tmp_path):
    ws, a = grouped_workspace(tmp_path)
    spots = rc.spot_checks(a["sample_id"].astype(str).to_numpy(), a["label_score"].to_numpy(float),
                           np.zeros(len(a), bool))
    assert a["is_label_issue"].to_numpy()[spots].any()  # a flagged spot check: decided blind and alone
    assert (a["group_id"].to_numpy()[spots] == "").all()
    flagged = a[a["is_label_issue"]].drop(index=spots, errors="ignore")
    assert len(flagged) >= 4
    for label, rows in flagged.groupby("given_label"):
        if len(rows) >= 2:  # every flagged row of a label shares one card (max_size 6 caps it)
            assert rows["group_id"].iloc[:6].nunique() == 1 and rows["group_id"].iloc[0] in set(rows["sample_id"])
    assert (a.loc[~a["is_label_issue"], "group_id"] == "").all()
    assert np.isfinite(a[["map_x", "map_y"]].to_numpy()).all()
    stats = read_metadata(ws.audit)["stats"]["groups"]
    assert stats["enabled"] and stats["n_grouped_rows"] == int((a["group_id"] != "").sum()) > 0


def group_decisions(path: Path, a: pd.DataFrame, gid: str, action: str, label: str, taken_out: str | None = None,
                    own: str = "keep") -> list[str]:
    """The CSV the page saves after one decision on group card ``gid``, one member taken out and decided alone."""
    members = a.loc[a["group_id"] == gid, ["sample_id", "given_label"]].to_numpy()
    lines = ["sample_id,action,label,given_label,source_path,decided_via,group_id"]
    for sid, g in members:
        if sid == taken_out:
            lines.append(f"{sid},{own},,{g},,card,")
        else:
            lines.append(f"{sid},{action},{label},{g},,group,{gid}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [m for m, _ in members]


def test_a_group_decision_reaches_every_member_in_the_export_and_a_member_taken_out_keeps_its_own(tmp_path):
    ws, a = grouped_workspace(tmp_path)
    gid = a.loc[a["group_id"] != "", "group_id"].value_counts().index[0]
    members = a.loc[a["group_id"] == gid]
    assert len(members) >= 3
    given = members["given_label"].iloc[0]
    other = next(c for c in CLASSES if c != given)
    out_id = members["sample_id"].iloc[-1]
    decisions = tmp_path / "decisions.csv"
    ids = group_decisions(decisions, a, gid, "relabel", other, taken_out=out_id, own="keep")
    s = run_export(ws, tmp_path / "cleaned.parquet", decisions=decisions)
    cleaned = read_table(tmp_path / "cleaned.parquet").set_index("sample_id")
    for sid in ids:
        row = cleaned.loc[sid]
        assert row["decided_by"] == "reviewer"
        if sid == out_id:  # taken out: its own decision, not the group's
            assert row["action"] == "keep" and row["clean_label"] == given and "one decision for" not in row["reason"]
        else:
            assert row["action"] == "relabel" and row["clean_label"] == other
            assert f"one decision for group {gid}" in row["reason"]
    p = read_provenance(tmp_path / "cleaned.parquet")["decisions"]
    assert p["via_group"] == len(ids) - 1 and p["group_cards"] == 1
    assert s.decided_by_reviewer == len(ids)


def test_train_trusted_reads_the_group_decision_for_every_member(tmp_path):
    ws, a = grouped_workspace(tmp_path)
    gid = a.loc[a["group_id"] != "", "group_id"].value_counts().index[0]
    out_id = a.loc[a["group_id"] == gid, "sample_id"].iloc[-1]
    decisions = tmp_path / "decisions.csv"
    given = a.loc[a["group_id"] == gid, "given_label"].iloc[0]
    other = next(c for c in CLASSES if c != given)
    ids = group_decisions(decisions, a, gid, "relabel", other, taken_out=out_id, own="keep")
    trusted = trusted_labels.load(ws, [str(decisions)], CLASSES, NULL)
    t = trusted.table.set_index("sample_id")
    assert sorted(t.index) == sorted(ids)
    for sid in ids:
        if sid == out_id:
            assert t.at[sid, "action"] == "keep" and "one decision for" not in t.at[sid, "source"]
        else:
            assert t.at[sid, "action"] == "relabel" and t.at[sid, "label"] == other
            assert t.at[sid, "source"].endswith(f"(one decision for group {gid})")
    # what the run then trains with (train's own inputs and the same function train calls)
    from fercure.stages.train import _load_inputs

    data, reviewed = trusted_labels.apply_to_data(_load_inputs(ws, NULL), trusted)
    label_of = dict(zip(data.sample_ids, np.asarray(data.classes, dtype=object)[data.given]))
    assert {sid: label_of[sid] for sid in ids} == {sid: given if sid == out_id else other for sid in ids}
    assert int(reviewed.sum()) == len(ids)


def test_an_unknown_decided_via_is_named_and_the_decision_still_applies(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("sample_id,action,label,decided_via,group_id\ns1,keep,,cluster,s1\n", encoding="utf-8")
    d = dec.parse(dec.read_decisions(p), file=str(p), sample_ids=["s1"], given=["sad"], suggested=[None],
                  classes=CLASSES)
    assert d.table["action"].tolist() == ["keep"] and d.table["via"].tolist() == [""]
    assert "unknown decided_via 'cluster'" in str(d.problems[0])


# ---------------------------------------------------------------------------------------------
# the map


def test_the_maps_points_are_bounded_for_a_large_audit():
    n = 100_000
    rng = np.random.default_rng(1)
    flagged = rng.random(n) < 0.3
    given = np.array(CLASSES, dtype=object)[rng.integers(0, 2, n)]
    audit = pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(n)], "source_path": [f"d/{i}.png" for i in range(n)],
        "given_label": given, "suggested_label": given, "suggested_label_confidence": 0.6,
        "label_score": rng.random(n), "is_label_issue": flagged, "trained": True,
        "map_x": rng.normal(size=n), "map_y": rng.normal(size=n), "group_id": "",
    })
    payload = build_payload(audit, {}, CLASSES, thumb_budget=0)
    m = payload["map"]
    assert len(m["x"]) == len(m["y"]) == len(m["r"]) == embedding_map.MAX_POINTS
    assert m["sampled"] and m["n_placed"] == n and "an even sample of the rest" in m["note"]
    # the listed cards come first, in review order; the rest is drawn from the whole set
    listed = m["n_listed_drawn"]
    assert m["r"][:listed] == list(range(listed)) and min(m["r"][listed:]) == -1
    assert len(json_for_script(m)) < 200_000  # the map stays a small part of the page
    assert 0 <= min(m["x"]) and max(m["x"]) <= embedding_map.GRID


def test_pca_projection_is_deterministic_and_keeps_the_widest_direction_first():
    rng = np.random.default_rng(2)
    e = rng.normal(size=(500, 8)) * np.array([5.0, 0.1, 2.0, 0.1, 0.1, 0.1, 0.1, 0.1])
    xy = embedding_map.project(e)
    assert np.std(xy[:, 0]) == pytest.approx(np.std(e[:, 0]), rel=0.05)
    assert np.std(xy[:, 1]) == pytest.approx(np.std(e[:, 2]), rel=0.05)
    assert np.allclose(embedding_map.project(e), xy)
    e[3] = np.nan
    assert np.isnan(embedding_map.project(e)[3]).all()


# ---------------------------------------------------------------------------------------------
# the benchmark's replay (benchmarks/bench_groups.py), on a queue worked out by hand


def test_the_replay_counts_a_group_card_once_and_each_member_taken_out_as_a_card():
    import importlib.util
    import sys

    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    sys.path.insert(0, str(bench))
    spec = importlib.util.spec_from_file_location("bench_groups", bench / "bench_groups.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    audit = pd.DataFrame({"sample_id": ["a", "b", "c", "d", "e"]})
    # a, b, c: one group led by a (a and b wrong alike, c right); d wrong alone; e right alone
    answers = pd.DataFrame({"sample_id": ["a", "b", "c", "d", "e"],
                            "action": ["relabel", "relabel", "keep", "drop", "keep"],
                            "reviewer_label": ["happy", "happy", None, None, None]})
    groups = grouping.Groups(group=np.array([0, 0, 0, -1, -1]), leaders=np.array([0]))
    queue = ["a", "d", "b", "e", "c"]
    r = mod.replay(audit, answers, queue, groups, n_cards=3)
    assert r["cards"] == 3 and r["group_cards"] == 1 and r["rows_in_groups"] == 3
    assert r["group_precision"] == pytest.approx(2 / 3)
    # take out: c is taken out (its answer differs) and costs a card; a, b, d fixed
    assert r["take_out"] == {"cards": 4, "rows_fixed": 3, "rows_fixed_per_card": 0.75}
    # blind: c relabelled with the group (broken); a, b, d fixed over 3 cards
    assert r["blind"]["rows_fixed"] == 3 and r["blind"]["rows_broken"] == 1
    plain = mod.replay(audit, answers, queue, None, n_cards=3)
    assert plain["take_out"]["rows_fixed"] == 3 and plain["cards"] == 3  # a, d, b: all wrong


def test_a_features_file_draws_the_map_and_groups_look_alikes_without_a_run(tmp_path):
    from conftest import make_small_workspace

    n = 60
    ws, wrong = make_small_workspace(tmp_path / "ws", n, flip_rate=0.2)
    true = np.arange(n) % 3
    rng = np.random.default_rng(3)
    emb = rng.normal(0, 0.3, (n, 6))
    emb[np.arange(n), true] += 3.0
    # two wrong labels that are near-copies of each other: one card (neither a spot check: every row is
    # scored here, so the draw is the one the audit makes)
    m = read_table(ws.manifest)
    spots = rc.spot_checks(m["sample_id"].astype(str).to_numpy(), np.zeros(n), np.zeros(n, bool))
    a, b = [i for i in np.flatnonzero(wrong) if i not in set(spots)][:2]
    emb[b] = emb[a] + 1e-3
    labels = m["label"].to_numpy(dtype=object)
    labels[b] = labels[a]  # the same wrong label on both
    m["label"] = labels
    write_table(m, ws.manifest, {"classes": ["happy", "neutral", "sad"]})
    pd.DataFrame({"sample_id": m["sample_id"], "embedding": list(emb)}).to_parquet(tmp_path / "emb.parquet")
    summary = run_audit(ws, features=tmp_path / "emb.parquet", groups=grouping.GroupSettings(tightness=0.5))
    audit = read_table(ws.audit)
    assert summary.group_cards["samples_on_group_cards"] == int((audit["group_id"] != "").sum()) >= 2
    assert summary.group_cards["group_cards"] == audit.loc[audit["group_id"] != "", "group_id"].nunique()
    assert np.isfinite(audit[["map_x", "map_y"]].to_numpy()).all()
    assert audit["is_label_issue"].iat[a] and audit["is_label_issue"].iat[b]
    assert audit["group_id"].iat[a] == audit["group_id"].iat[b] != ""
    assert read_metadata(ws.audit)["stats"]["groups"]["from"] == "features"
    assert (audit.loc[~audit["is_label_issue"], "group_id"] == "").all()

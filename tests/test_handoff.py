"""The review queue handed to Label Studio / CVAT and their exports read back as decisions.

No server: the tools' side is played by editing the exported files into what each tool writes on
export (Label Studio's JSON export of annotated tasks, CVAT for images 1.1 XML), field for field
as their documentation describes them."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_export import make_workspace

from fercure import decisions as dec
from fercure import handoff
from fercure import trusted as trusted_mod
from fercure.progress import NullReporter
from fercure.report import data as page_data
from fercure.stages.audit import run_audit
from fercure import export as export_core
from fercure.stages.export import ExportError, OutputExistsError, _queue, run_export
from fercure.workspace import WorkspaceError, read_metadata, read_table, write_table


@pytest.fixture
def audited(tmp_path):
    """An audit whose queue is the report's own order (no ``review_rank`` column: see
    test_an_audits_review_rank_orders_the_cards for that)."""
    ws = make_workspace(tmp_path / "ws")
    run_audit(ws, write_report=False)
    audit = read_table(ws.audit)
    if "review_rank" in audit.columns:
        write_table(audit.drop(columns="review_rank"), ws.audit, read_metadata(ws.audit))
    return ws


def report_queue(ws) -> list[str]:
    """The sample ids of the report's cards, in the page's order, reviewed rows left out."""
    audit = read_table(ws.audit)
    bits, listed = page_data.review_rows(audit, read_table(ws.manifest))
    order = page_data.review_order(audit, listed, bits)
    return [s for s, b in zip(audit["sample_id"].to_numpy()[order], bits[order]) if not b & page_data.BIT["reviewed"]]


def as_label_studio_export(tasks: list[dict], answers: dict[str, list]) -> list[dict]:
    """What Label Studio's JSON export holds after review: each imported task with its id, its
    prediction as stored, and one annotation per answer (a class, None for a skipped task)."""
    out = []
    for i, task in enumerate(tasks, start=1):
        sid = task["data"]["sample_id"]
        anns = []
        for k, answer in enumerate(answers.get(sid, []), start=1):
            result = [] if answer is None else [{
                "id": f"r{i}{k}", "type": "choices", "value": {"choices": [answer]}, "origin": "manual",
                "to_name": "image", "from_name": "label"}]
            anns.append({"id": 100 * i + k, "completed_by": k, "result": result, "was_cancelled": answer is None,
                         "ground_truth": False, "created_at": "2026-12-07T10:00:00.000000Z",
                         "updated_at": "2026-12-07T10:00:00.000000Z", "draft_created_at": None, "lead_time": 2.5,
                         "prediction": {}, "result_count": len(result), "unique_id": f"u{i}{k}",
                         "import_id": None, "last_action": None, "task": i, "project": 1, "updated_by": k,
                         "parent_prediction": None, "parent_annotation": None, "last_created_by": None})
        preds = [{**p, "id": i, "created_ago": "1 minute", "task": i, "project": 1, "cluster": None,
                  "neighbors": None, "mislabeling": 0.0, "created_at": "2026-12-07T09:00:00.000000Z",
                  "updated_at": "2026-12-07T09:00:00.000000Z"} for p in task.get("predictions", [])]
        out.append({"id": i, "annotations": anns, "file_upload": "tasks.json", "drafts": [], "predictions": preds,
                    "data": task["data"], "meta": {}, "created_at": "2026-12-07T09:00:00.000000Z",
                    "updated_at": "2026-12-07T10:00:00.000000Z", "inner_id": i, "total_annotations": len(anns),
                    "cancelled_annotations": sum(a["was_cancelled"] for a in anns), "total_predictions": len(preds),
                    "comment_count": 0, "unresolved_comment_count": 0, "last_comment_updated_at": None,
                    "project": 1, "updated_by": 1, "comment_authors": []})
    return out


def as_cvat_export(xml: bytes, tags: dict[str, list[str]]) -> str:
    """What CVAT's "CVAT for images 1.1" export holds after review: the task's meta as CVAT writes
    it, and per image the tags a reviewer left (``tags``: image name → labels; others as uploaded)."""
    root = ET.fromstring(xml)
    task = root.find("meta/task")
    for tag, text in (("id", "7"), ("overlap", "0"), ("bugtracker", ""), ("created", "2026-12-07 09:00:00+00:00"),
                      ("updated", "2026-12-07 10:00:00+00:00"), ("subset", "default"), ("start_frame", "0"),
                      ("stop_frame", str(len(root.findall("image")) - 1)), ("frame_filter", "")):
        ET.SubElement(task, tag).text = text
    ET.SubElement(ET.SubElement(root.find("meta"), "dumped"), "dumped").text = "2026-12-07 10:05:00+00:00"
    for image in root.findall("image"):
        if image.get("name") in tags:
            for t in image.findall("tag"):
                image.remove(t)
            for label in tags[image.get("name")]:
                ET.SubElement(image, "tag", label=label, source="manual")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode")


def _other(label: str, classes) -> str:
    return next(c for c in classes if c != label)


def test_label_studio_tasks_follow_the_report_queue_with_scored_suggestions(audited, tmp_path):
    ws = audited
    s = run_export(ws, tmp_path / "ls", fmt="label-studio")
    out = tmp_path / "ls"
    tasks = json.loads((out / "tasks.json").read_text(encoding="utf-8"))
    audit = read_table(ws.audit).set_index("sample_id")
    no_crop = set(audit.index[audit["store_index"] < 0])  # listed (face problem), no image to show: named
    queue = [q for q in report_queue(ws) if q not in no_crop]
    assert no_crop and [t["data"]["sample_id"] for t in tasks] == queue and s.n_images == len(queue) > 5
    assert len(s.skipped) == len(no_crop) and "no aligned crop" in s.skipped[0]
    ranks = [t["data"]["review_rank"] for t in tasks]
    assert ranks == sorted(ranks) and ranks[0] == 1
    key = pd.Series(page_data.queue_key(read_table(ws.audit), np.flatnonzero(read_table(ws.audit)["is_label_issue"])),
                    index=audit.index)
    for t in tasks:
        sid = t["data"]["sample_id"]
        assert t["data"]["given_label"] == audit.at[sid, "given_label"]
        assert t["data"]["image"] == handoff.DEFAULT_IMAGE_URL + t["data"]["image"].split("=", 1)[1]
        img = out / t["data"]["image"].split("=", 1)[1]
        crop = np.load(ws.store)[int(audit.at[sid, "store_index"])]
        assert np.array_equal(np.asarray(Image.open(img)), crop)  # the card's own crop
        if pd.isna(audit.at[sid, "suggested_label"]):  # a duplicate: no suggestion, no prediction
            assert "predictions" not in t and audit.at[sid, "face_status"] == "duplicate"
            continue
        (pred,) = t["predictions"]
        assert pred["result"] == [{"from_name": "label", "to_name": "image", "type": "choices",
                                   "value": {"choices": [audit.at[sid, "suggested_label"]]}}]
        assert pred["score"] == pytest.approx(key[sid], abs=1e-6)
    # the flagged cards come first, lowest score first, as Label Studio orders by prediction score
    flagged = [t["predictions"][0]["score"] for t in tasks if audit.at[t["data"]["sample_id"], "is_label_issue"]]
    assert flagged == sorted(flagged) and tasks[0]["data"]["sample_id"] in audit.index[audit["is_label_issue"]]

    config = ET.fromstring((out / "label_config.xml").read_text(encoding="utf-8"))
    assert config.find("Image").attrib == {"name": "image", "value": "$image"}
    box = config.find("Choices")
    assert (box.get("name"), box.get("toName")) == ("label", "image")
    assert [c.get("alias") or c.get("value") for c in box] == ["happy", "sad", "surprise", handoff.DROP]
    index = pd.read_csv(out / "index.csv")
    assert index["sample_id"].tolist() == queue and (out / ".fercure-export").is_file()


def test_cards_set_how_much_of_the_queue_is_handed_over(audited, tmp_path):
    ws = audited
    run_export(ws, tmp_path / "first3", fmt="label-studio", cards=3, image_url="http://localhost:8081/")
    tasks = json.loads((tmp_path / "first3" / "tasks.json").read_text(encoding="utf-8"))
    assert [t["data"]["sample_id"] for t in tasks] == report_queue(ws)[:3]
    assert tasks[0]["data"]["image"] == "http://localhost:8081/images/" + sorted(
        p.name for p in (tmp_path / "first3" / "images").iterdir())[0]
    with pytest.raises(ExportError, match="--cards 0"):
        run_export(ws, tmp_path / "none", fmt="cvat", cards=0)
    s = run_export(ws, tmp_path / "c.parquet", cards=3)
    assert "--cards 3 has no effect with --format parquet" in s.warning


def test_an_audits_review_rank_orders_the_cards(audited):
    """An audit that names each row's place in the queue (``review_rank``, re-ranked from decisions)
    is followed as it is, as far as the report lists cards; reviewed rows have no rank."""
    ws = audited
    audit = read_table(ws.audit)
    cleaned = export_core.apply_policy(audit, read_metadata(ws.audit)["classes"], "relabel")
    cleaned.insert(0, "decided_by", "fercure")
    rank = np.full(len(audit), np.nan)
    rank[[10, 4, 7, 20]] = [1, 3, 2, 4]
    queue = _queue(ws, cleaned, audit.assign(review_rank=rank), cards=3)
    ids = audit["sample_id"].to_numpy()
    assert queue["sample_id"].tolist() == [ids[10], ids[7], ids[4]]
    assert queue["review_rank"].tolist() == [1, 2, 3]
    cleaned.loc[7, "decided_by"] = "reviewer"  # decided in this export: not handed over again
    queue = _queue(ws, cleaned, audit.assign(review_rank=rank), cards=None)
    assert queue["sample_id"].tolist() == [ids[10], ids[4], ids[20]]


def test_a_label_studio_export_comes_back_as_decisions(audited, tmp_path):
    ws = audited
    run_export(ws, tmp_path / "ls", fmt="label-studio")
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text(encoding="utf-8"))
    classes = read_metadata(ws.audit)["classes"]
    cards = [(t["data"]["sample_id"], t["data"]["given_label"], t["data"]["fercure_suggestion"]) for t in tasks]
    (acc, g_acc, s_acc), (keep, g_keep, _), (drop, _, _), (none, _, _), (skip, _, _), (two, g_two, _), \
        (bad, g_bad, _), (moved, g_moved, _) = cards[:8]
    answers = {acc: [s_acc], keep: [g_keep], drop: [handoff.DROP], skip: [None],
               two: [g_two, _other(g_two, classes)], bad: ["hapy"], moved: [_other(g_moved, classes)]}
    export = as_label_studio_export(tasks, answers)
    export[7]["data"]["given_label"] = _other(g_moved, classes)  # exported before the label changed
    export.append({**export[0], "id": 999, "data": {**export[0]["data"], "sample_id": "nosuchsample"}})
    export.append({**export[0], "id": 1000, "data": {"image": "/data/upload/1/x.png"}})  # not a fercure task
    f = tmp_path / "project-1-at-2026-12-07-10-05.json"
    f.write_text(json.dumps(export), encoding="utf-8")

    s = run_export(ws, tmp_path / "cleaned.parquet", decisions=f)
    cleaned = read_table(tmp_path / "cleaned.parquet").set_index("sample_id")
    assert cleaned.at[acc, "action"] == "relabel" and cleaned.at[acc, "clean_label"] == s_acc != g_acc
    assert cleaned.at[keep, "action"] == "keep" and cleaned.at[keep, "clean_label"] == g_keep
    assert cleaned.at[drop, "action"] == "drop" and pd.isna(cleaned.at[drop, "clean_label"])
    assert set(cleaned.index[cleaned["decided_by"] == "reviewer"]) == {acc, keep, drop}
    problems = "\n".join(s.decision_problems)
    assert len(s.decision_problems) == len(tasks) - 3 + 2  # every other task, and the two foreign ones
    assert f"{f} task 4: sample {none} has no annotation in the Label Studio export" in problems
    assert f"{f} task 5: sample {skip} has no annotation" in problems  # a skipped (cancelled) task
    assert f"{f} task 6: sample {two} has annotations that disagree" in problems
    assert f"{f} task 7: unknown class 'hapy' for sample {bad}" in problems and "Did you mean 'happy'?" in problems
    assert f"{f} task 8: sample {moved} was decided as labelled" in problems
    assert f"{f} task 999: unknown sample_id 'nosuchsample'" in problems
    assert f"{f} task 1000: no data.sample_id: not a task fercure exported" in problems
    # the decided cards leave the next hand-off
    run_export(ws, tmp_path / "ls2", fmt="label-studio", decisions=f)
    again = json.loads((tmp_path / "ls2" / "tasks.json").read_text(encoding="utf-8"))
    assert [t["data"]["sample_id"] for t in again] == [c[0] for c in cards if c[0] not in {acc, keep, drop}]


def test_a_cvat_export_comes_back_as_decisions_for_export_and_training(audited, tmp_path):
    ws = audited
    run_export(ws, tmp_path / "cvat", fmt="cvat", cards=7)
    out = tmp_path / "cvat"
    xml = (out / "annotations.xml").read_bytes()
    labels = json.loads((out / "cvat_labels.json").read_text(encoding="utf-8"))
    classes = read_metadata(ws.audit)["classes"]
    assert [lab["name"] for lab in labels] == [*classes, handoff.DROP]
    images = ET.fromstring(xml).findall("image")
    assert [i.get("name") for i in images] == sorted(p.name for p in (out / "images").iterdir())
    audit = read_table(ws.audit).set_index("sample_id")
    for image in images:  # each image tagged with its given label, its size the crop's
        sid = image.get("name").split("_")[1]
        assert [t.get("label") for t in image.findall("tag")] == [audit.at[sid, "given_label"]]
        assert (image.get("width"), image.get("height")) == ("16", "16")
    n = [i.get("name") for i in images]
    sid = [x.split("_")[1] for x in n]
    given = [audit.at[s, "given_label"] for s in sid]
    new = _other(given[0], classes)
    moved = n[6].replace(handoff.label_tag(given[6]), handoff.label_tag(_other(given[6], classes)))
    text = as_cvat_export(xml, {n[0]: [new], n[2]: [handoff.DROP], n[3]: [], n[4]: [given[4], _other(given[4], classes)],
                                n[5]: ["Happy"]})
    text = text.replace(n[6], moved).replace(n[1], f"not-ours-{n[1]}")  # n[1] left as uploaded, but renamed
    f = tmp_path / "annotations.xml"
    f.write_text(text, encoding="utf-8")

    s = run_export(ws, tmp_path / "cleaned.parquet", decisions=f)
    cleaned = read_table(tmp_path / "cleaned.parquet").set_index("sample_id")
    assert cleaned.at[sid[0], "action"] == "relabel" and cleaned.at[sid[0], "clean_label"] == new
    assert cleaned.at[sid[2], "action"] == "drop"
    assert set(cleaned.index[cleaned["decided_by"] == "reviewer"]) == {sid[0], sid[2]}
    problems = "\n".join(s.decision_problems)
    assert len(s.decision_problems) == 5
    assert f"{f} image 1 (not-ours-{n[1]}): the image name is not one fercure exported" in problems
    assert f"{f} image 3 ({n[3]}): sample {sid[3]} has no annotation in the CVAT export" in problems
    assert f"{f} image 4 ({n[4]}): sample {sid[4]} has annotations that disagree" in problems
    assert f"{f} image 5 ({n[5]}): unknown class 'Happy'" in problems
    assert f"{f} image 6 ({moved}): sample {sid[6]} was exported for review labelled otherwise" in problems

    # train --trusted reads the same file through the same reader
    t = trusted_mod.load(ws, [str(f)], classes, NullReporter())
    table = t.table.set_index("sample_id")
    assert table.loc[[sid[0], sid[2]], "action"].tolist() == ["relabel", "drop"] and table.at[sid[0], "label"] == new
    assert len(t.problems) == 5 and len(table) == 2


def test_train_trusted_learns_from_a_label_studio_export(tmp_path):
    """The whole loop on a trained run: train → audit → Label Studio tasks → reviewed export →
    train --trusted, which trains the relabelled sample with its reviewed label and leaves the
    dropped one out."""
    from test_train_stage import cfg
    from test_train_stage import make_workspace as make_train_workspace

    from fercure.stages.train import run_train

    ws = make_train_workspace(tmp_path / "ws")
    run_train(ws, cfg(epochs=1, retrain=False))
    run_audit(ws, write_report=False)
    run_export(ws, tmp_path / "ls", fmt="label-studio", cards=4)
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text(encoding="utf-8"))
    classes = read_metadata(ws.audit)["classes"]
    (a, ga), (b, _) = [(t["data"]["sample_id"], t["data"]["given_label"]) for t in tasks[:2]]
    new = _other(ga, classes)
    f = tmp_path / "export.json"
    f.write_text(json.dumps(as_label_studio_export(tasks, {a: [new], b: [handoff.DROP]})), encoding="utf-8")
    run = run_train(ws, cfg(epochs=1, retrain=False, trusted=[str(f)]))
    assert run.reviewed == 2
    preds = read_table(run.run_dir / "predictions.parquet").set_index("sample_id")
    assert b not in preds.index and preds.at[a, "given_label"] == new
    trusted = read_table(run.run_dir / "trusted.parquet").set_index("sample_id")
    assert trusted.loc[[a, b], "action"].tolist() == ["relabel", "drop"]
    assert trusted.at[a, "source"] == f"{f} task 1"
    cfg_json = json.loads((run.run_dir / "config.json").read_text())
    assert cfg_json["trusted_files"]["n_skipped"] == 2  # the two tasks nobody annotated


def test_an_export_of_neither_tool_is_refused_by_name(audited, tmp_path):
    ws = audited
    other_xml = tmp_path / "labels.xml"
    other_xml.write_text("<?xml version='1.0'?><dataset><image name='a.png'/></dataset>", encoding="utf-8")
    with pytest.raises(ExportError, match=f"{other_xml}: the XML's root is <dataset>, not CVAT's <annotations>"):
        run_export(ws, tmp_path / "c.parquet", decisions=other_xml)
    bomb = tmp_path / "bomb.xml"
    bomb.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xx">]><annotations>&x;</annotations>',
                    encoding="utf-8")
    with pytest.raises(ExportError, match=f"{bomb} declares a DTD or entities"):
        run_export(ws, tmp_path / "c.parquet", decisions=bomb)
    broken = tmp_path / "broken.xml"
    broken.write_text("<annotations><image name='x'></annotations>", encoding="utf-8")
    with pytest.raises(ExportError, match=f"{broken} is not well-formed XML"):
        run_export(ws, tmp_path / "c.parquet", decisions=broken)
    with pytest.raises(WorkspaceError, match=f"--trusted: {other_xml}: the XML's root"):
        trusted_mod.load(ws, [str(other_xml)], read_metadata(ws.audit)["classes"], NullReporter())
    run_export(ws, tmp_path / "ls", fmt="label-studio", cards=2)
    imported = tmp_path / "ls" / "tasks.json"  # what fercure wrote for import, given back by mistake
    with pytest.raises(ExportError, match=f"{imported} holds Label Studio tasks without annotations"):
        run_export(ws, tmp_path / "c.parquet", decisions=imported)
    assert not (tmp_path / "c.parquet").exists()


def test_the_format_is_told_by_content_not_by_the_file_name(audited, tmp_path):
    ws = audited
    run_export(ws, tmp_path / "cvat", fmt="cvat", cards=2)
    run_export(ws, tmp_path / "ls", fmt="label-studio", cards=2)
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text(encoding="utf-8"))
    sid = tasks[0]["data"]["sample_id"]
    xml_named_json = tmp_path / "cvat-export.json"
    xml_named_json.write_text(as_cvat_export((tmp_path / "cvat" / "annotations.xml").read_bytes(), {}),
                              encoding="utf-8")
    ls_named_csv = tmp_path / "ls-export.csv"
    ls_named_csv.write_text(json.dumps(as_label_studio_export(tasks, {sid: [handoff.DROP]})), encoding="utf-8")
    assert [r for _, r in dec.read_decisions(xml_named_json)][0]["action"] == "relabel"
    records = dec.read_decisions(ls_named_csv)
    assert records[0] == ("task 1", {"sample_id": sid, "given_label": tasks[0]["data"]["given_label"],
                                     "given_tag": "", "action": "drop"})
    assert "_problem" in records[1][1]
    # the report's own JSON decisions are not mistaken for a tool's export
    own = tmp_path / "decisions.json"
    own.write_text(json.dumps([{"sample_id": sid, "action": "drop"}]), encoding="utf-8")
    assert dec.read_decisions(own) == [("entry 1", {"sample_id": sid, "action": "drop"})]


def test_a_handoff_folder_is_replaced_only_with_force(audited, tmp_path):
    ws = audited
    out = tmp_path / "ls"
    run_export(ws, out, fmt="label-studio", cards=2)
    with pytest.raises(OutputExistsError):
        run_export(ws, out, fmt="label-studio", cards=2)
    run_export(ws, out, fmt="label-studio", cards=3, force=True)
    assert len(json.loads((out / "tasks.json").read_text(encoding="utf-8"))) == 3
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(ExportError, match="fercure did not write"):
        run_export(ws, mine, fmt="cvat", force=True)
    assert (mine / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_originals_are_handed_over_with_their_own_size(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    root = tmp_path / "input"
    man = read_table(ws.manifest)
    for rel in man["source_path"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / rel)
    write_table(man, ws.manifest, {**read_metadata(ws.manifest), "input_root": str(root.resolve())})
    run_audit(ws, write_report=False)
    run_export(ws, tmp_path / "cvat", fmt="cvat", images="originals", link="copy", cards=2)
    image = ET.parse(tmp_path / "cvat" / "annotations.xml").getroot().find("image")
    assert (image.get("width"), image.get("height")) == ("30", "20")
    assert not (tmp_path / "cvat" / "images" / image.get("name")).is_symlink()


def test_a_flattened_label_studio_export_is_named_not_misread(audited, tmp_path):
    """Label Studio's JSON-MIN and CSV exports flatten each task (one annotation kept): refused with
    what to export instead, by the --decisions and the --trusted reader alike."""
    ws = audited
    run_export(ws, tmp_path / "ls", fmt="label-studio", cards=2)
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text(encoding="utf-8"))
    flat = [{**t["data"], "id": i, "label": t["data"]["given_label"], "annotator": 1, "annotation_id": i}
            for i, t in enumerate(tasks, start=1)]
    as_json = tmp_path / "project-1-min.json"
    as_json.write_text(json.dumps(flat), encoding="utf-8")
    as_csv = tmp_path / "project-1.csv"
    pd.DataFrame(flat).to_csv(as_csv, index=False)
    for f in (as_json, as_csv):
        with pytest.raises(ExportError, match=f"{f} holds Label Studio tasks flattened .* Export → JSON"):
            run_export(ws, tmp_path / "c.parquet", decisions=f)
    with pytest.raises(WorkspaceError, match=f"{as_csv} holds Label Studio tasks flattened"):
        trusted_mod.load(ws, [str(as_csv)], read_metadata(ws.audit)["classes"], NullReporter())


def test_the_cli_hands_over_the_queue_and_reads_it_back(audited, tmp_path):
    from typer.testing import CliRunner

    from fercure.cli import app

    ws = audited
    out = tmp_path / "queue"
    r = CliRunner().invoke(app, ["export-cleaned", "-w", str(ws.root), "-o", str(out), "--format", "label-studio",
                                 "--cards", "2", "--image-url", "http://localhost:8081/", "--json"])
    assert r.exit_code == 0, r.output
    said = json.loads(r.output)
    assert said["n_images"] == 2 and f"import {out / 'tasks.json'}" in said["next"]
    tasks = json.loads((out / "tasks.json").read_text(encoding="utf-8"))
    assert len(tasks) == 2 and tasks[0]["data"]["image"].startswith("http://localhost:8081/images/000001_")
    assert read_metadata(ws.audit)["run_id"] in tasks[0]["predictions"][0]["model_version"]
    f = tmp_path / "export.json"
    f.write_text(json.dumps(as_label_studio_export(tasks, {tasks[0]["data"]["sample_id"]: [handoff.DROP],
                                                           tasks[1]["data"]["sample_id"]: [handoff.DROP]})),
                 encoding="utf-8")
    r = CliRunner().invoke(app, ["export-cleaned", "-w", str(ws.root), "-o", str(tmp_path / "c.csv"), "--format",
                                 "csv", "--decisions", str(f), "--strict"])
    assert r.exit_code == 0, r.output
    cleaned = pd.read_csv(tmp_path / "c.csv", keep_default_na=False).set_index("sample_id")
    assert (cleaned.loc[[t["data"]["sample_id"] for t in tasks], "action"] == "drop").all()


def test_only_the_configs_choices_count_as_a_decision(tmp_path):
    """Results of another control (a second Choices a team added), cancelled and empty annotations
    are no decision; one choice repeated by two annotators is one."""
    task = {"id": 3, "data": {"sample_id": "s1", "given_label": "happy"}, "annotations": [
        {"result": [{"from_name": "quality", "to_name": "image", "type": "choices", "value": {"choices": ["blurry"]}}]},
        {"result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["sad"]}}]},
        {"result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["sad"]}}]},
        {"result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["happy"]}}],
         "was_cancelled": True},
        {"result": []}]}
    (d,) = handoff.read_label_studio(tmp_path / "x.json", [task])
    assert (d.where, d.sample_id, d.choice, d.given_label, d.problem) == ("task 3", "s1", "sad", "happy", "")
    assert d.record() == ("task 3", {"sample_id": "s1", "given_label": "happy", "given_tag": "",
                                     "action": "relabel", "label": "sad"})
    only_other = {**task, "annotations": task["annotations"][:1]}
    (d,) = handoff.read_label_studio(tmp_path / "x.json", [only_other])
    assert d.problem.startswith("sample s1 has no annotation in the Label Studio export")

"""Issue 20, the data-safety half: what a curator and a hostile tester hit in 0.2, one test per class.

Data loss (--force never empties a folder fercure did not write; cleanup only in a folder fercure
made; a stage refuses inputs that changed since the stage it reads; shards of other inputs never
merge), a workspace is data (ids and paths from its tables never lead outside the output or the
input root; decisions files are capped and read back as the report wrote them), clear errors instead
of tracebacks or silence, and the curator's trips (weak drops, stable class indices, safe folder
names, ignored options said)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from fercure import schema
from fercure.cli import app
from fercure.decisions import DecisionsFileError, parse, read_decisions
from fercure.ingest import discover
from fercure.stages.audit import run_audit
from fercure.stages.export import ExportError, OutputExistsError, run_export
from fercure.workspace import (
    WORKSPACE_MARKER,
    Workspace,
    WorkspaceError,
    atomic_path,
    atomic_write_json,
    claim,
    read_metadata,
    read_table,
    write_table,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

runner = CliRunner()


def invoke(*args: object, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


def make_ws(root: Path, classes=("happy", "sad", "surprise"), n: int = 45, seed: int = 0,
            input_root: Path | None = None) -> Workspace:
    """A small workspace (manifest, crop store, one finished run) with these class names, audited;
    with ``input_root`` the original files are on disk there and the manifest names it."""
    classes = list(classes)
    k = len(classes)
    rng = np.random.default_rng(seed)
    ws = Workspace(root)
    claim(ws.root)
    ids = [f"id{i:03d}" for i in range(n)]
    true = np.arange(n) % k
    given = true.copy()
    given[:6] = (true[:6] + 1) % k  # planted errors
    man = pd.DataFrame({
        "sample_id": ids, "source_path": [f"faces/{i}.png" for i in ids], "label": [classes[g] for g in given],
        "split": "train", "face_status": "ok", "reason": "", "face_score": 0.99,
        "sharpness": np.exp(rng.normal(5, 0.1, n)), "duplicate_of": "", "store_index": np.arange(n),
    })
    meta = {"classes": classes}
    if input_root is not None:
        for rel in man["source_path"]:
            (input_root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(input_root / rel)
        meta["input_root"] = str(input_root.resolve())
    write_table(man, ws.manifest, meta)
    ws.faces_dir.mkdir(parents=True, exist_ok=True)
    np.save(ws.store, rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8))
    logits = rng.normal(0, 0.5, (n, k))
    logits[np.arange(n), true] += 4
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    preds = pd.DataFrame({"sample_id": ids, "given_label": man["label"], "given_index": given})
    for j, c in enumerate(classes):
        preds[f"p_{c}"] = p[:, j]
        preds[f"mean_p_{c}"] = p[:, j]
    preds["mean_p_given"] = p[np.arange(n), given]
    preds["reliability"] = 0.7
    preds["uncertainty_entropy"] = 0.2
    run = ws.run_dir("r1")
    run.mkdir(parents=True)
    atomic_write_json(run / "config.json", {"classes": classes, "run_id": "r1", "fercure_version": "test"})
    write_table(preds, run / "predictions.parquet", {"run_id": "r1", "classes": classes})
    ws.set_latest_run("r1")
    run_audit(ws, write_report=False)
    return ws


def snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def tamper(ws: Workspace, row: int, **values) -> None:
    """Write crafted values into one row of the manifest and the audit (metadata kept), as a
    downloaded workspace could hold them."""
    for path in (ws.manifest, ws.audit):
        meta = read_metadata(path)
        table = read_table(path)
        for col, v in values.items():
            table.loc[row, col] = v
        write_table(table, path, {k: v for k, v in meta.items() if k not in ("fercure_version", "schema_version")})


# ---------------------------------------------------------------------------------------------
# Data loss


def test_force_never_empties_a_folder_holding_the_users_files(tmp_path):
    project = tmp_path / "project"
    data = project / "data"
    ws = make_ws(project / "ws", input_root=data)
    (project / "notes.txt").write_text("mine")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine too")
    before = snapshot(project), snapshot(foreign)
    for out, why in ((project, "holds the workspace"), (ws.root, "the workspace"), (data.parent, "holds"),
                     (foreign, "did not write")):
        with pytest.raises(ExportError, match=why):
            run_export(ws, out, fmt="imagefolder", force=True)
    # without --force the message does not invite --force for a folder fercure did not write
    with pytest.raises(ExportError) as e:
        run_export(ws, foreign, fmt="imagefolder")
    assert "--force to replace" not in str(e.value) and not isinstance(e.value, OutputExistsError)
    assert (snapshot(project), snapshot(foreign)) == before
    # the CLI: exit 1, everything still there
    invoke("export-cleaned", "-w", ws.root, "-o", project, "--format", "imagefolder", "--force", code=1)
    assert snapshot(project) == before[0]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "hf"])
def test_force_replaces_only_a_file_fercure_wrote(tmp_path, fmt):
    ws = make_ws(tmp_path / "ws")
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    with pytest.raises(ExportError, match="not written by fercure"):
        run_export(ws, mine, fmt=fmt, force=True)
    assert mine.read_text() == "mine"
    out = tmp_path / f"cleaned.{fmt}"
    run_export(ws, out, fmt=fmt)
    run_export(ws, out, fmt=fmt, force=True, policy="drop")  # its own earlier output: replaced


def test_cleanup_touches_only_what_fercure_named_in_a_folder_it_made(tmp_path):
    user = tmp_path / "mine"
    (user / "runs" / "exp1").mkdir(parents=True)
    (user / "runs" / "exp1" / "config.json").write_text('{"lr": 0.1}')
    (user / "draft.tmp").write_text("x")
    (user / ".notes.tmp").write_text("x")
    (user / ".cache.parquet.fercure-ab12.tmp").write_text("x")  # even fercure's name: not its folder
    before = snapshot(user)
    invoke("train", "-w", user, "--device", "cpu", code=1)  # cleans up, then finds no manifest
    ws = Workspace(user)
    assert ws.remove_stale_temps() == 0 and ws.remove_dead_runs() == 0
    assert {k: v for k, v in snapshot(user).items() if k != ".lock"} == before
    # in a workspace fercure made: its own temp files and dead runs go, the user's files stay
    ours = Workspace(tmp_path / "ws")
    assert claim(ours.root) and (ours.root / WORKSPACE_MARKER).is_file()
    with pytest.raises(RuntimeError):
        with atomic_path(ours.root / "manifest.parquet"):
            raise RuntimeError  # atomic_path removes its own temp file...
    (ours.root / ".manifest.parquet.fercure-k3j2x9.tmp").write_text("x")  # ...a SIGKILL would not
    (ours.root / ".notes.tmp").write_text("x")
    dead = ours.run_dir("20260101-000000-resnet18-ab12")
    dead.mkdir(parents=True)
    (dead / "config.json").write_text('{"fercure_version": "0.2"}')
    hand = ours.run_dir("exp1")
    hand.mkdir()
    (hand / "config.json").write_text('{"lr": 0.1}')
    assert ours.remove_stale_temps() == 1 and ours.remove_dead_runs() == 1
    assert (ours.root / ".notes.tmp").exists() and (hand / "config.json").exists() and not dead.exists()


def test_a_failed_prepare_leaves_no_workspace_behind(tmp_path):
    empty = tmp_path / "input"
    empty.mkdir()
    invoke("prepare", empty, "-w", tmp_path / "ws", "--device", "cpu", code=1)
    assert not (tmp_path / "ws").exists()
    existing = tmp_path / "kept"
    existing.mkdir()
    (existing / "mine.txt").write_text("x")
    invoke("prepare", empty, "-w", existing, "--device", "cpu", code=1)
    assert sorted(p.name for p in existing.iterdir()) == [".lock", "mine.txt"]


def test_demo_refuses_a_workspace_inside_its_data_before_writing_there(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels.csv").write_text("path,label\n")
    before = snapshot(data)
    result = invoke("demo", "--data", data, "-w", data / "ws", "--limit", "2", code=1)
    assert "inside the sample data" in result.output and snapshot(data) == before


def test_export_refuses_labels_changed_since_the_audit(tmp_path):
    ws = make_ws(tmp_path / "ws")
    man = read_table(ws.manifest)
    man.loc[:5, "label"] = ["happy", "sad", "surprise", "happy", "sad", "surprise"]  # labels fixed
    write_table(man, ws.manifest, {"classes": ["happy", "sad", "surprise"]})
    for fmt, out in (("parquet", tmp_path / "c.parquet"), ("imagefolder", tmp_path / "img")):
        with pytest.raises(ExportError, match="changed since .*audit-labels"):
            run_export(ws, out, fmt=fmt)
        assert not out.exists()
    man = read_table(make_ws(tmp_path / "ws2").manifest)
    man["store_index"] = man["store_index"].to_numpy()[::-1]  # prepare re-run: crops in another order
    write_table(man, Workspace(tmp_path / "ws2").manifest, {"classes": ["happy", "sad", "surprise"]})
    with pytest.raises(ExportError, match="another crop now"):
        run_export(tmp_path / "ws2", tmp_path / "img2", fmt="imagefolder")


def test_shards_of_edited_labels_are_another_set_and_the_shard_count_is_bounded(tmp_path):
    from fercure.prepare.facepass import PrepareSettings
    from fercure.prepare.shards import shard_set_key
    from fercure.stages.prepare import run_prepare

    samples = pd.DataFrame({"sample_id": ["a", "b"], "label": ["happy", "sad"], "split": "train"})
    edited = samples.assign(label=["sad", "sad"])
    settings = PrepareSettings(48, "keep", "largest", 20.0, 0.9)
    assert shard_set_key(samples, settings, 2) != shard_set_key(edited, settings, 2)
    data = tmp_path / "data"
    for rel in ("happy/a.png", "sad/b.png"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(data / rel)
    with pytest.raises(WorkspaceError, match="at most 2 shards"):
        run_prepare(data, tmp_path / "ws", shard=(0, 20_000_000), device="cpu")


def test_a_label_file_edited_between_shards_never_mixes_in_the_merge(tmp_path, sample_data):
    import shutil

    from fercure.stages.prepare import run_prepare

    data = tmp_path / "data"
    data.mkdir()
    images = sorted((sample_data / "images" / "happy").glob("*.png"))[:3] + \
        sorted((sample_data / "images" / "sad").glob("*.png"))[:3]
    rows = []
    for i, img in enumerate(images):
        shutil.copyfile(img, data / f"{i}.png")
        rows.append((f"{i}.png", img.parent.name))
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in rows))
    ws = Workspace(tmp_path / "ws")
    kw = dict(labels_file=labels, device="cpu", image_size=32)
    run_prepare(data, ws, shard=(0, 2), **kw)
    fixed = [(p, "sad" if c == "happy" else "happy") for p, c in rows]
    labels.write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in fixed))
    s = run_prepare(data, ws, shard=(1, 2), **kw)
    assert not ws.manifest.exists()  # shard 0 holds the old labels: nothing merged
    assert any("prepared from other inputs" in n for n in s.notes)
    run_prepare(data, ws, shard=(0, 2), **kw)  # shard 0 again, on the fixed labels: merged
    man = read_table(ws.manifest)
    assert sorted(zip(man["source_path"], man["label"])) == sorted(fixed)


# ---------------------------------------------------------------------------------------------
# A workspace is data


@pytest.mark.parametrize("fmt", ["imagefolder", "hf"])
def test_a_crafted_sample_id_never_writes_outside_the_output(tmp_path, fmt):
    ws = make_ws(tmp_path / "a" / "b" / "ws")
    tamper(ws, 10, sample_id="../../../escaped/PWNED")
    out = tmp_path / "a" / "b" / ("out" if fmt == "imagefolder" else "out.parquet")
    s = run_export(ws, out, fmt=fmt)
    assert not list(tmp_path.rglob("PWNED*")) and not (tmp_path / "escaped").exists()
    assert any("PWNED" in line and "not a fercure id" in line for line in s.skipped)
    assert s.n_images == s.n_rows - s.actions["drop"] - 1


def test_crafted_source_paths_copy_nothing_from_outside_the_input_root(tmp_path):
    data = tmp_path / "data"
    ws = make_ws(tmp_path / "ws", input_root=data)
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), "red").save(secret)
    victim = tmp_path / "victim" / ".bashrc"
    victim.parent.mkdir()
    victim.write_text("alias ls=ls\n")
    (data / "faces" / "link.png").symlink_to(secret)
    tamper(ws, 3, source_path="../../../../etc/hostname")
    tamper(ws, 4, source_path="faces/link.png")  # a link that leads out of the root
    tamper(ws, 5, sample_id="../../victim/.bashrc", source_path="faces/id005.png")
    out = tmp_path / "out"
    s = run_export(ws, out, fmt="imagefolder", images="originals", link="copy")
    assert victim.read_text() == "alias ls=ls\n"
    copied = {p.read_bytes() for p in out.rglob("*.png")}
    assert secret.read_bytes() not in copied and not list(out.rglob("hostname*"))
    joined = "\n".join(s.skipped)
    assert "etc/hostname" in joined and "faces/link.png" in joined and ".bashrc" in joined
    hf = run_export(ws, tmp_path / "hf.parquet", fmt="hf", images="originals")
    paths = read_table(tmp_path / "hf.parquet")["image"].map(lambda im: im["path"]).tolist()
    assert all(Path(p).resolve().is_relative_to(data.resolve()) for p in paths) and len(hf.skipped) == 3


def test_decisions_files_are_capped_and_read_back_as_the_report_wrote_them(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DecisionsFileError, match="nests"):
        read_decisions(deep)
    wide = tmp_path / "wide.csv"
    wide.write_text("sample_id,action,label\nid001,relabel," + "x" * 200_000 + "\n")
    with pytest.raises(DecisionsFileError, match="row 2"):
        read_decisions(wide)
    big = tmp_path / "big.csv"
    big.write_text("sample_id,action,label\n" + "id001,keep,\n" * 200_000)
    with pytest.raises(DecisionsFileError, match="MB"):
        read_decisions(big, limit=1 << 20)
    evil = '=HYPERLINK("http://example.invalid","x")'
    saved = tmp_path / "d.csv"  # as report.js writes it: the formula cell prefixed with '
    with open(saved, "w", newline="") as f:
        csv.writer(f).writerows([["sample_id", "action", "label", "given_label"], ["a", "relabel", "'" + evil, "happy"]])
    number = tmp_path / "d.json"
    number.write_text(json.dumps([{"sample_id": "b", "action": "relabel", "label": 0}]))
    records = read_decisions(saved) + read_decisions(number)
    d = parse(records, file="d", sample_ids=["a", "b"], given=["happy", "happy"], suggested=[None, None],
              classes=["happy", evil, "0"])
    assert not d.problems and d.table["label"].tolist() == [evil, "0"]


def test_report_js_neutralises_formula_cells():
    js = (Path(__file__).parent.parent / "fercure" / "report" / "report.js").read_text()
    assert "s = \"'\" + s" in js.split("function csvCell", 1)[1].split("\n", 1)[0]


# ---------------------------------------------------------------------------------------------
# Clear errors


def test_a_file_listed_twice_through_a_link_is_one_sample(tmp_path):
    data = tmp_path / "d"
    (data / "happy").mkdir(parents=True)
    (data / "happy" / "a.png").write_bytes(b"x")
    (data / "alias.png").symlink_to(data / "happy" / "a.png")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nhappy/a.png,happy\nalias.png,sad\n")
    samples, rejects = discover(data, labels)
    assert samples["source_path"].tolist() == ["happy/a.png"]
    assert rejects[["row", "problem"]].values.tolist() == [[3, "same file as another sample"]]


def test_a_class_name_fercure_reserves_is_refused_at_prepare(tmp_path):
    for rel in ("given/a.png", "happy/b.png"):
        (tmp_path / "d" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / rel).write_bytes(b"x")
    with pytest.raises(WorkspaceError, match="'given'.*reserve"):
        discover(tmp_path / "d")


def test_a_damaged_or_missing_crop_store_is_refused_not_exported_empty(tmp_path):
    ws = make_ws(tmp_path / "ws")
    np.save(ws.store, np.zeros((10, 16, 16, 3), np.uint8))  # fewer crops than the manifest points at
    with pytest.raises(ExportError, match="holds 10 crops"):
        run_export(ws, tmp_path / "a", fmt="imagefolder")
    ws.store.unlink()
    for fmt, out in (("imagefolder", tmp_path / "b"), ("hf", tmp_path / "b.parquet")):
        with pytest.raises(ExportError, match="crops.npy does not exist"):
            run_export(ws, out, fmt=fmt)
        assert not out.exists()
    invoke("export-cleaned", "-w", ws.root, "-o", tmp_path / "c", "--format", "imagefolder", code=1)


def test_an_audit_resaved_without_its_metadata_is_refused(tmp_path):
    ws = make_ws(tmp_path / "ws")
    pd.read_parquet(ws.audit).to_parquet(ws.audit)  # pandas keeps the rows, drops fercure's metadata
    with pytest.raises(ExportError, match="no fercure audit metadata"):
        run_export(ws, tmp_path / "c.parquet")


def test_a_long_class_name_is_exported_under_a_safe_folder_name(tmp_path):
    from torchvision.datasets import ImageFolder

    long = "x" * 300
    classes = [".hidden", "__pycache__", long, "happy/sad"]
    ws = make_ws(tmp_path / "ws", classes=classes)
    out = tmp_path / "out"
    s = run_export(ws, out, fmt="imagefolder")
    mapping = json.loads((out / "classes.json").read_text())["classes"]
    assert [m["name"] for m in mapping] == classes
    folders = [m["folder"] for m in mapping]
    assert all(not f.startswith((".", "_")) and len(f.encode()) <= 120 for f in folders)
    ds = ImageFolder(str(out / "train"))
    assert len(ds) == s.n_images and sorted(ds.classes) == sorted(folders)
    for m in mapping:
        assert ds.class_to_idx[m["folder"]] == m["imagefolder_index"]
    import datasets

    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert len(loaded) == s.n_images


# ---------------------------------------------------------------------------------------------
# Decisions that do not apply, weak drops, class indices, ignored options


def test_an_export_whose_decisions_all_fail_exits_non_zero_and_strict_fails_on_any(tmp_path):
    ws = make_ws(tmp_path / "ws")
    bad = tmp_path / "bad.csv"
    bad.write_text("sample_id,action,label\nnope,drop,\nnope2,keep,\n")
    with pytest.raises(ExportError, match="None of the 2"):
        run_export(ws, tmp_path / "c.parquet", decisions=bad)
    assert not (tmp_path / "c.parquet").exists()
    invoke("export-cleaned", "-w", ws.root, "-o", tmp_path / "c.parquet", "--decisions", bad, code=1)
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("sample_id,action,label\nid010,drop,\nnope,keep,\n")
    s = run_export(ws, tmp_path / "c.parquet", decisions=mixed)
    assert s.decided_by_reviewer == 1 and len(s.decision_problems) == 1
    invoke("export-cleaned", "-w", ws.root, "-o", tmp_path / "d.parquet", "--decisions", mixed, "--strict", code=1)
    assert not (tmp_path / "d.parquet").exists()


def test_drop_on_a_weak_model_needs_an_explicit_choice(tmp_path):
    ws = make_ws(tmp_path / "ws")
    meta = read_metadata(ws.audit)
    meta["stats"]["model_strength"] = {"verdict": "weak"}
    write_table(read_table(ws.audit), ws.audit, meta, table=schema.AUDIT)
    with pytest.raises(ExportError, match="weak.*--allow-weak-drop"):
        run_export(ws, tmp_path / "c.parquet", policy="drop")
    s = run_export(ws, tmp_path / "c.parquet", policy="drop", allow_weak_drop=True)
    assert s.actions["drop"] > 0 and "--allow-weak-drop" in s.warning
    invoke("export-cleaned", "-w", ws.root, "-o", tmp_path / "d.parquet", "--policy", "drop", code=1)
    run_export(ws, tmp_path / "e.parquet", policy="relabel")  # no drop: nothing to choose


def test_class_indices_agree_between_imagefolder_and_hf_when_a_class_is_emptied(tmp_path):
    from torchvision.datasets import ImageFolder

    ws = make_ws(tmp_path / "ws")
    base = read_table(run_export(ws, tmp_path / "base.parquet").output)
    emptied = tmp_path / "d.csv"
    emptied.write_text("sample_id,action,label\n" + "".join(
        f"{sid},drop,\n" for sid in base.loc[base["clean_label"] == "sad", "sample_id"]))
    import pyarrow.parquet as pq

    s = run_export(ws, tmp_path / "img", fmt="imagefolder", decisions=emptied)
    assert "'sad'" in s.warning and "allow_empty=True" in s.warning
    run_export(ws, tmp_path / "hf.parquet", fmt="hf", decisions=emptied)
    ds = ImageFolder(str(tmp_path / "img" / "train"), allow_empty=True)
    hf = json.loads(pq.read_schema(tmp_path / "hf.parquet").metadata[b"huggingface"])
    names = hf["info"]["features"]["label"]["names"]
    assert ds.classes == names == ["happy", "sad", "surprise"]
    assert ds.class_to_idx["surprise"] == names.index("surprise") == 2


def test_options_that_have_no_effect_are_said(tmp_path):
    ws = make_ws(tmp_path / "ws")
    s = run_export(ws, tmp_path / "c.parquet", images="originals")
    assert "--images originals has no effect" in s.warning
    s = run_export(ws, tmp_path / "img", fmt="imagefolder", link="copy")
    assert "--link copy has no effect" in s.warning
    assert run_export(ws, tmp_path / "d.parquet").warning is None


def test_drop_on_a_too_weak_model_says_it_dropped_nothing(tmp_path):
    ws = make_ws(tmp_path / "ws")
    meta = read_metadata(ws.audit)
    meta["stats"]["model_strength"] = {"verdict": "too_weak"}
    write_table(read_table(ws.audit), ws.audit, meta, table=schema.AUDIT)
    flagged = int(read_table(ws.audit)["is_label_issue"].fillna(False).sum())
    s = run_export(ws, tmp_path / "c.parquet", policy="drop")
    assert s.actions.get("drop", 0) == 0
    assert f"dropped none of the {flagged:,} rows the audit flagged" in s.warning
    assert "too weak" in s.warning

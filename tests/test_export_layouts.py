"""Exports other tools load without glue: an ImageFolder tree (torchvision's real loader and the
datasets imagefolder builder), a Hugging Face Parquet (datasets.load_dataset), and CSVs whose
untrusted cells cannot run as spreadsheet formulas."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_export import CLASSES, make_workspace

from fercure.export import neutralise_formulas
from fercure.stages.audit import run_audit
from fercure.stages.export import ExportError, OutputExistsError, read_provenance, run_export
from fercure.workspace import read_metadata, read_table, write_table

# The datasets loaders read local files only: never wait on the Hub (offline CI, sandboxes).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

EVIL = '=HYPERLINK("http://example.invalid","x")'


@pytest.fixture
def ws_with_originals(tmp_path):
    """The synthetic workspace of test_export, with the original image files on disk and the input
    root in the manifest's metadata (as prepare records it); one file is named like a formula."""
    ws = make_workspace(tmp_path / "ws")
    root = tmp_path / "input"
    man = read_table(ws.manifest)
    man.loc[3, "source_path"] = f"faces/{EVIL}.png"
    rng = np.random.default_rng(1)
    for rel in man["source_path"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / rel)
    write_table(man, ws.manifest, {**read_metadata(ws.manifest), "input_root": str(root.resolve())})
    run_audit(ws, write_report=False)
    return ws, root


def tree_digest(root: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_imagefolder_of_crops_loads_in_torchvision(ws_with_originals, tmp_path):
    from torchvision.datasets import ImageFolder

    ws, root = ws_with_originals
    before = tree_digest(root)
    out = tmp_path / "out"
    s = run_export(ws, out, fmt="imagefolder")
    cleaned = run_export(ws, tmp_path / "c.parquet")
    table = read_table(cleaned.output)
    kept = table[table["clean_label"].notna()]
    assert s.n_images == len(kept) == s.n_rows - s.actions["drop"] and not s.skipped

    ds = ImageFolder(str(out / "train"))
    assert len(ds) == len(kept) and set(ds.classes) <= set(CLASSES)
    index = pd.read_csv(out / "index.csv", keep_default_na=False)
    store = np.load(ws.store)
    by_file = index.set_index("file")
    for path, target in ds.samples:
        row = by_file.loc[Path(path).relative_to(out).as_posix()]
        assert ds.classes[target] == row["clean_label"]
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), store[int(row["store_index"])])
    assert set(index["sample_id"]) == set(kept["sample_id"])  # dropped rows are left out
    prov = read_provenance(out)
    assert prov["input_root"] == str(root.resolve()) and Path(prov["input_root"]).is_absolute()
    assert prov["crop_store"] == str(ws.store.resolve()) and prov["images"] == "crops"
    assert tree_digest(root) == before  # inputs untouched


@pytest.mark.parametrize("link", ["symlink", "copy"])
def test_imagefolder_of_originals_links_or_copies(ws_with_originals, tmp_path, link):
    from torchvision.datasets import ImageFolder

    ws, root = ws_with_originals
    out = tmp_path / f"out-{link}"
    s = run_export(ws, out, fmt="imagefolder", images="originals", link=link)
    ds = ImageFolder(str(out / "train"))
    assert len(ds) == s.n_images > 0
    index = pd.read_csv(out / "index.csv", keep_default_na=False).set_index("file")
    for path, _ in ds.samples:
        src = root / index.loc[Path(path).relative_to(out).as_posix(), "source_path"]
        assert Path(path).is_symlink() == (link == "symlink")
        assert Path(path).read_bytes() == src.read_bytes()
        assert ds.loader(path).size == (24, 20)


def test_a_missing_original_is_reported_and_the_rest_exported(ws_with_originals, tmp_path):
    ws, root = ws_with_originals
    victim = root / "faces" / "id000.png"
    victim.unlink()
    s = run_export(ws, tmp_path / "out", fmt="imagefolder", images="originals")
    assert len(s.skipped) == 1 and str(victim) in s.skipped[0] and "gone" in s.skipped[0]
    assert s.n_images == s.n_rows - s.actions["drop"] - 1


def test_imagefolder_output_is_replaced_only_with_force_and_never_inside_the_input(ws_with_originals, tmp_path):
    ws, root = ws_with_originals
    out = tmp_path / "out"
    run_export(ws, out, fmt="imagefolder")
    (out / "mine.txt").write_text("inside an earlier export")
    with pytest.raises(OutputExistsError, match="--force"):
        run_export(ws, out, fmt="imagefolder")
    assert (out / "mine.txt").exists()
    (out / "mine.txt").unlink()
    run_export(ws, out, fmt="imagefolder", force=True)  # an earlier fercure export is replaced as a whole
    assert (out / "index.csv").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temp folder left
    with pytest.raises(ExportError, match="input folder"):
        run_export(ws, root / "export", fmt="imagefolder")


def test_force_refuses_an_earlier_export_holding_files_it_did_not_write(ws_with_originals, tmp_path):
    ws, _ = ws_with_originals
    out = tmp_path / "out"
    run_export(ws, out, fmt="imagefolder")
    index = pd.read_csv(out / "index.csv", dtype=str, keep_default_na=False)
    a_class = Path(index["file"].iloc[0]).parent
    (out / "notes.txt").write_text("my notes")
    (out / a_class / "extra.png").write_bytes(b"mine")
    (out / a_class.parent / "my_class" / "deep").mkdir(parents=True)
    (out / a_class.parent / "my_class" / "deep" / "x.png").write_bytes(b"mine")
    before = tree_digest(out)
    with pytest.raises(ExportError) as e:
        run_export(ws, out, fmt="imagefolder", force=True)
    text = str(e.value)
    assert "3 file(s) or folder(s) that its earlier export did not write" in text
    for shown in ("notes.txt", f"{(a_class / 'extra.png').as_posix()}", f"{(a_class.parent / 'my_class').as_posix()}/"):
        assert f"  {shown}" in text
    assert tree_digest(out) == before  # nothing deleted


def test_csv_exports_neutralise_formulas(ws_with_originals, tmp_path):
    ws, _ = ws_with_originals
    out = tmp_path / "cleaned.csv"
    run_export(ws, out, fmt="csv")
    raw = out.read_text(encoding="utf-8")
    assert f"'faces/{EVIL}" not in raw  # the path starts with faces/: not a formula, left alone
    cells = pd.read_csv(out, keep_default_na=False)
    assert f"faces/{EVIL}.png" in set(cells["source_path"])
    run_export(ws, tmp_path / "if", fmt="imagefolder", images="originals")
    assert (tmp_path / "if" / "index.csv").exists()


def test_neutralise_formulas_prefixes_only_text_a_spreadsheet_would_run():
    df = pd.DataFrame({"source_path": [f"{EVIL}.png", "happy/a.png", "+cmd", "-2+3", "@SUM(A1)", "\tx"],
                       "score": [-1.0, 0.5, 0.2, 0.1, 0.0, 1.0]})
    out = neutralise_formulas(df)
    assert out["source_path"].tolist() == [f"'{EVIL}.png", "happy/a.png", "'+cmd", "'-2+3", "'@SUM(A1)", "'\tx"]
    assert out["score"].tolist() == df["score"].tolist()  # numbers untouched
    assert df["source_path"].iloc[0] == f"{EVIL}.png"  # input not modified


def test_a_formula_at_the_start_of_a_cell_is_neutralised_in_the_csv(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    man = read_table(ws.manifest)
    man.loc[0, "source_path"] = f"{EVIL}.png"
    write_table(man, ws.manifest, read_metadata(ws.manifest))
    run_audit(ws, write_report=False)
    run_export(ws, tmp_path / "c.csv", fmt="csv")
    run_export(ws, tmp_path / "c.parquet")
    csv = pd.read_csv(tmp_path / "c.csv", keep_default_na=False)
    assert csv["source_path"].iloc[0] == f"'{EVIL}.png"
    assert read_table(tmp_path / "c.parquet")["source_path"].iloc[0] == f"{EVIL}.png"  # Parquet keeps values


def test_cleaned_parquet_names_its_input_root_and_carries_store_index(ws_with_originals, tmp_path):
    ws, root = ws_with_originals
    s = run_export(ws, tmp_path / "c.parquet")
    prov = read_provenance(s.output)
    assert prov["input_root"] == str(root.resolve()) and prov["crop_store"] == str(ws.store.resolve())
    table = read_table(s.output)
    man = read_table(ws.manifest)
    assert table["store_index"].tolist() == man["store_index"].tolist()
    assert (root / table["source_path"].iloc[0]).is_file()  # source_path resolves against input_root


def test_hf_parquet_of_crops_loads_with_datasets(ws_with_originals, tmp_path):
    datasets = pytest.importorskip("datasets", reason="the optional `hf` extra (pip install fercure[hf]) is not installed")
    ws, _ = ws_with_originals
    out = tmp_path / "hf.parquet"
    s = run_export(ws, out, fmt="hf")
    ds = datasets.load_dataset("parquet", data_files=str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == s.n_images > 0
    assert ds.features["label"].names == CLASSES
    store = np.load(ws.store)
    for row in ds.select(range(5)):
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), store[row["store_index"]])
        assert ds.features["label"].int2str(row["label"]) == row["clean_label"]
    assert read_provenance(out)["input_root"]


def test_hf_parquet_of_originals_points_at_absolute_paths(ws_with_originals, tmp_path):
    datasets = pytest.importorskip("datasets", reason="the optional `hf` extra is not installed")
    ws, root = ws_with_originals
    out = tmp_path / "hf.parquet"
    run_export(ws, out, fmt="hf", images="originals")
    ds = datasets.load_dataset("parquet", data_files=str(out), split="train", cache_dir=str(tmp_path / "cache"))
    row = ds[0]
    assert row["image"].size == (24, 20)
    assert os.path.isabs(ds.cast_column("image", datasets.Image(decode=False))[0]["image"]["path"])


def test_imagefolder_loads_with_the_datasets_imagefolder_builder(ws_with_originals, tmp_path):
    datasets = pytest.importorskip("datasets", reason="the optional `hf` extra is not installed")
    ws, _ = ws_with_originals
    out = tmp_path / "out"
    s = run_export(ws, out, fmt="imagefolder")
    ds = datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(tmp_path / "cache"))
    assert list(ds) == ["train"] and len(ds["train"]) == s.n_images
    names = ds["train"].features["label"].names
    index = pd.read_csv(out / "index.csv", keep_default_na=False)
    assert sorted(names) == sorted(set(index["clean_label"]))


def _decide(ws, tmp_path):
    """A decisions file over the relabel policy's result: relabel a kept sample to another class,
    drop another kept sample, keep (at its given label) a sample fercure relabelled."""
    base = read_table(run_export(ws, tmp_path / "base.parquet").output).set_index("sample_id")
    kept = base.index[base["action"] == "keep"]
    relabelled = base.index[base["action"] == "relabel"]
    assert len(kept) >= 2 and len(relabelled) >= 1
    moved, dropped, restored = kept[0], kept[1], relabelled[0]
    new_class = next(c for c in CLASSES if c != base.at[moved, "given_label"])
    decisions = tmp_path / "decisions.csv"
    decisions.write_text(f"sample_id,action,label\n{moved},relabel,{new_class}\n{dropped},drop,\n"
                         f"{restored},keep,\n", encoding="utf-8")
    return base, decisions, moved, new_class, dropped, restored


def test_decisions_apply_to_the_imagefolder(ws_with_originals, tmp_path):
    ws, _ = ws_with_originals
    base, decisions, moved, new_class, dropped, restored = _decide(ws, tmp_path)
    plain = run_export(ws, tmp_path / "plain", fmt="imagefolder")
    out = tmp_path / "out"
    s = run_export(ws, out, fmt="imagefolder", decisions=decisions)
    assert s.decided_by_reviewer == 3 and not s.decision_problems
    assert s.n_images == plain.n_images - 1 and s.actions["drop"] == plain.actions["drop"] + 1
    index = pd.read_csv(out / "index.csv", keep_default_na=False).set_index("sample_id")
    assert dropped not in index.index and not list(out.rglob(f"{dropped}.png"))
    split = index.at[moved, "split"]
    assert index.at[moved, "file"] == f"{split}/{new_class}/{moved}.png" and (out / index.at[moved, "file"]).is_file()
    assert index.at[moved, "clean_label"] == new_class and index.at[moved, "action"] == "relabel"
    given = base.at[restored, "given_label"]
    assert given != base.at[restored, "clean_label"]
    assert index.at[restored, "file"].endswith(f"/{given}/{restored}.png") and index.at[restored, "action"] == "keep"
    assert index.loc[[moved, restored], "decided_by"].tolist() == ["reviewer", "reviewer"]
    assert (index["decided_by"] == "fercure").sum() == len(index) - 2
    prov = read_provenance(out)
    assert prov["decided_by"]["reviewer"] == 3 and prov["decisions"]["applied"] == 3
    assert prov["decisions"]["file"] == str(decisions)


def test_decisions_apply_to_the_hf_parquet(ws_with_originals, tmp_path):
    ws, _ = ws_with_originals
    _, decisions, moved, new_class, dropped, restored = _decide(ws, tmp_path)
    out = tmp_path / "hf.parquet"
    s = run_export(ws, out, fmt="hf", decisions=decisions)
    table = read_table(out).set_index("sample_id")
    assert dropped not in table.index and len(table) == s.n_images
    assert table.at[moved, "label"] == CLASSES.index(new_class) and table.at[moved, "decided_by"] == "reviewer"
    assert table.at[restored, "decided_by"] == "reviewer" and table.at[restored, "action"] == "keep"
    assert (table["decided_by"] == "fercure").sum() == len(table) - 2
    assert read_provenance(out)["decisions"]["applied"] == 3


def test_a_decisions_file_inside_the_imagefolder_output_is_refused(ws_with_originals, tmp_path):
    ws, _ = ws_with_originals
    out = tmp_path / "out"
    run_export(ws, out, fmt="imagefolder")
    decisions = out / "decisions.csv"
    decisions.write_text("sample_id,action,label\nid000,drop,\n", encoding="utf-8")
    with pytest.raises(ExportError, match="holds the --decisions file"):
        run_export(ws, out, fmt="imagefolder", decisions=decisions, force=True)
    assert decisions.is_file()


def test_json_summary_of_an_imagefolder_export_counts_decisions(ws_with_originals, tmp_path):
    import json

    from typer.testing import CliRunner

    from fercure.cli import app

    ws, _ = ws_with_originals
    _, decisions, *_ = _decide(ws, tmp_path)
    decisions.write_text(decisions.read_text() + "ghost,drop,\n", encoding="utf-8")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["export-cleaned", "-w", str(ws.root), "-o", str(out),
                                      "--format", "imagefolder", "--decisions", str(decisions), "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["decided_by_reviewer"] == 3 and data["n_images"] > 0
    assert len(data["decision_problems"]) == 1 and "ghost" in data["decision_problems"][0]
    assert data["warning"].startswith("1 decision(s) were not applied")
    assert data["outputs"][0] == str(out)

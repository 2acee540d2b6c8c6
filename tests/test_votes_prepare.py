"""Several labels per image (long and wide vote files) and photos without labels, through prepare."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fercure.stages import prepare as prep
from fercure.workspace import Workspace, WorkspaceError, read_metadata, read_table, sample_id

CLASSES = ["angry", "happy", "sad"]


@pytest.fixture()
def photos(tmp_path: Path, sample_data: Path) -> Path:
    """A flat folder of 9 real FER crops (3 per class in sample_data), no class folders."""
    root = tmp_path / "photos"
    root.mkdir()
    for cls in CLASSES:
        for img in sorted((sample_data / "images" / cls).glob("*.png"))[:3]:
            shutil.copyfile(img, root / f"{cls}_{img.name}")
    return root


def _run(root: Path, ws: Path, **kw):
    return prep.run_prepare(root, ws, device="cpu", image_size=32, **kw)


def test_long_vote_file_keeps_every_annotation_and_labels_by_majority(photos: Path, tmp_path: Path):
    names = sorted(p.name for p in photos.iterdir())
    rows = []
    for i, name in enumerate(names):
        # a and b agree on the image's class; c says sad on every image; d labels only the first three
        truth = name.split("_")[0]
        rows += [(name, "a", truth), (name, "b", truth), (name, "c", "sad")]
        if i < 3:
            rows.append((name, "d", "happy"))
    rows.append((names[0], "a", "happy"))  # annotator a again on the same image: rejected
    votes = tmp_path / "votes.csv"
    pd.DataFrame(rows, columns=["path", "annotator", "label"]).to_csv(votes, index=False)
    ws = Workspace(tmp_path / "ws")
    summary = _run(photos, ws.root, labels_file=votes)
    manifest = read_table(ws.manifest).set_index("source_path")
    ann = read_table(ws.annotations)
    assert len(ann) == 9 * 3 + 3 and sorted(ann["annotator"].unique()) == ["a", "b", "c", "d"]
    assert (ann["votes"] == 1.0).all()
    rejects = read_table(ws.rejects)
    assert rejects["problem"].tolist() == ["duplicate annotation"] and rejects["row"].tolist() == [len(rows) + 1]
    for name in names:
        truth = name.split("_")[0]
        assert manifest.loc[name, "label"] == truth
    # angry images 0-2 got a, b: angry; c: sad; d: happy -> 2 of 4
    first = names[0]
    assert manifest.loc[first, "n_votes"] == 4 and manifest.loc[first, "agreement"] == pytest.approx(0.5)
    sad = [n for n in names if n.startswith("sad")][0]
    assert manifest.loc[sad, "agreement"] == pytest.approx(1.0)
    happy = [n for n in names if n.startswith("happy")][0]
    assert manifest.loc[happy, "agreement"] == pytest.approx(2 / 3)
    assert read_metadata(ws.manifest)["annotations"] == {"kind": "long", "n": 30, "annotators": 4}
    assert summary.n_rejects == 1


def test_wide_vote_counts_tie_break_and_fer_plus_columns(photos: Path, tmp_path: Path):
    names = sorted(p.name for p in photos.iterdir())
    counts = {n: [0, 0, 0] for n in names}
    counts[names[0]] = [4, 4, 2]   # a tie angry/happy: happy has more votes overall -> happy
    counts[names[1]] = [7, 0, 3]
    counts[names[2]] = [0, 0, 0]   # no votes: rejected
    for n in names[3:]:
        counts[n] = [0, 6, 4] if n.startswith("happy") else [1, 0, 9]
    df = pd.DataFrame({"path": names, "fer2013_row": np.arange(len(names)) * 1000,
                       **{c: [counts[n][k] for n in names] for k, c in enumerate(CLASSES)}})
    votes = tmp_path / "votes.csv"
    df.to_csv(votes, index=False)
    ws = Workspace(tmp_path / "ws")
    _run(photos, ws.root, labels_file=votes)
    manifest = read_table(ws.manifest).set_index("source_path")
    assert read_metadata(ws.manifest)["classes"] == CLASSES  # fer2013_row is id-like, not a class
    assert manifest.loc[names[0], "label"] == "happy" and manifest.loc[names[0], "agreement"] == pytest.approx(0.4)
    assert manifest.loc[names[1], "label"] == "angry" and manifest.loc[names[1], "n_votes"] == 10
    assert names[2] not in manifest.index
    assert read_table(ws.rejects)["problem"].tolist() == ["no votes"]
    ann = read_table(ws.annotations)
    one = ann[ann["sample_id"] == sample_id(names[1])].set_index("label")["votes"].to_dict()
    assert one == {"angry": 7.0, "sad": 3.0} and set(ann["annotator"]) == {""}


def test_no_labels_prepares_a_flat_folder_and_train_and_audit_refuse(photos: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from fercure.cli import app

    with pytest.raises(WorkspaceError):
        _run(photos, tmp_path / "plain")  # without --no-labels a flat folder has no labels to read
    ws = Workspace(tmp_path / "ws")
    summary = _run(photos, ws.root, no_labels=True)
    manifest = read_table(ws.manifest)
    assert summary.n_samples == len(manifest) == 9 and summary.class_counts == {}
    assert manifest["label"].isna().all()
    assert set(manifest["face_status"]) <= {"ok", "no_face", "low_confidence", "too_small", "duplicate"}
    assert (manifest["store_index"] >= 0).sum() == 9 and len(np.load(ws.store)) == 9
    meta = read_metadata(ws.manifest)
    assert meta["no_labels"] is True and meta["classes"] == []
    runner = CliRunner()
    for args in (["train", "-w", str(ws.root), "--device", "cpu"], ["audit-labels", "-w", str(ws.root)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 1, res.output
        out = " ".join(res.output.split())
        assert "needs labels" in out and "--no-labels" in out and "--labels FILE" in out
    assert not ws.runs_dir.exists()


def test_labels_joined_later_reuse_the_crops(photos: Path, tmp_path: Path):
    ws = Workspace(tmp_path / "ws")
    _run(photos, ws.root, no_labels=True)
    before = read_table(ws.manifest).set_index("sample_id")
    crops_before = np.load(ws.store)
    names = sorted(p.name for p in photos.iterdir())
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"path": names, "label": [n.split("_")[0] for n in names]}).to_csv(labels, index=False)
    summary = _run(photos, ws.root, labels_file=labels)
    assert summary.n_reused == 9  # no image was decoded or detected again
    after = read_table(ws.manifest).set_index("sample_id")
    assert after["label"].to_dict() == {sample_id(n): n.split("_")[0] for n in names}
    assert read_metadata(ws.manifest)["classes"] == CLASSES and "no_labels" not in read_metadata(ws.manifest)
    crops_after = np.load(ws.store)
    for sid in after.index:
        assert np.array_equal(crops_after[after.at[sid, "store_index"]], crops_before[before.at[sid, "store_index"]])
    assert after["face_status"].to_dict() == before["face_status"].to_dict()


def test_no_labels_summary_lists_the_face_problems(tmp_path: Path, sample_data: Path):
    from PIL import Image

    root = tmp_path / "photos"
    root.mkdir()
    for img in sorted((sample_data / "images" / "happy").glob("*.png"))[:2]:
        shutil.copyfile(img, root / img.name)
    Image.new("RGB", (64, 64), (120, 120, 120)).save(root / "grey_wall.png")  # no face in it
    summary = _run(root, tmp_path / "ws", no_labels=True)
    note = next(n for n in summary.notes if n.startswith("Face problems"))
    assert note.startswith("Face problems in 1 of 3 photos (no_face: 1): grey_wall.png (no_face")
    assert "manifest.parquet (face_status, reason)" in note


def test_long_vote_file_rejects_a_look_alike_spelling_of_a_class(photos: Path, tmp_path: Path):
    names = sorted(p.name for p in photos.iterdir())
    rows = [(n, who, n.split("_")[0]) for n in names for who in ("a", "b")] + [(names[0], "c", "Angry")]
    votes = tmp_path / "votes.csv"
    pd.DataFrame(rows, columns=["path", "annotator", "label"]).to_csv(votes, index=False)
    ws = Workspace(tmp_path / "ws")
    _run(photos, ws.root, labels_file=votes)
    rejects = read_table(ws.rejects)
    assert rejects["problem"].tolist() == ["look-alike label"] and rejects["row"].tolist() == [len(rows) + 1]
    assert read_metadata(ws.manifest)["classes"] == CLASSES
    assert len(read_table(ws.annotations)) == 2 * len(names)


def test_wide_vote_file_in_parquet_reads_like_csv(photos: Path, tmp_path: Path):
    from fercure.votes import read_vote_file, sniff

    names = sorted(p.name for p in photos.iterdir())
    df = pd.DataFrame({"image": names, "split": ["train"] * 8 + ["test"],
                       "angry": [3.0] * 9, "happy": [0.5] * 9, "sad": [6.5] * 9})
    df.to_parquet(tmp_path / "votes.parquet")
    df.to_csv(tmp_path / "votes.csv", index=False)
    assert sniff(tmp_path / "votes.parquet") == sniff(tmp_path / "votes.csv") == "wide"
    a = read_vote_file(photos, tmp_path / "votes.parquet")
    b = read_vote_file(photos, tmp_path / "votes.csv")
    pd.testing.assert_frame_equal(a.samples, b.samples)
    assert a.samples["label"].tolist() == ["sad"] * 9 and a.samples["split"].tolist()[-1] == "test"
    assert np.allclose(a.samples["agreement"], 0.65) and a.classes == CLASSES
    # rows: Parquet counts from 1, CSV from 2 (the header is row 1)
    assert a.annotations["row"].min() == 1 and b.annotations["row"].min() == 2


def test_vote_file_refuses_a_reserved_class_name(photos: Path, tmp_path: Path):
    from fercure.votes import read_vote_file

    names = sorted(p.name for p in photos.iterdir())
    pd.DataFrame({"path": names, "given": [3] * 9, "happy": [1] * 9}).to_csv(tmp_path / "votes.csv", index=False)
    with pytest.raises(WorkspaceError, match="'given'.*reserve"):
        read_vote_file(photos, tmp_path / "votes.csv")

"""prepare as a stage: every row kept, crops line up with the manifest, resume and reuse."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fercure.prepare import facepass
from fercure.stages import prepare as prep
from fercure.workspace import Workspace, read_table

CLASSES = ["angry", "happy", "sad"]


@pytest.fixture()
def small_input(tmp_path: Path, sample_data: Path) -> Path:
    """A folder of 4 real FER crops per class, plus a copy of one image under another class."""
    root = tmp_path / "data"
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for img in sorted((sample_data / "images" / cls).glob("*.png"))[:4]:
            shutil.copyfile(img, root / cls / img.name)
    # The same pixels under two labels: a duplicate whose labels conflict.
    first_happy = sorted((root / "happy").glob("*.png"))[0]
    shutil.copyfile(first_happy, root / "sad" / "copy_of_happy.png")
    return root


def run(root: Path, ws: Path, **kw):
    return prep.run_prepare(root, ws, device="cpu", image_size=32, **kw)


def table_without_times(ws: Path) -> pd.DataFrame:
    return read_table(Workspace(ws).manifest)


def test_rows_statuses_and_store(small_input: Path, tmp_path: Path):
    ws = tmp_path / "ws"
    summary = run(small_input, ws)
    manifest = table_without_times(ws)
    assert summary.n_samples == len(manifest) == 13
    crops = np.load(Workspace(ws).store)
    has = manifest["store_index"] >= 0
    assert crops.shape == (int(has.sum()), 32, 32, 3)
    # store_index is a permutation of 0..n-1 over the rows that have a crop
    assert sorted(manifest.loc[has, "store_index"]) == list(range(int(has.sum())))
    copy = manifest[manifest["source_path"] == "sad/copy_of_happy.png"].iloc[0]
    assert copy["face_status"] == "duplicate"
    orig = manifest[manifest["sample_id"] == copy["duplicate_of"]].iloc[0]
    assert orig["label"] == "happy" and "mislabelled" in copy["reason"]
    assert summary.conflicting_duplicates == 1
    # the crop of a duplicate is the crop of its original
    assert np.array_equal(crops[copy["store_index"]], crops[orig["store_index"]])


def test_rerun_reuses_and_adds_only_new(small_input: Path, tmp_path: Path, sample_data: Path):
    ws = tmp_path / "ws"
    run(small_input, ws)
    first = table_without_times(ws)
    again = run(small_input, ws)
    assert again.n_reused == 13
    pd.testing.assert_frame_equal(first, table_without_times(ws))

    new = sorted((sample_data / "images" / "happy").glob("*.png"))[-1]
    shutil.copyfile(new, small_input / "happy" / "zz_new.png")
    third = run(small_input, ws)
    assert third.n_reused == 13 and third.n_samples == 14
    manifest = table_without_times(ws)
    assert manifest["sample_id"].is_unique and len(manifest) == 14
    crops = np.load(Workspace(ws).store)
    # old rows keep identical crops after the store was rewritten
    old_crops = {r.sample_id: r.store_index for r in first.itertuples()}
    # the first run's store was rewritten: compare old rows' crops against a fresh run instead
    fresh = tmp_path / "fresh"
    run(small_input, fresh)
    fresh_manifest = table_without_times(fresh)
    fresh_crops = np.load(Workspace(fresh).store)
    a = manifest.set_index("sample_id")
    b = fresh_manifest.set_index("sample_id")
    for sid in old_crops:
        ia, ib = a.at[sid, "store_index"], b.at[sid, "store_index"]
        assert (ia >= 0) == (ib >= 0)
        if ia >= 0:
            assert np.array_equal(crops[ia], fresh_crops[ib])


def test_interrupted_run_resumes_to_same_result(small_input: Path, tmp_path: Path, monkeypatch):
    reference = tmp_path / "reference"
    run(small_input, reference, chunk_size=4)

    ws = tmp_path / "ws"
    real = facepass._process_chunk
    calls = {"n": 0}

    def dies_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(facepass, "_process_chunk", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        run(small_input, ws, chunk_size=4)
    assert not Workspace(ws).manifest.exists()
    assert len(list(Workspace(ws).prepare_parts.rglob("*.parquet"))) == 2

    monkeypatch.setattr(facepass, "_process_chunk", real)
    run(small_input, ws, chunk_size=4)
    assert not Workspace(ws).prepare_parts.exists()
    pd.testing.assert_frame_equal(table_without_times(reference), table_without_times(ws))
    assert np.array_equal(np.load(Workspace(reference).store), np.load(Workspace(ws).store))


def test_nothing_written_into_input(small_input: Path, tmp_path: Path):
    before = sorted(p.relative_to(small_input) for p in small_input.rglob("*"))
    run(small_input, tmp_path / "ws")
    assert sorted(p.relative_to(small_input) for p in small_input.rglob("*")) == before


def test_non_utf8_names_and_unusable_files(tmp_path: Path, sample_data: Path):
    root = tmp_path / "data"
    (root / "happy").mkdir(parents=True)
    img = sorted((sample_data / "images" / "happy").glob("*.png"))[0]
    odd = os.fsdecode(b"caf\xe9.png")  # latin-1 byte: not valid UTF-8
    shutil.copyfile(img, root / "happy" / odd)
    (root / "happy" / "empty.png").write_bytes(b"")
    summary = run(root, tmp_path / "ws")
    manifest = table_without_times(tmp_path / "ws")
    assert summary.n_samples == 2
    by_status = manifest.set_index("face_status")
    assert by_status.loc["unreadable", "source_path"] == "happy/empty.png"
    usable = manifest[manifest["store_index"] >= 0].iloc[0]
    assert usable["source_path"] == "happy/caf\\xe9.png"  # readable, escaped form in the table


def test_no_usable_image_is_an_error_but_rows_are_kept(tmp_path: Path):
    root = tmp_path / "data"
    (root / "sad").mkdir(parents=True)
    (root / "sad" / "a.png").write_bytes(b"")
    (root / "sad" / "b.jpg").write_text("<html>not found</html>")
    with pytest.raises(prep.WorkspaceError, match="None of the 2 images"):
        run(root, tmp_path / "ws")
    manifest = table_without_times(tmp_path / "ws")
    assert sorted(manifest["face_status"]) == ["unreadable", "unreadable"]
    assert manifest["reason"].str.len().min() > 0


def _bmp(path: Path, value: int) -> None:
    """An uncompressed image: a file of the same size whatever its pixels."""
    from PIL import Image

    rng = np.random.default_rng(value)
    pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="BMP")


def test_a_file_rewritten_with_the_same_size_and_mtime_gets_a_new_crop(tmp_path: Path):
    root = tmp_path / "data"
    for cls in ("happy", "sad"):
        (root / cls).mkdir(parents=True)
        _bmp(root / cls / "a.bmp", 1 if cls == "happy" else 2)
    target = root / "happy" / "a.bmp"
    ws = tmp_path / "ws"
    run(root, ws)
    first = np.load(Workspace(ws).store).copy()
    row = table_without_times(ws).set_index("source_path").loc["happy/a.bmp"]

    st = target.stat()
    _bmp(target, 3)  # what rsync or cp -p does: new bytes, same size, same mtime
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns

    again = run(root, ws)
    assert again.n_reused == 1  # sad/a.bmp is unchanged
    manifest = table_without_times(ws).set_index("source_path")
    crops = np.load(Workspace(ws).store)
    new_row = manifest.loc["happy/a.bmp"]
    assert new_row["content_hash"] != row["content_hash"]
    assert not np.array_equal(crops[new_row["store_index"]], first[row["store_index"]])
    fresh = tmp_path / "fresh"
    run(root, fresh)
    fresh_row = table_without_times(fresh).set_index("source_path").loc["happy/a.bmp"]
    assert np.array_equal(crops[new_row["store_index"]], np.load(Workspace(fresh).store)[fresh_row["store_index"]])


def test_a_manifest_without_content_hashes_is_rebuilt(small_input: Path, tmp_path: Path):
    ws = Workspace(tmp_path / "ws")
    run(small_input, ws.root)
    old = read_table(ws.manifest).drop(columns="content_hash")
    from fercure.workspace import read_metadata, write_table

    write_table(old, ws.manifest, read_metadata(ws.manifest))
    again = run(small_input, ws.root)
    assert again.n_reused == 0 and again.n_samples == 13
    assert read_table(ws.manifest)["content_hash"].str.len().min() == 32

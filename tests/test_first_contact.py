"""What a new user meets on their own data: mixed-case labels, an input of which nothing is usable,
crop and training sizes, and what the terminal and --json say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from typer.testing import CliRunner

from fercure.cli import app
from fercure.workspace import read_table

runner = CliRunner()


def invoke(*args: object, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


def _images(root: Path, names: list[str], size: int = 48) -> None:
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(root / name)


def test_no_usable_row_lists_the_first_rejects_and_keeps_the_rejects_table(tmp_path):
    data = tmp_path / "data"
    _images(data / "images", [f"{i}.png" for i in range(4)])
    labels = tmp_path / "labels.csv"
    # Paths written relative to data/images, given with data/ as the root: none is found.
    pd.DataFrame({"path": [f"{i}.png" for i in range(4)], "label": ["happy", "sad"] * 2}).to_csv(labels, index=False)
    ws = tmp_path / "ws"
    result = invoke("prepare", data, "-l", labels, "-w", ws, "--device", "cpu", code=1)
    out = " ".join(result.output.split())
    assert "see the summary" not in out
    assert "4 rows were rejected" in out
    assert f"{labels} row 2: 0.png" in out and f"{labels} row 5: 3.png" in out
    rejects = read_table(ws / "rejects.parquet")
    assert rejects["row"].tolist() == [2, 3, 4, 5]
    assert str(ws / "rejects.parquet") in out


def _config(ws: Path, run_id: str) -> dict:
    return json.loads((ws / "runs" / run_id / "config.json").read_text())


def test_train_defaults_to_the_crop_stores_size_and_trusted_continues_the_last_run(tmp_path, small_workspace):
    ws, _ = small_workspace(tmp_path / "ws", 30, size=24)
    first = json.loads(invoke("train", "-w", ws.root, "--backbone", "test_resnet", "--epochs", 1, "--batch-size", 8,
                              "--device", "cpu", "--json").stdout)
    assert _config(ws.root, first["run_id"])["image_size"] == 24  # the store's size, not 112
    manifest = read_table(ws.manifest)
    trusted = tmp_path / "verified.csv"
    pd.DataFrame({"sample_id": manifest["sample_id"][:2], "label": manifest["label"][:2]}).to_csv(trusted, index=False)
    # A review round: the README's `train --trusted FILE`, nothing else repeated.
    result = invoke("train", "-w", ws.root, "--trusted", trusted, "--batch-size", 10, "--json")
    second = json.loads(result.stdout)
    config = _config(ws.root, second["run_id"])
    assert (config["backbone"], config["epochs"], config["image_size"], config["batch_size"]) == \
        ("test_resnet", 1, 24, 10)
    assert second["reviewed"] == 2
    note = " ".join(result.stderr.split())
    assert f"continuing run {first['run_id']}'s settings" in note and "batch_size 10 (was 8)" in note


def test_pre_cropped_faces_are_stored_at_their_own_size_not_upsampled(tmp_path):
    data = tmp_path / "data"
    names = [f"{c}/{i}.png" for c in ("happy", "sad") for i in range(5)]
    _images(data, names, size=40)
    ws = tmp_path / "ws"
    out = json.loads(invoke("prepare", data, "-w", ws, "--device", "cpu", "--json").stdout)
    store = np.load(ws / "faces" / "crops.npy")
    assert store.shape[1:] == (40, 40, 3)
    manifest = read_table(ws / "manifest.parquet")
    as_given = manifest[manifest["crop_mode"] == "as-given"]
    assert len(as_given)  # random noise: no face found, kept whole
    for row in as_given.itertuples():
        grey = np.asarray(Image.open(data / row.source_path))
        assert np.array_equal(store[row.store_index], np.repeat(grey[..., None], 3, axis=2))  # exact
    assert any("crops stored at 40 px" in n for n in out["notes"])
    # photos of several sizes: the 112 px store
    _images(data, ["happy/big.png"], size=300)
    _images(data, ["sad/wide.png", "sad/wide2.png"], size=60)
    ws2 = tmp_path / "ws2"
    invoke("prepare", data, "-w", ws2, "--device", "cpu")
    assert np.load(ws2 / "faces" / "crops.npy").shape[1] == 112

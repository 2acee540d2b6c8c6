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


def _face_manifest(sizes: list[int], status: list[str], face_count: list[int] | None = None) -> pd.DataFrame:
    n = len(sizes)
    return pd.DataFrame({"sample_id": [f"id{i}" for i in range(n)], "source_path": [f"img/{i}.png" for i in range(n)],
                         "label": "happy", "face_status": status, "width": sizes, "height": sizes,
                         "face_count": face_count or [1] * n})


def test_a_pre_cropped_face_the_detector_missed_is_no_face_card_and_photos_without_faces_are_named():
    from fercure.report.data import BIT, review_rows
    from fercure.prepare.summary import face_notes

    # FER-style: 20 crops of 48 px, 3 missed by the detector; one 640 px photo of a cup
    status = ["ok"] * 17 + ["no_face"] * 3 + ["no_face"]
    manifest = _face_manifest([48] * 20 + [640], status)
    audit = pd.DataFrame({"sample_id": manifest["sample_id"], "face_status": status})
    bits, listed = review_rows(audit, manifest)
    face = (bits & BIT["face"]) > 0
    assert np.flatnonzero(face).tolist() == [20]  # the photo, not the three crops
    bits, _ = review_rows(audit, manifest, list_missed_faces=True)
    assert np.flatnonzero((bits & BIT["face"]) > 0).tolist() == [17, 18, 19, 20]  # shown when asked
    notes = face_notes(manifest, {"on_no_face": "keep", "multi_face": "largest"})
    assert notes[0].startswith("3 pre-cropped faces got no detection")
    assert notes[1].startswith("1 images have no face at all: img/20.png.") and "--on-no-face drop" in notes[1]
    # photos of many sizes: every no_face is a photo without a face, and keeps its card
    photos = _face_manifest([300, 400, 500, 640], ["ok", "no_face", "ok", "ok"], face_count=[1, 0, 2, 3])
    bits, _ = review_rows(pd.DataFrame({"sample_id": photos["sample_id"], "face_status": photos["face_status"]}), photos)
    assert np.flatnonzero((bits & BIT["face"]) > 0).tolist() == [1]
    notes = face_notes(photos, {"on_no_face": "keep", "multi_face": "largest"})
    assert notes == ["1 images have no face at all: img/1.png. They are kept whole and will train as their label's "
                     "expression; pass --on-no-face drop to leave them out (or drop them in the report).",
                     "2 images show several faces: status ok, the largest one kept (--multi-face most-central or drop "
                     "for another choice)."]


def test_json_errors_are_a_json_object_on_stdout(tmp_path):
    data = tmp_path / "data"
    _images(data / "images", ["0.png", "1.png"])
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"path": ["0.png", "1.png"], "label": ["happy", "sad"]}).to_csv(labels, index=False)
    result = invoke("prepare", data, "-l", labels, "-w", tmp_path / "ws", "--device", "cpu", "--json", code=1)
    error = json.loads(result.stdout)
    assert error["file"] == str(labels) and error["row"] == 2 and error["exit_code"] == 1
    assert "path does not exist" in error["error"] and "relative to the input root" in error["hint"]
    # a command without --json after it: the plain message only
    result = invoke("audit-labels", "-w", tmp_path / "nothing", code=1)
    assert result.stdout.strip() == "" or not result.stdout.lstrip().startswith("{")


def _keys(value, path=""):
    """Every mapping key in ``value`` with where it is, skipping the maps whose keys are data (class
    names, face statuses, reject problems, evidence kinds: schema values)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield path, k
            if path.split(".")[-1:] not in (["per_class"], ["transition_matrix"], ["face_issues"],
                                            ["status_counts"], ["class_counts"], ["rejects_by_problem"]):
                yield from _keys(v, f"{path}.{k}")


def test_audit_summary_has_machine_keys_and_no_none_rows(tmp_path):
    from tests.test_issue20_safety import make_ws

    ws = make_ws(tmp_path / "ws")
    data = json.loads(invoke("audit-labels", "-w", ws.root, "--json").stdout)
    bad = [(where, k) for where, k in _keys(data) if where.count(".") <= 1 and not k.replace("_", "").isalnum()
           and where not in (".per_class", ".transition_matrix", ".face_issues", ".evidence")]
    assert bad == []
    assert all(v is not None for v in data["error_share"].values())  # nothing planted, nothing reviewed: {}
    shown = invoke("audit-labels", "-w", ws.root).stdout
    assert "None" not in shown and "nan" not in shown.split()


def test_mixed_case_labels_train_as_one_class_and_a_large_rejected_share_fails(tmp_path):
    data = tmp_path / "data"
    _images(data, [f"{i}.png" for i in range(8)])
    labels = tmp_path / "labels.csv"
    rows = pd.DataFrame({"path": [f"{i}.png" for i in range(8)],
                         "label": ["angry", "Angry", "ANGRY", "angry", "sad", "Sad", "sad", "sad"]})
    rows.to_csv(labels, index=False)
    out = json.loads(invoke("prepare", data, "-l", labels, "-w", tmp_path / "ws", "--device", "cpu", "--json").stdout)
    assert out["class_counts"] == {"angry": 4, "sad": 4} and out["n_rejects"] == 0
    assert any(n.startswith("3 rows carry a label that differs from another only in case") for n in out["notes"])
    manifest = read_table(tmp_path / "ws" / "manifest.parquet")
    assert manifest["label_original"].tolist() == rows["label"].tolist()
    # --strict-labels: the 3 odd spellings rejected, 3 of 8 rows (more than a quarter): exit 1, listed
    result = invoke("prepare", data, "-l", labels, "-w", tmp_path / "strict", "--device", "cpu", "--strict-labels",
                    code=1)
    text = " ".join(result.output.split())
    assert "3 of the 8 rows" in text and "look-alike label" in text and "--max-rejected 1" in text
    invoke("prepare", data, "-l", labels, "-w", tmp_path / "strict", "--device", "cpu", "--strict-labels",
           "--max-rejected", 1)


def test_the_terminal_says_not_measured_instead_of_none(capsys):
    import dataclasses

    from fercure import cli

    @dataclasses.dataclass
    class Summary:
        per_class: pd.DataFrame
        error_share: dict

    per_class = pd.DataFrame({"n": [3, 4], "threshold": [0.4, None]}, index=["angry", "happy"])
    cli._render(Summary(per_class, {"planted_flips": 0.12, "reviewed_rows": None}), "audit-labels")
    out = capsys.readouterr().out
    assert "None" not in out and "nan" not in out.split()
    assert "not measured" in out and "planted flips" in out and "reviewed rows" not in out

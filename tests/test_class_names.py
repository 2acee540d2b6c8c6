"""Class names spelt two ways, --classes typos, empty classes and strong imbalance: reported at
discovery (prepare) with a suggestion; a --classes typo is an error."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from fercure import labels
from fercure.ingest import discover
from fercure.label_rules import check_classes
from fercure.workspace import WorkspaceError


def make_folder(root: Path, counts: dict[str, int]) -> Path:
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(root / cls / f"{i}.png")
    return root


@pytest.mark.parametrize("a,b,expected", [
    ("angyr", "angry", True), ("angry", "angri", True), ("angry", "angy", True), ("angry", "anggry", True),
    ("angry", "agnyr", False), ("happy", "sad", False), ("surprise", "surprised", True), ("fear", "fear", True),
])
def test_within_one_edit(a, b, expected):
    assert labels.within_one_edit(a, b) is expected
    assert labels.within_one_edit(b, a) is expected


def test_similar_names_and_their_reason():
    assert "one letter" in labels.similar("angyr", "angry")
    assert "spacing" in labels.similar("very_happy", "very happy")
    assert labels.similar("sad", "mad") is None  # short names: one edit is another word
    assert labels.similar("happy", "angry") is None
    assert labels.suggestion("hapy", ["angry", "happy", "sad"]) == "happy"
    assert labels.suggestion("contempt", ["angry", "happy"]) is None


def test_a_typo_class_is_reported_with_a_suggestion(tmp_path):
    root = make_folder(tmp_path / "in", {"angry": 6, "angyr": 1, "happy": 5})
    samples, _ = discover(root)
    notes = samples.attrs["notes"]
    hit = [n for n in notes if "'angyr'" in n]
    assert len(hit) == 1 and "Did you mean 'angry'?" in hit[0] and "(1 images)" in hit[0]
    assert set(samples["label"]) == {"angry", "angyr", "happy"}  # reported, not silently merged


def test_imbalance_and_empty_classes_are_warned(tmp_path):
    root = make_folder(tmp_path / "in", {"disgust": 1, "happy": 12, "sad": 3})
    notes = discover(root)[0].attrs["notes"]
    assert any("strongly imbalanced" in n and "'disgust' has 1" in n and "'happy' 12" in n for n in notes)
    notes = discover(root, classes=["happy", "sad", "fear", "disgust"])[0].attrs["notes"]
    assert any("'fear'" in n and "no images" in n for n in notes)
    balanced = make_folder(tmp_path / "ok", {"happy": 4, "sad": 3})
    assert not [n for n in discover(balanced)[0].attrs["notes"] if n.startswith("warning:")]


def test_balance_warning_figures():
    w = labels.balance_warnings({"disgust": 55, "happy": 884, "sad": 300})
    assert len(w) == 1 and "'disgust' has 55" in w[0] and "884" in w[0] and "16×" in w[0]
    assert labels.balance_warnings({"a": 10, "b": 99}) == []


def test_a_classes_typo_is_an_error_naming_the_likely_class(tmp_path):
    root = make_folder(tmp_path / "in", {"angry": 3, "happy": 4})
    samples, rejects = discover(root, classes=["angry", "hapy"])  # discover reports; prepare stops
    with pytest.raises(WorkspaceError, match=r"--classes names 'hapy'.*4 images are labelled 'happy'.*did you mean 'happy'"):
        check_classes(["angry", "hapy"], samples, rejects)
    check_classes(["angry", "happy"], *discover(root, classes=["angry", "happy"]))  # no typo: no error


def test_a_classes_typo_with_a_label_file_names_the_file(tmp_path):
    root = make_folder(tmp_path / "in", {"angry": 2, "happy": 2})
    lf = tmp_path / "labels.csv"
    lf.write_text("path,label\nangry/0.png,angry\nangry/1.png,angry\nhappy/0.png,happy\nhappy/1.png,happy\n")
    with pytest.raises(WorkspaceError, match=r"'angyr'.*labels\.csv.*did you mean 'angry'"):
        check_classes(["angyr", "happy"], *discover(root, lf, classes=["angyr", "happy"]), lf)


def test_prepare_stops_on_a_classes_typo_before_any_work(tmp_path):
    from fercure.stages.prepare import run_prepare

    root = make_folder(tmp_path / "in", {"angry": 2, "happy": 2})
    with pytest.raises(WorkspaceError, match="did you mean 'happy'"):
        run_prepare(root, tmp_path / "ws", classes=["angry", "hapy"], device="cpu")
    assert not (tmp_path / "ws" / "manifest.parquet").exists()


def test_a_data_typo_under_classes_is_rejected_with_a_suggestion(tmp_path):
    root = make_folder(tmp_path / "in", {"angry": 3, "angyr": 1, "happy": 3})
    samples, rejects = discover(root, classes=["angry", "happy"])
    assert len(samples) == 6 and len(rejects) == 1
    assert "did you mean 'angry'?" in rejects["hint"].iloc[0]

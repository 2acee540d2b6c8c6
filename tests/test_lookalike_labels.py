"""Labels that look alike but are different strings: invisible differences (zero-width space, BOM,
NFC vs NFD) are one class; visible look-alikes (a Cyrillic а, another case) are one class misspelt,
whose rarer spelling is rejected with a hint naming both spellings and their code points."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from fercure.ingest import discover
from fercure.label_rules import clean_label, lookalike_labels
from fercure.labels import label_skeleton

CYRILLIC_HAPPY = "h\u0430ppy"  # а U+0430
NFD_CAFE, NFC_CAFE = "cafe\u0301", "caf\u00e9"


def images(root: Path, n: int, folder: str = "img") -> list[str]:
    rels = [f"{folder}/{i}.png" for i in range(n)]
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"img")
    return rels


def label_file(tmp_path: Path, labels: list[str]) -> tuple[Path, Path]:
    root = tmp_path / "data"
    rels = images(root, len(labels))
    path = tmp_path / "labels.csv"
    path.write_text("path,label\n" + "".join(f"{r},{lab}\n" for r, lab in zip(rels, labels)), encoding="utf-8")
    return root, path


@pytest.mark.parametrize("variant", ["happy\u200b", "\u200bhappy", "\ufeffhappy", "hap\u200dpy", " happy\u00a0"],
                         ids=["zwsp-after", "zwsp-before", "bom", "zwj-inside", "nbsp"])
def test_invisible_characters_do_not_make_a_class(tmp_path: Path, variant: str):
    root, labels = label_file(tmp_path, ["happy", variant, "sad"])
    samples, rejects = discover(root, labels)
    assert samples["label"].tolist() == ["happy", "happy", "sad"] and rejects.empty


def test_nfc_and_nfd_are_one_class(tmp_path: Path):
    root, labels = label_file(tmp_path, [NFC_CAFE, NFD_CAFE, NFD_CAFE])
    samples, rejects = discover(root, labels)
    assert samples["label"].tolist() == [NFC_CAFE] * 3 and rejects.empty
    assert all(unicodedata.is_normalized("NFC", lab) for lab in samples["label"])


@pytest.mark.parametrize("majority,minority", [("happy", CYRILLIC_HAPPY), (CYRILLIC_HAPPY, "happy")],
                         ids=["latin-kept", "cyrillic-kept"])
def test_cyrillic_lookalike_rarer_spelling_rejected(tmp_path: Path, majority: str, minority: str):
    labels_in = [majority, "sad", minority, majority, majority]
    root, labels = label_file(tmp_path, labels_in)
    samples, rejects = discover(root, labels)
    assert sorted(samples["label"]) == sorted([majority] * 3 + ["sad"])
    assert rejects["row"].tolist() == [4]  # the header is row 1
    assert rejects["problem"].tolist() == ["look-alike label"]
    hint = rejects["hint"].iloc[0]
    assert f"did you mean {majority!r}?" in hint and "U+0430" in hint and "U+0061" in hint
    assert repr(minority) in hint
    assert any("1 rows carry a label that looks like another class" in n for n in samples.attrs["notes"])


def test_case_and_greek_lookalikes_under_strict_labels(tmp_path: Path):
    # "HAPPY" in Greek capitals Η Α Ρ Ρ Υ; "Happy" differs only in case
    greek = "\u0397\u0391\u03a1\u03a1\u03a5"
    root, labels = label_file(tmp_path, ["happy"] * 3 + ["Happy", greek, "sad", "sad"])
    samples, rejects = discover(root, labels, fold_case=False)
    assert sorted(set(samples["label"])) == ["happy", "sad"]
    assert sorted(rejects["row"]) == [5, 6] and set(rejects["problem"]) == {"look-alike label"}
    assert "U+0397" in rejects.set_index("row").at[6, "hint"]


def test_folder_mode_lookalikes_and_nfd(tmp_path: Path):
    root = tmp_path / "data"
    images(root, 3, "happy")
    images(root, 1, CYRILLIC_HAPPY)
    images(root, 2, NFC_CAFE)
    images(root, 1, NFD_CAFE)  # another folder on Linux: same name to a reader
    samples, rejects = discover(root)
    assert samples["label"].value_counts().to_dict() == {"happy": 3, NFC_CAFE: 3}
    assert rejects["problem"].tolist() == ["look-alike label"]
    assert rejects["source_path"].iloc[0].startswith(CYRILLIC_HAPPY + "/")
    assert "did you mean 'happy'?" in rejects["hint"].iloc[0]


def test_classes_option_is_cleaned_and_suggests(tmp_path: Path):
    root, labels = label_file(tmp_path, ["happy", CYRILLIC_HAPPY, "sad"])
    samples, rejects = discover(root, labels, classes=["happy\u200b", "sad"])
    assert samples["label"].tolist() == ["happy", "sad"]
    assert rejects["problem"].iloc[0] == f"unknown class {CYRILLIC_HAPPY!r}"
    assert "did you mean 'happy'?" in rejects["hint"].iloc[0]


def test_helpers():
    assert clean_label("\ufeff " + NFD_CAFE + "\u200b ") == NFC_CAFE
    assert label_skeleton(CYRILLIC_HAPPY) == label_skeleton("HAPPY") == label_skeleton("\uff48appy") == "happy"
    assert label_skeleton("sad") != label_skeleton("happy")
    # different-looking words in other scripts are classes of their own
    assert lookalike_labels(["радость", "грусть", "happy", "sad"]) == {}
    assert lookalike_labels(["happy", "happy", CYRILLIC_HAPPY]) == {CYRILLIC_HAPPY: "happy"}
    assert lookalike_labels([CYRILLIC_HAPPY, "happy"]) == {CYRILLIC_HAPPY: "happy"}  # tie: ASCII kept


def test_labels_differing_only_in_case_are_one_class_with_the_spelling_kept(tmp_path: Path):
    greek = "\u0397\u0391\u03a1\u03a1\u03a5"  # looks like HAPPY, other letters: still rejected
    root, labels = label_file(tmp_path, ["angry", "Angry", "ANGRY", "angry", "sad", "Sad", greek, "happy"])
    samples, rejects = discover(root, labels)
    assert samples["label"].tolist() == ["angry", "angry", "angry", "angry", "sad", "sad", "happy"]
    assert samples["label_original"].tolist() == ["angry", "Angry", "ANGRY", "angry", "sad", "Sad", "happy"]
    assert rejects["row"].tolist() == [8] and rejects["problem"].tolist() == ["look-alike label"]
    note = next(n for n in samples.attrs["notes"] if "differs from another only in case" in n)
    assert note.startswith("3 rows") and "--strict-labels" in note


def test_case_variants_take_the_classes_spelling(tmp_path: Path):
    root, labels = label_file(tmp_path, ["ANGRY", "ANGRY", "angry", "sad"])
    samples, rejects = discover(root, labels, classes=["Angry", "sad"])
    assert samples["label"].tolist() == ["Angry", "Angry", "Angry", "sad"] and rejects.empty
    samples, rejects = discover(root, labels, classes=["Angry", "sad"], fold_case=False)
    assert samples["label"].tolist() == ["sad"] and len(rejects) == 3

"""discover(): folder mode, CSV/Parquet label files, every per-row problem, and a fuzz of the reader.

All inputs are made here; image files are a few bytes (discover never decodes them)."""

from __future__ import annotations

import csv
import io
import os
import posixpath
import tempfile
import threading
import unicodedata
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fercure.ingest import REJECT_COLUMNS, discover
from fercure.label_file import LabelFileError
from fercure.labels import label_skeleton
from fercure.workspace import WorkspaceError, sample_id

SAMPLE_COLUMNS = ["sample_id", "source_path", "label", "split", "label_original"]


def _touch(root: Path, rel: str, data: bytes = b"img") -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def _csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def _rejects_by_row(rejects: pd.DataFrame) -> dict[int, str]:
    return dict(zip(rejects["row"].tolist(), rejects["problem"].tolist()))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "images"
    for rel in ("happy/a.png", "happy/b.jpg", "sad/c.png", "sad/d.jpeg", "neutral/e.png"):
        _touch(r, rel)
    return r


# ---------------------------------------------------------------------------------------------
# Folder mode


def test_folder_mode(tmp_path: Path) -> None:
    r = tmp_path / "data"
    for rel in ("happy/a.png", "happy/sub/deeper/b.JPG", "sad/c.jpeg", "sad/notes.txt", "readme.md",
                "stray.png", ".hidden/x.png", "happy/.x.png", "sad/.cache/y.png", "angry/z.webp"):
        _touch(r, rel)
    samples, rejects = discover(r)
    assert list(samples.columns) == SAMPLE_COLUMNS
    assert list(rejects.columns) == REJECT_COLUMNS
    assert samples["source_path"].tolist() == [
        "angry/z.webp", "happy/a.png", "happy/sub/deeper/b.JPG", "sad/c.jpeg"]
    assert samples["label"].tolist() == ["angry", "happy", "happy", "sad"]
    assert set(samples["split"]) == {"train"}
    assert samples["sample_id"].tolist() == [sample_id(p) for p in samples["source_path"]]
    assert samples["sample_id"].str.fullmatch(r"[0-9a-f]{16}").all()
    # Only the image at the root is rejected; non-images and hidden files are silently ignored.
    assert rejects.to_dict("records") == [{
        "file": "", "row": -1, "source_path": "stray.png", "problem": "no class folder",
        "hint": rejects["hint"][0]}]
    assert "<class>" in rejects["hint"][0]
    # Deterministic: same answer twice.
    again, _ = discover(r)
    pd.testing.assert_frame_equal(samples, again)


def test_folder_mode_classes_filter(root: Path) -> None:
    samples, rejects = discover(root, classes=[" happy", "sad "])
    assert set(samples["label"]) == {"happy", "sad"}
    assert rejects["source_path"].tolist() == ["neutral/e.png"]
    assert "unknown class" in rejects["problem"][0] and rejects["row"][0] == -1


def test_folder_mode_split_layout(tmp_path: Path) -> None:
    r = tmp_path / "fer"
    for rel in ("train/happy/1.png", "train/sad/2.png", "test/happy/3.png", "val/sad/4.png",
                "test/loose.png"):
        _touch(r, rel)
    samples, rejects = discover(r)
    got = {(p, lab, s) for p, lab, s in samples[["source_path", "label", "split"]].itertuples(index=False)}
    assert got == {("train/happy/1.png", "happy", "train"), ("train/sad/2.png", "sad", "train"),
                   ("test/happy/3.png", "happy", "test"), ("val/sad/4.png", "sad", "val")}
    assert rejects["source_path"].tolist() == ["test/loose.png"]
    assert rejects["problem"].tolist() == ["no class folder"]


def test_folder_mode_symlinks(tmp_path: Path) -> None:
    r = tmp_path / "data"
    outside = _touch(tmp_path, "outside/secret.png")
    _touch(r, "happy/a.png")
    (r / "happy" / "inside_link.png").symlink_to(r / "happy" / "a.png")
    (r / "happy" / "escape.png").symlink_to(outside)
    (r / "happy" / "dangling.png").symlink_to(r / "happy" / "gone.png")
    (r / "sad").mkdir()
    (r / "sad" / "outdir").symlink_to(tmp_path / "outside", target_is_directory=True)
    (r / "sad" / "loop").symlink_to(r / "sad", target_is_directory=True)  # must not hang
    _touch(r, "sad/b.png")
    samples, rejects = discover(r)
    # issue 20: a file reached twice (a link to another image of the tree) is one sample, and a
    # link to a folder of the tree is not followed (it would be read again under another class)
    assert samples["source_path"].tolist() == ["happy/a.png", "sad/b.png"]
    problems = dict(zip(rejects["source_path"], rejects["problem"]))
    assert problems == {"happy/dangling.png": "broken symbolic link",
                        "happy/escape.png": "path escapes the input root",
                        "happy/inside_link.png": "same file as another sample",
                        "sad/loop": "symbolic link back into the input tree",
                        "sad/outdir": "path escapes the input root"}


def test_a_link_to_an_ancestor_does_not_double_the_samples(tmp_path: Path) -> None:
    r = tmp_path / "data"
    for rel in ("angry/a.png", "angry/b.png", "happy/c.png", "sad/d.png"):
        _touch(r, rel)
    (r / "angry" / "loop").symlink_to("..", target_is_directory=True)
    (r / "sad" / "also_c.png").symlink_to(r / "happy" / "c.png")
    samples, rejects = discover(r)
    got = dict(zip(samples["source_path"], samples["label"]))
    assert got == {"angry/a.png": "angry", "angry/b.png": "angry", "happy/c.png": "happy", "sad/d.png": "sad"}
    problems = dict(zip(rejects["source_path"], rejects["problem"]))
    assert problems == {"angry/loop": "symbolic link back into the input tree",
                        "sad/also_c.png": "same file as another sample"}


def test_folder_mode_non_utf8_names(tmp_path: Path) -> None:
    r = tmp_path / "data"
    (r / "happy").mkdir(parents=True)
    raw = os.fsencode(r / "happy") + b"/caf\xe9.png"
    with open(raw, "wb") as f:
        f.write(b"img")
    samples, _ = discover(r)
    (sp,) = samples["source_path"].tolist()
    assert sp == "happy/caf\udce9.png"  # surrogateescape keeps the byte
    assert (r / sp).read_bytes() == b"img"  # ...so the file opens again
    assert os.fsencode(sp) == b"happy/caf\xe9.png"
    again, _ = discover(r)
    assert samples["sample_id"].tolist() == again["sample_id"].tolist() == [sample_id(sp)]


def test_missing_input_root(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="does not exist"):
        discover(tmp_path / "nope")


def test_empty_folder_gives_empty_frames(tmp_path: Path) -> None:
    samples, rejects = discover(tmp_path)
    assert samples.empty and list(samples.columns) == SAMPLE_COLUMNS
    assert rejects.empty and list(rejects.columns) == REJECT_COLUMNS


# ---------------------------------------------------------------------------------------------
# Label files: formats and encodings


def test_csv_basic_with_split(root: Path, tmp_path: Path) -> None:
    lf = _csv(tmp_path / "labels.csv", "path,label,split\nhappy/a.png,happy,train\nsad/c.png,sad,test\n"
                                       "neutral/e.png,neutral,\n")
    samples, rejects = discover(root, lf)
    assert rejects.empty
    assert samples[["source_path", "label", "split"]].values.tolist() == [
        ["happy/a.png", "happy", "train"], ["sad/c.png", "sad", "test"], ["neutral/e.png", "neutral", "train"]]
    assert samples["sample_id"].tolist() == [sample_id(p) for p in samples["source_path"]]


def test_header_aliases_case_and_whitespace(root: Path, tmp_path: Path) -> None:
    lf = _csv(tmp_path / "l.csv", " Image ,Notes, EMOTION ,Usage\nhappy/a.png,x,happy,PublicTest\n")
    samples, _ = discover(root, lf)
    assert samples[["source_path", "label", "split"]].values.tolist() == [["happy/a.png", "happy", "PublicTest"]]


def test_bom_and_crlf(root: Path, tmp_path: Path) -> None:
    lf = tmp_path / "bom.csv"
    lf.write_bytes(b"\xef\xbb\xbfpath,label\r\nhappy/a.png,happy\r\nsad/c.png,sad\r\n")
    samples, rejects = discover(root, lf)
    assert rejects.empty
    assert samples["label"].tolist() == ["happy", "sad"]  # no "\r" left on the last column


def test_semicolon_separated(root: Path, tmp_path: Path) -> None:
    lf = _csv(tmp_path / "semi.csv", "file;class\nhappy/a.png;happy\n\"sad/c.png\";sad\n")
    samples, _ = discover(root, lf)
    assert samples["source_path"].tolist() == ["happy/a.png", "sad/c.png"]


def test_tab_separated_tsv_and_excel_sep_line(root: Path, tmp_path: Path) -> None:
    lf = _csv(tmp_path / "t.tsv", "path\tlabel\nhappy/a.png\thappy\n")
    assert discover(root, lf)[0]["label"].tolist() == ["happy"]
    lf = _csv(tmp_path / "excel.csv", "sep=;\npath;label\nhappy/a.png;happy\nnope.png;sad\n")
    samples, rejects = discover(root, lf)
    assert samples["label"].tolist() == ["happy"]
    assert rejects["row"].tolist() == [4]  # sep= line is row 1, header row 2


def test_latin1_file_falls_back_with_a_note(tmp_path: Path) -> None:
    r = tmp_path / "images"
    _touch(r, "happy/café.png")  # UTF-8 name on disk
    lf = _csv(tmp_path / "l.csv", "path,label\nhappy/café.png,happy\n", encoding="latin-1")
    samples, rejects = discover(r, lf)
    assert rejects.empty
    assert samples["source_path"].tolist() == ["happy/café.png"]
    assert any("not valid UTF-8" in n for n in samples.attrs["notes"])


def test_latin1_file_matches_latin1_names_on_disk(tmp_path: Path) -> None:
    r = tmp_path / "images"
    (r / "happy").mkdir(parents=True)
    with open(os.fsencode(r / "happy") + b"/caf\xe9.png", "wb") as f:
        f.write(b"img")
    lf = _csv(tmp_path / "l.csv", "path,label\nhappy/café.png,happy\n", encoding="latin-1")
    samples, rejects = discover(r, lf)
    assert rejects.empty
    assert samples["source_path"].tolist() == ["happy/caf\udce9.png"]
    assert (r / samples["source_path"][0]).exists()


def test_utf16_excel_unicode_text(root: Path, tmp_path: Path) -> None:
    lf = _csv(tmp_path / "u16.txt", "path\tlabel\r\nhappy/a.png\thappy\r\n", encoding="utf-16")
    assert discover(root, lf)[0]["source_path"].tolist() == ["happy/a.png"]


def test_parquet(root: Path, tmp_path: Path) -> None:
    lf = tmp_path / "l.parquet"
    pd.DataFrame({"Path": ["happy/a.png", "sad/c.png", "nope.png"], "label": ["happy", "sad", "sad"]}).to_parquet(lf)
    samples, rejects = discover(root, lf)
    assert samples["source_path"].tolist() == ["happy/a.png", "sad/c.png"]
    assert rejects["row"].tolist() == [3]  # 0-based index 2 + 1
    assert rejects["file"].tolist() == [str(lf)]


def test_parquet_numeric_labels_and_nulls(root: Path, tmp_path: Path) -> None:
    lf = tmp_path / "n.parquet"
    table = pa.table({"path": ["happy/a.png", "sad/c.png", None, "neutral/e.png"],
                      "emotion": pa.array([3.0, None, 4.0, 6.0], pa.float64())})
    pq.write_table(table, lf)
    samples, rejects = discover(root, lf)
    assert samples[["source_path", "label"]].values.tolist() == [["happy/a.png", "3"], ["neutral/e.png", "6"]]
    assert _rejects_by_row(rejects) == {2: "empty label", 3: "empty path"}


def test_parquet_binary_non_utf8_path(tmp_path: Path) -> None:
    r = tmp_path / "images"
    (r / "sad").mkdir(parents=True)
    with open(os.fsencode(r / "sad") + b"/\xff\xfe.png", "wb") as f:
        f.write(b"img")
    lf = tmp_path / "b.parquet"
    pq.write_table(pa.table({"path": pa.array([b"sad/\xff\xfe.png"], pa.binary()), "label": ["sad"]}), lf)
    samples, rejects = discover(r, lf)
    assert rejects.empty
    assert os.fsencode(samples["source_path"][0]) == b"sad/\xff\xfe.png"


# ---------------------------------------------------------------------------------------------
# Whole-file problems -> LabelFileError (a WorkspaceError: exit 1, message, no traceback)


def test_missing_columns_message(root: Path, tmp_path: Path) -> None:
    lf = _csv(tmp_path / "bad_cols.csv", "filepath_x,mood\nhappy/a.png,happy\n")
    with pytest.raises(LabelFileError) as exc:
        discover(root, lf)
    msg = str(exc.value)
    assert isinstance(exc.value, WorkspaceError)
    assert "bad_cols.csv" in msg
    assert "'filepath_x'" in msg and "'mood'" in msg  # found
    assert "path" in msg and "label" in msg and "missing" in msg  # expected


def test_missing_label_column_parquet(root: Path, tmp_path: Path) -> None:
    lf = tmp_path / "p.parquet"
    pd.DataFrame({"path": ["happy/a.png"], "score": [1.0]}).to_parquet(lf)
    with pytest.raises(LabelFileError, match=r"p\.parquet.*label.*Found columns: 'path', 'score'"):
        discover(root, lf)


def test_fer2013_pixel_csv_is_explained(root: Path, tmp_path: Path) -> None:
    lf = _csv(tmp_path / "fer2013.csv", "emotion,pixels,Usage\n0,1 2 3 4,Training\n")
    with pytest.raises(LabelFileError, match="FER2013"):
        discover(root, lf)


@pytest.mark.parametrize("content, match", [
    (b"", "is empty"),
    (b" \r\n\r\n", "is empty"),
    (b"path,label\n", "no data rows"),
    (b"path,label\n,\n\n", "no data rows"),
    (b"PK\x03\x04rest-of-a-zip", "Excel"),
])
def test_unusable_label_files(root: Path, tmp_path: Path, content: bytes, match: str) -> None:
    lf = tmp_path / "labels.csv"
    lf.write_bytes(content)
    with pytest.raises(LabelFileError, match=match) as exc:
        discover(root, lf)
    assert "labels.csv" in str(exc.value)


def test_label_file_missing_or_a_folder_or_corrupt_parquet(root: Path, tmp_path: Path) -> None:
    with pytest.raises(LabelFileError, match="nope.csv.*does not exist"):
        discover(root, tmp_path / "nope.csv")
    with pytest.raises(LabelFileError, match="folder"):
        discover(root, tmp_path)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(LabelFileError, match="bad.parquet.*Parquet"):
        discover(root, bad)


def test_label_file_permission_denied(root: Path, tmp_path: Path, monkeypatch) -> None:
    lf = _csv(tmp_path / "locked.csv", "path,label\nhappy/a.png,happy\n")

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(lf))

    # Simulated: the tests may run as root, which ignores file modes.
    monkeypatch.setattr("fercure.label_file.open", deny, raising=False)
    with pytest.raises(LabelFileError, match="locked.csv.*Permission denied"):
        discover(root, lf)


def test_unlistable_class_folder_is_a_reject_not_a_crash(root: Path, monkeypatch) -> None:
    import fercure.ingest as ingest

    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("sad"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(ingest.os, "scandir", scandir)
    samples, rejects = discover(root)
    assert set(samples["label"]) == {"happy", "neutral"}
    assert rejects[["source_path", "problem"]].values.tolist() == [
        ["sad", "cannot list folder: Permission denied"]]


# ---------------------------------------------------------------------------------------------
# Per-row problems: each gives a reject row with the 1-based row number a user sees


def test_every_per_row_problem(tmp_path: Path) -> None:
    r = tmp_path / "images"
    for rel in ("happy/a.png", "happy/b.png", "sad/c.png", "sad/d.png", "sad/e.png", "sub/f.png",
                "happy/notes.txt", "x/g.png"):
        _touch(r, rel)
    (r / "folder.png").mkdir()
    outside = _touch(tmp_path, "outside/o.png")
    (r / "happy" / "escape.png").symlink_to(outside)
    rows = [
        ("happy/a.png", "happy"),        # 2 ok
        ("", "happy"),                   # 3 empty path
        ("happy/b.png", "  "),           # 4 empty label
        ("sad/c.png", "disgust"),        # 5 unknown class
        ("sad/missing.png", "sad"),      # 6 does not exist
        ("../outside/o.png", "sad"),     # 7 escapes (..)
        (str(outside), "sad"),           # 8 escapes (absolute outside)
        ("happy/escape.png", "happy"),   # 9 escapes (symlink)
        ("happy/notes.txt", "happy"),    # 10 not an image extension
        ("sad/d.png", "sad"),            # 11 ok
        ("./sad//d.png", "sad"),         # 12 duplicate of 11 (same path after normalising)
        ("sad/e.png", "sad"),            # 13 conflicting (with 14)
        ("sad/e.png", "happy"),          # 14 conflicting
        ("sub\\f.png", " happy "),       # 15 ok: backslashes normalised, label stripped
        (str(r / "x" / "g.png"), "sad"), # 16 ok: absolute inside the root -> relative
        ("folder.png", "sad"),           # 17 a directory
        ("happy/a.png\x00x", "sad"),     # 18 NUL
        ("C:\\data\\a.png", "sad"),      # 19 Windows absolute path
        ("https://example.org/a.jpg", "sad"),  # 20 a URL
    ]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label"])
    w.writerows(rows)
    buf.write("sad/c.png,sad,extra\n")  # 21 more fields than the header
    lf = _csv(tmp_path / "labels.csv", buf.getvalue())

    samples, rejects = discover(r, lf, classes=["happy", "sad"])
    assert samples[["source_path", "label"]].values.tolist() == [
        ["happy/a.png", "happy"], ["sad/d.png", "sad"], ["sub/f.png", "happy"], ["x/g.png", "sad"]]
    got = _rejects_by_row(rejects)
    assert got == {
        3: "empty path",
        4: "empty label",
        5: "unknown class 'disgust'",
        6: "path does not exist",
        7: "path escapes the input root",
        8: "path escapes the input root",
        9: "path escapes the input root",
        10: "not an image file extension",
        12: "duplicate row",
        13: "conflicting labels for the same path",
        14: "conflicting labels for the same path",
        17: "path is a directory",
        18: "path contains a NUL character",
        19: "path escapes the input root",
        20: "path is a URL",
        21: "row has 3 fields but the header has 2",
    }
    assert rejects["row"].tolist() == sorted(got)
    assert set(rejects["file"]) == {str(lf)}
    by_row = rejects.set_index("row")
    assert by_row.loc[12, "source_path"] == "./sad//d.png"  # as written in the file
    assert "row 11" in by_row.loc[12, "hint"]
    assert "row 13" in by_row.loc[14, "hint"] and "row 14" in by_row.loc[13, "hint"]
    assert "happy, sad" in by_row.loc[5, "hint"]
    assert all(h for h in rejects["hint"])  # every reject says what to do


def test_row_numbers_count_records_and_blank_lines(root: Path, tmp_path: Path) -> None:
    text = ('path,label,note\n'
            'happy/a.png,happy,"two\nlines"\n'   # row 2 (one record on two lines)
            '\n'                                  # row 3 blank: skipped, keeps its number
            'nope.png,sad,x\n')                   # row 4
    lf = _csv(tmp_path / "l.csv", text)
    samples, rejects = discover(root, lf)
    assert samples["source_path"].tolist() == ["happy/a.png"]
    assert rejects["row"].tolist() == [4]


def test_backslash_kept_when_such_a_file_exists(tmp_path: Path) -> None:
    r = tmp_path / "images"
    _touch(r, "happy/we\\ird.png")  # a literal backslash in a POSIX file name
    lf = _csv(tmp_path / "l.csv", "path,label\nhappy/we\\ird.png,happy\n")
    samples, _ = discover(r, lf)
    assert samples["source_path"].tolist() == ["happy/we\\ird.png"]


def test_paths_that_include_the_root_name_get_a_hint(root: Path, tmp_path: Path) -> None:
    lf = _csv(tmp_path / "l.csv", "path,label\nimages/happy/a.png,happy\n")
    _, rejects = discover(root, lf)
    assert rejects["problem"].tolist() == ["path does not exist"]
    assert "drop that prefix" in rejects["hint"][0]


def test_label_file_samples_keep_file_order(root: Path, tmp_path: Path) -> None:
    lf = _csv(tmp_path / "l.csv", "path,label\nsad/c.png,sad\nhappy/a.png,happy\n")
    assert discover(root, lf)[0]["source_path"].tolist() == ["sad/c.png", "happy/a.png"]


# ---------------------------------------------------------------------------------------------
# Fuzz: random headers, cells, delimiters, encodings. Whatever the file, discover either raises
# LabelFileError or accounts for every data row exactly once, keeping every valid row.

_GOOD = [f"{c}/{i}.png" for c in ("happy", "sad", "neutral") for i in range(3)]
_CLASSES = ["happy", "sad", "neutral"]
_PATH_NAMES = ["path", "file", "filename", "image", "Path", " FILE ", "Image"]
_LABEL_NAMES = ["label", "class", "emotion", "expression", "Label", " EMOTION"]
_JUNK_NAMES = ["notes", "score", "id", "x y", "Comment", "Ünïcode"]


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("fuzz") / "images"
    for rel in _GOOD:
        _touch(r, rel)
    return r


@st.composite
def _label_files(draw: st.DrawFn, root: Path):
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "cp1252", "utf-16"]))
    codec = {"utf-8-sig": "utf-8", "utf-16": "utf-8"}.get(encoding, encoding)
    # C1 controls (U+0080..U+009F) never occur in real latin-1 text, and leaving them out makes
    # latin-1 and cp1252 bytes decode alike (the reader tries cp1252 first).
    chars = st.characters(codec=codec, exclude_categories=["Cs"])
    if codec == "latin-1":
        chars = chars.filter(lambda ch: not "\x80" <= ch <= "\x9f")
    text = st.text(chars, max_size=12)
    delimiter = draw(st.sampled_from([",", ";", "\t"]))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    columns = ["path", "label"] + (["split"] if draw(st.booleans()) else [])
    columns += draw(st.lists(st.sampled_from(_JUNK_NAMES), max_size=2, unique=True))
    if draw(st.integers(0, 9)) == 0:  # now and then a file without a required column
        columns.remove(draw(st.sampled_from(["path", "label"])))
    columns = draw(st.permutations(columns))
    header = [draw(st.sampled_from(_PATH_NAMES)) if c == "path" else
              draw(st.sampled_from(_LABEL_NAMES)) if c == "label" else c for c in columns]
    good = st.sampled_from(_GOOD)
    path_cell = st.one_of(
        good, good,
        good.map(lambda p: f"  {p} "),
        good.map(lambda p: p.replace("/", "\\")),
        good.map(lambda p: "./" + p),
        good.map(lambda p: f"{root}/{p}"),
        st.sampled_from(["", "  ", "../x.png", "/etc/passwd.png", "happy/missing.png", "happy",
                         "happy/0.txt", ".", "C:\\x\\0.png"]),
        text,
    )
    label_cell = st.one_of(st.sampled_from(_CLASSES), st.sampled_from(["", " ", " sad ", "HAPPY"]), text)
    cell_for = {"path": path_cell, "label": label_cell, "split": st.one_of(st.just(""), text)}
    rows = draw(st.lists(st.fixed_dictionaries({c: cell_for.get(c, text) for c in columns}), max_size=10))
    classes = draw(st.one_of(st.none(), st.just(_CLASSES)))

    # QUOTE_MINIMAL only quotes the characters of the line terminator, so a bare "\r" in a cell
    # of a "\n" file would be written unquoted (a malformed file): quote everything then.
    has_cr = any("\r" in str(v) for row in rows for v in row.values())
    quoting = csv.QUOTE_ALL if has_cr and newline == "\n" else draw(
        st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator=newline, quoting=quoting)
    w.writerow(header)
    for row in rows:
        w.writerow([row[c] for c in columns])
    data = buf.getvalue().encode(encoding)
    if codec in ("latin-1", "cp1252") and not data.isascii():
        # Bytes that are also valid UTF-8 are read as UTF-8 (no reader can tell); keep the oracle
        # honest by leaving that ambiguity out.
        try:
            data.decode("utf-8")
            assume(False)
        except UnicodeDecodeError:
            pass
    return data, columns, header, rows, classes


def _expected(root: Path, columns: list[str], rows: list[dict], classes, parquet: bool = False):
    """Oracle straight from the spec: which data rows are kept (row number -> (path, label, split))."""
    candidates = []
    n_data = 0
    for i, row in enumerate(rows):
        n = i + 1 if parquet else i + 2  # CSV: the header is row 1
        if not parquet and all(not str(v).strip() for v in row.values()):
            continue  # a blank CSV record is not a data row (Parquet has no blank lines)
        n_data += 1
        path = row["path"].strip().replace("\\", "/")
        if path.startswith(f"{root}/"):
            path = path[len(str(root)) + 1:]
        path = posixpath.normpath(path) if path else path
        # labels are keyed in NFC without format characters (Cf) or surrounding whitespace
        label = "".join(c for c in unicodedata.normalize("NFC", row["label"])
                        if unicodedata.category(c) != "Cf").strip()
        if path in _GOOD and label and (classes is None or label.casefold() in {c.casefold() for c in classes}):
            candidates.append((n, path, label, row.get("split", "").strip() or "train"))
    # labels differing only in case: one class, spelt as --classes spells it (a named class stays as
    # it is), else the most frequent spelling (then lower case, then first sorted)
    counts = Counter(c[2] for c in candidates)
    named = set(classes or ())
    spelling = {}
    for lab in sorted(named):
        spelling.setdefault(lab.casefold(), lab)
    for lab in sorted(counts):
        f = lab.casefold()
        if f in {c.casefold() for c in named}:
            continue
        if f not in spelling or (-counts[lab], lab != lab.lower(), lab) < (-counts[spelling[f]], spelling[f] != spelling[f].lower(), spelling[f]):
            spelling[f] = lab
    candidates = [(n, path, label if label in named else spelling[label.casefold()], split)
                  for n, path, label, split in candidates]
    # look-alike spellings of one skeleton: only the most frequent (then ASCII, then first sorted) stays
    counts = Counter(c[2] for c in candidates)
    best = {}
    for lab in counts:
        sk = label_skeleton(lab)
        if sk not in best or (-counts[lab], not lab.isascii(), lab) < (-counts[best[sk]], not best[sk].isascii(), best[sk]):
            best[sk] = lab
    candidates = [c for c in candidates if best[label_skeleton(c[2])] == c[2]]
    kept = {}
    for n, path, label, split in candidates:
        same = [c for c in candidates if c[1] == path]
        if len({c[2] for c in same}) == 1 and same[0][0] == n:
            kept[n] = (path, label, split)
    return kept, n_data


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_label_file_reader(fuzz_root: Path, data: st.DataObject) -> None:
    content, columns, header, rows, classes = data.draw(_label_files(fuzz_root))
    suffix = data.draw(st.sampled_from([".csv", ".txt", ".tsv", ".parquet"]))
    parquet = suffix == ".parquet"
    with tempfile.TemporaryDirectory() as d:
        lf = Path(d) / f"labels{suffix}"
        if parquet:  # same cells, as a string table (the CSV encoding is irrelevant here)
            pq.write_table(pa.table({h: [r[c] for r in rows] for h, c in zip(header, columns)},
                                    schema=pa.schema([(h, pa.string()) for h in header])), lf)
        else:
            lf.write_bytes(content)
        try:
            samples, rejects = discover(fuzz_root, lf, classes=classes)
        except LabelFileError as e:
            assert "labels" in str(e)
            has_columns = "path" in columns and "label" in columns
            n_data = _expected(fuzz_root, columns, rows, classes, parquet)[1] if has_columns else 0
            # Only whole-file problems may raise: a missing column or no data rows.
            assert not has_columns or n_data == 0, str(e)
            return
    assert "path" in columns and "label" in columns
    kept, n_data = _expected(fuzz_root, columns, rows, classes, parquet)
    assert len(samples) + len(rejects) == n_data
    got = {(p, lab, s) for p, lab, s in samples[["source_path", "label", "split"]].itertuples(index=False)}
    assert got == set(kept.values())
    assert len(samples) == len(kept)
    assert set(rejects["row"]).isdisjoint(kept)
    assert rejects["row"].is_unique
    assert (rejects["problem"].str.len() > 0).all()


def test_many_repeated_paths_are_judged_per_path(tmp_path: Path):
    """A generated file where every path repeats many times (this was quadratic in the rows)."""
    root = tmp_path / "data"
    n_paths, repeats = 50, 120
    lines = ["path,label"]
    for i in range(n_paths * repeats):
        k = i % n_paths
        _touch(root, f"happy/{k}.png") if i < n_paths else None
        # paths 0..9 get one conflicting row among their repeats; the rest repeat identically
        label = "sad" if k < 10 and i // n_paths == 7 else "happy"
        lines.append(f"{'./' if i % 3 == 0 else ''}happy/{k}.png,{label}")
    labels = _csv(tmp_path / "labels.csv", "\n".join(lines) + "\n")
    samples, rejects = discover(root, labels)

    assert samples["source_path"].tolist() == [f"happy/{k}.png" for k in range(10, n_paths)]
    problems = rejects["problem"].value_counts().to_dict()
    assert problems == {"conflicting labels for the same path": 10 * repeats,
                        "duplicate row": (n_paths - 10) * (repeats - 1)}
    assert rejects["row"].is_monotonic_increasing and rejects["row"].is_unique
    conflict = rejects[rejects["problem"].str.startswith("conflicting")].iloc[0]
    # each conflicting label once, with its first row, and a count of the rest
    assert conflict["hint"].startswith(f"row 2: 'happy', row {2 + 7 * n_paths}: 'sad', and {repeats - 2} more rows")
    dup = rejects[(rejects["problem"] == "duplicate row") & (rejects["source_path"] == "happy/11.png")]
    assert (dup["hint"].str.startswith("row 13 already lists")).all()  # row 13: the path's first row


# ---------------------------------------------------------------------------------------------
# Label files that are not regular files: read once, bounded, never hanging


def _write_later(path: Path, data: bytes) -> threading.Thread:
    def writer() -> None:
        with open(path, "wb") as f:  # blocks until discover opens the FIFO for reading
            f.write(data)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_labels_from_a_fifo_are_read_once_and_sniffed_from_memory(tmp_path: Path, kind: str):
    root = tmp_path / "data"
    _touch(root, "happy/a.png")
    _touch(root, "sad/b.png")
    if kind == "csv":
        data = b"path,label\nhappy/a.png,happy\nsad/b.png,sad\n"
    else:
        sink = io.BytesIO()
        pq.write_table(pa.table({"path": ["happy/a.png", "sad/b.png"], "label": ["happy", "sad"]}), sink)
        data = sink.getvalue()
    fifo = tmp_path / "labels"  # no suffix, like /dev/fd/63: the format comes from the bytes
    os.mkfifo(fifo)
    writer = _write_later(fifo, data)
    samples, rejects = discover(root, fifo)
    writer.join(timeout=5)
    assert samples["source_path"].tolist() == ["happy/a.png", "sad/b.png"] and rejects.empty


def test_labels_from_an_endless_device_stop_at_the_cap(tmp_path: Path, monkeypatch):
    from fercure import label_file

    monkeypatch.setattr(label_file, "MAX_STREAM_BYTES", 2**20)
    _touch(tmp_path / "data", "happy/a.png")
    with pytest.raises(LabelFileError, match=r"/dev/zero is a character device .*up to 1 MB"):
        discover(tmp_path / "data", Path("/dev/zero"))


def test_a_fifo_nobody_writes_to_times_out(tmp_path: Path, monkeypatch):
    from fercure import label_file

    monkeypatch.setattr(label_file, "STREAM_IDLE_SECONDS", 0.3)
    _touch(tmp_path / "data", "happy/a.png")
    fifo = tmp_path / "labels.csv"
    os.mkfifo(fifo)
    with pytest.raises(LabelFileError, match="FIFO.*nothing came from it"):
        discover(tmp_path / "data", fifo)

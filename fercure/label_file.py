"""A label file read into a header and numbered rows: CSV, TSV or Parquet, whatever its encoding.

``read_label_table(path, notes)`` returns a ``LabelTable``; ``resolve_columns(path, header)`` finds
the path, label and (optional) split columns among the header names (``*_ALIASES``, compared after
``normalise_header``). Whole-file problems (missing, empty, unreadable, an Excel workbook, missing
columns) raise ``LabelFileError``; what is wrong with single rows is ``fercure.ingest``'s to judge.

``row`` is the row number a user sees: for CSV the header is row 1 and the first data row is 2,
counted in records as a spreadsheet shows them (a quoted cell with a line break does not start a
new row; blank rows and an Excel ``sep=`` line do take a number; blank rows are skipped). For
Parquet it is the 0-based row index + 1, and every row is a data row.

Text encodings: UTF-8 (with or without BOM), UTF-16 with BOM (Excel's "Unicode text"); otherwise
cp1252 and, if that fails, latin-1, with a note (``LabelTable.encoding`` lets the path lookup try
the same bytes as a file name on disk). A label file that is not a regular file (a pipe,
/dev/stdin) is read once into memory, bounded in size and in time without data.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import select
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fercure.workspace import WorkspaceError, file_kind

# Accepted header names after normalisation (strip, lower-case, spaces/hyphens -> "_"); the first
# alias present wins, so a file with both "path" and "image" columns uses "path".
PATH_ALIASES = ("path", "file", "filename", "file_name", "filepath", "file_path", "image",
                "image_path", "img")
LABEL_ALIASES = ("label", "class", "emotion", "expression", "class_name", "label_name")
SPLIT_ALIASES = ("split", "usage", "subset")
CSV_SUFFIXES = frozenset({".csv", ".tsv", ".txt"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
_DELIMITERS = (",", ";", "\t")
# A label file that is not a regular file (a pipe, /dev/stdin) is read into memory, at most this much,
# waiting at most this long for data.
MAX_STREAM_BYTES = 512 * 2**20
STREAM_IDLE_SECONDS = 30.0


class LabelFileError(WorkspaceError):
    """The label file as a whole cannot be used (missing, empty, unreadable, wrong columns)."""


@dataclass
class LabelTable:
    """A label file's header and data rows, each with the row number a user sees."""

    header: list[str]  # as found in the file
    rows: list[tuple[int, list[Any]]]  # (row number as the user sees it, cells)
    encoding: str | None  # text encoding of a CSV (to recover non-UTF-8 names); None for Parquet


def normalise_header(name: Any) -> str:
    """A header name as the aliases are written: no BOM, stripped, lower case, spaces and hyphens as _."""
    s = str(name).replace("\ufeff", "").strip().lower()
    return re.sub(r"[\s\-]+", "_", s)


def read_label_table(path: Path, notes: list[str]) -> LabelTable:
    """The label file at ``path`` as Parquet or CSV (told by suffix, else by content); a note is
    added when the text was not UTF-8."""
    if not path.exists():
        raise LabelFileError(f"Label file {path} does not exist. Check the path passed with --labels.")
    if path.is_dir():
        raise LabelFileError(f"Label file {path} is a folder. Pass the CSV or Parquet file itself.")
    kind = file_kind(path)
    # A pipe (`--labels <(...)`, /dev/stdin) or device can be read only once: read it into memory
    # first and sniff the format from that buffer.
    raw = _read_stream(path, kind) if kind else None
    try:
        if raw is None:
            with open(path, "rb") as f:
                head = f.read(8)
        else:
            head = raw[:8]
    except OSError as e:
        raise LabelFileError(f"Cannot read label file {path}: {e.strerror or e}. "
                             "Check that it exists and that you may read it.") from e
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES or (suffix not in CSV_SUFFIXES and head.startswith(b"PAR1")):
        return _read_parquet(path, raw)
    if head.startswith(b"PK\x03\x04"):
        raise LabelFileError(f"Label file {path} looks like an Excel workbook (or another zip file). "
                             "Save it as CSV (UTF-8) and pass that.")
    return _read_csv(path, notes, raw)


def _read_stream(path: Path, kind: str) -> bytes:
    """All of a label file that is not a regular file, read once and bounded: at most
    MAX_STREAM_BYTES (/dev/zero never ends) and at most STREAM_IDLE_SECONDS without data (a FIFO
    nobody writes to must not hang)."""
    try:
        # O_NONBLOCK: opening a FIFO that has no writer yet would block forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise LabelFileError(f"Cannot read label file {path} ({kind}): {e.strerror or e}. "
                             "Save the labels to a regular file and pass that.") from e
    buf = bytearray()
    writer_seen = False  # EOF before any writer connected is "not yet", not "empty"
    deadline = time.monotonic() + STREAM_IDLE_SECONDS
    try:
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:  # a writer is connected but has sent nothing yet
                writer_seen = True
                chunk = None
            except OSError as e:
                raise LabelFileError(f"Cannot read label file {path} ({kind}): {e.strerror or e}.") from e
            if chunk:
                buf += chunk
                deadline = time.monotonic() + STREAM_IDLE_SECONDS
                if len(buf) > MAX_STREAM_BYTES:
                    raise LabelFileError(
                        f"Label file {path} is {kind} that gave more than {MAX_STREAM_BYTES // 2**20} MB. "
                        f"Label files that are not regular files are read into memory, up to "
                        f"{MAX_STREAM_BYTES // 2**20} MB: save the labels to a regular file and pass that.")
                continue
            if chunk == b"" and (buf or writer_seen):
                return bytes(buf)
            left = deadline - time.monotonic()
            if left <= 0:
                raise LabelFileError(
                    f"Label file {path} is {kind} and nothing came from it for {STREAM_IDLE_SECONDS:.0f} s. "
                    "Save the labels to a regular file and pass that.")
            if chunk is None:
                select.select([fd], [], [], left)  # wakes on data or on the writer closing
            else:
                time.sleep(min(0.05, left))  # no writer yet: look again shortly
    finally:
        os.close(fd)


def _read_parquet(path: Path, raw: bytes | None = None) -> LabelTable:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path if raw is None else pa.BufferReader(raw))
    except Exception as e:  # ArrowInvalid, OSError, ...: the file as a whole is unusable
        raise LabelFileError(f"Cannot read label file {path} as Parquet: {e}. "
                             "Re-export it, or save it as CSV.") from e
    header = [str(c) for c in table.column_names]
    if not header:
        raise LabelFileError(f"Label file {path} has no columns; expected path and label columns.")
    idx = resolve_columns(path, header)
    columns: list[list[Any]] = []
    for i in range(len(header)):
        # Only the columns we use are converted; others stay empty placeholders.
        if i in idx.values():
            try:
                columns.append(table.column(i).to_pylist())
            except Exception as e:
                raise LabelFileError(f"Cannot read column {header[i]!r} of {path}: {e}.") from e
        else:
            columns.append([None] * table.num_rows)
    rows = [(r + 1, [col[r] for col in columns]) for r in range(table.num_rows)]
    if not rows:
        raise LabelFileError(f"Label file {path} has no data rows. Add one row per image "
                             "(path, label).")
    return LabelTable(header, rows, None)


def _decode_text(path: Path, raw: bytes, notes: list[str]) -> tuple[str, str]:
    if raw.startswith(b"\xef\xbb\xbf"):
        try:
            return raw[3:].decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            pass  # a BOM followed by non-UTF-8 bytes: fall through to the fallbacks
    elif raw.startswith((b"\xff\xfe", b"\xfe\xff")):  # Excel's "Unicode text" export
        try:
            return raw.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as e:
            raise LabelFileError(f"Label file {path} starts with a UTF-16 byte-order mark but is not "
                                 f"valid UTF-16 ({e}). Save it as CSV (UTF-8).") from e
    else:
        try:
            return raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            pass
    # Not UTF-8. cp1252 (Windows "ANSI", a superset of latin-1's printable characters) is the
    # usual culprit; latin-1 decodes any byte string, so it is the last resort.
    for enc in ("cp1252", "latin-1"):
        try:
            text = raw.decode(enc)
        except UnicodeDecodeError:
            continue
        text = text[1:] if text.startswith("\u00ef\u00bb\u00bf") else text
        notes.append(f"{path} is not valid UTF-8; read it as {enc}. Save it as UTF-8 to be sure "
                     "non-ASCII names are read as intended.")
        return text, enc
    raise AssertionError("latin-1 decodes any bytes")  # pragma: no cover


def _records(text: str, delimiter: str) -> Any:
    return csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=False)


def blank_cells(cells: list[Any]) -> bool:
    """Whether every cell is empty or whitespace."""
    return all(not str(c).strip() for c in cells)


def _first_record(text: str, delimiter: str) -> list[str]:
    try:
        for rec in _records(text, delimiter):
            if not blank_cells(rec):
                return rec
    except csv.Error:
        return []
    return []


def _choose_delimiter(text: str, suffix: str) -> str:
    """Pick the delimiter whose header has both a path and a label column; else the one that
    splits the header into the most cells (then the missing-column error lists sensible names)."""
    order = ("\t", ",", ";") if suffix == ".tsv" else _DELIMITERS
    best, best_score = order[0], -1
    for d in order:
        names = {normalise_header(c) for c in _first_record(text, d)}
        score = len(names)
        if names & set(PATH_ALIASES) and names & set(LABEL_ALIASES):
            score += 10_000
        if score > best_score:
            best, best_score = d, score
    return best


def _read_csv(path: Path, notes: list[str], raw: bytes | None = None) -> LabelTable:
    try:
        raw = path.read_bytes() if raw is None else raw
    except OSError as e:
        raise LabelFileError(f"Cannot read label file {path}: {e.strerror or e}.") from e
    text, encoding = _decode_text(path, raw, notes)
    if not text.strip():
        raise LabelFileError(f"Label file {path} is empty. Expected a header row such as "
                             "`path,label` (optionally `split`) and one row per image.")
    # Excel writes an optional "sep=;" first line; honour it and count it as a row.
    first_line, _, rest = text.partition("\n")
    row_offset = 0
    m = re.fullmatch(r"sep=(.)", first_line.rstrip("\r"))
    if m:
        delimiter, text, row_offset = m.group(1), rest, 1
    else:
        delimiter = _choose_delimiter(text, path.suffix.lower())

    header: list[str] | None = None
    rows: list[tuple[int, list[Any]]] = []
    n = row_offset
    try:
        for rec in _records(text, delimiter):
            n += 1
            if blank_cells(rec):
                continue  # blank lines: not data, but they keep their row number
            if header is None:
                header = rec
                resolve_columns(path, header)  # fail fast with the columns found
                continue
            rows.append((n, rec))
    except csv.Error as e:
        raise LabelFileError(f"Label file {path}, row {n + 1}: cannot parse CSV ({e}). "
                             "Check the quoting around that row.") from e
    if header is None:  # only a "sep=" line
        raise LabelFileError(f"Label file {path} has no header row. Expected a header such as "
                             "`path,label` and one row per image.")
    if not rows:
        raise LabelFileError(f"Label file {path} has a header but no data rows. Add one row per "
                             "image (path, label).")
    return LabelTable(header, rows, encoding)


def resolve_columns(path: Path, header: list[str]) -> dict[str, int]:
    """{"path": i, "label": j, ["split": k]}: the header's column of each, by alias; a missing
    path or label column raises LabelFileError naming the columns found."""
    names = [normalise_header(h) for h in header]
    found: dict[str, int] = {}
    for key, aliases in (("path", PATH_ALIASES), ("label", LABEL_ALIASES), ("split", SPLIT_ALIASES)):
        for alias in aliases:
            if alias in names:
                found[key] = names.index(alias)
                break
    missing = [k for k in ("path", "label") if k not in found]
    if missing:
        shown = ", ".join(repr(str(h)) for h in header) or "(none)"
        msg = (f"Label file {path} is missing the required column(s) {', '.join(missing)}. "
               f"Found columns: {shown}. Expected: path (or {', '.join(PATH_ALIASES[1:4])}, "
               f"image) and label (or {', '.join(LABEL_ALIASES[1:4])}), optionally split.")
        if "pixels" in names:
            msg += (" This looks like a FER2013-style pixel CSV (emotion, pixels, Usage), which "
                    "fercure does not read yet: write the pixel rows out as image files first.")
        raise LabelFileError(msg)
    return found


def cell_text(value: Any) -> str | None:
    """A cell as text; None when it is not a single value (a list, a struct...)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return os.fsdecode(value)  # Parquet binary paths: keep non-UTF-8 names (surrogateescape)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        # Integer labels read back as floats (a column with nulls) must stay "3", not "3.0".
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (list, tuple, dict, set)):
        return None
    return str(value)

"""A reviewer's decisions (saved from the review report) → overrides of fercure's export actions.

A decisions file is CSV (``sample_id,action,label[,given_label]``) or JSON (a list of such
objects, or ``{"decisions": [...]}``), or an annotation tool's export of the queue fercure handed
over (a Label Studio JSON export, a CVAT for images 1.1 XML: ``fercure.handoff``, told by
content). ``action`` is ``keep``, ``drop``, ``relabel`` (to ``label``) or ``accept`` (relabel to
fercure's suggestion). ``given_label``, when present, must match the
audit's: a decision made on another dataset or before the labels changed is not applied blind.
``decided_via`` ``group`` with a ``group_id`` says the row took one decision made on a group card
(``card`` or empty: its own card); the export's reason and ``train --trusted``'s source name it.

Bad rows are reported one by one (file, row, what to do) and skipped; the others still apply.
Only a file that cannot be read as decisions at all stops the export. ``parse`` and ``apply`` are
pure; ``read_decisions`` is the only function that opens a file.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

# what the report's CSV writer and fercure's CSV export put a ' before (a cell a spreadsheet would run)
from fercure import handoff
from fercure.export import FORMULA_START
from fercure.groups import VIA_CARD, VIA_GROUP

ACTIONS = ("keep", "relabel", "drop", "accept")
REVIEWER, FERCURE = "reviewer", "fercure"
DECISION_COLUMNS = ["sample_id", "action", "label", "row", "via"]

# The cleaned table's columns this module reads and writes, in one place (see fercure.export).
CLEANED = {
    "id": "sample_id",
    "given": "given_label",
    "label": "clean_label",
    "action": "action",
    "reason": "reason",
    "suggested": "suggested_label",
    "decided_by": "decided_by",
}


def _cleaned_name(df: pd.DataFrame, key: str) -> str:
    """``CLEANED[key]``, or the cleanlab-style name it is being renamed to when the table has that."""
    aliases = {"given": ("original_label",)}  # the name before 0.2's renames
    for name in (CLEANED[key], *aliases.get(key, ())):
        if name in df.columns:
            return name
    return CLEANED[key]


# A decisions file holds at most one row per audited sample; anything far larger is not one, and
# reading it whole (JSON objects, CSV dicts) would cost tens of times its size in memory. The report's
# rows are short; an annotation tool's export carries its own fields beside each decision (a Label
# Studio task with one annotation, in the shape its export documents: 1.7-2.4 KB).
MIN_MAX_BYTES = 1 << 20
BYTES_PER_SAMPLE = 3072


def max_bytes(n_samples: int) -> int:
    """The largest decisions file read for an audit of ``n_samples``."""
    return MIN_MAX_BYTES + BYTES_PER_SAMPLE * max(0, int(n_samples))


def cell_text(value) -> str:
    """A decision's cell as text: None → "", 0 → "0" (a JSON number is a value, not a missing one),
    and a cell neutralised for spreadsheets (``'=x``) back to what it stands for (``=x``)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    text = str(value).strip()
    if text.startswith("'") and text[1:2] and text[1:].startswith(FORMULA_START):
        return text[1:]
    return text


SHOWN_CHARS = 60  # a cell quoted in a message: a decisions cell is an id, an action or a class name


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """A cell of the user's file as a message quotes it: repr'd (control characters and line
    separators escaped) and cut to ``limit`` characters, with how long it was."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + f"... ({len(text):,} characters)"


def shown_header(names: Sequence[str]) -> str:
    """A header line as a message quotes it: a few names, each cut (any file's first line lands here)."""
    names = [str(n) for n in names]
    if not names:
        return "empty"
    out = ", ".join(shown(n, 30) for n in names[:8])
    return out + (f" and {len(names) - 8:,} more" if len(names) > 8 else "")


class DecisionsFileError(ValueError):
    """The file cannot be read as decisions at all (message names the file and what to do)."""


@dataclass(frozen=True)
class Problem:
    """One decision that was not applied."""

    file: str
    row: str  # "row 4" (CSV line, header = line 1), "entry 3" (JSON, from 1), "task 12" / "image 3 (name)" (a tool's)
    message: str

    def __str__(self) -> str:
        return f"{self.file} {self.row}: {self.message}"


@dataclass
class Decisions:
    """Valid decisions (one per sample) and the rows that were skipped."""

    # sample_id, action (keep | relabel | drop), label (relabel target or None), row, via ("" for a card
    # of its own, "group G" for one decision on group card G)
    table: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    file: str = ""


def read_decisions(path: Path | str, limit: int | None = None) -> list[tuple[str, dict]]:
    """(row label, record) for each decision in a CSV or JSON file; DecisionsFileError when the file
    is not a decisions file (wrong format, no sample_id/action column, larger than ``limit`` bytes,
    nested too deeply, a CSV cell over the csv module's limit)."""
    path = Path(path)
    size = path.stat().st_size
    if limit is not None and size > limit:
        raise _too_large(path, size, limit)
    return _records_from_text(path, _decode(path, path.read_bytes()))


def _too_large(path: Path, size: int, limit: int) -> DecisionsFileError:
    return DecisionsFileError(f"{path} is larger than a decisions file for this audit can be ({limit / 2**20:,.1f} MB: "
                              "one short row per sample); it is not read. Pass the file saved from this workspace's "
                              "report.")


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DecisionsFileError(f"{path} is not UTF-8 text ({e}); save the decisions again from the report "
                                 "(CSV or JSON).") from e


def _records_from_text(path: Path, text: str) -> list[tuple[str, dict]]:
    """``read_decisions`` on a text already read (and size-checked)."""
    stripped = text.lstrip()
    if handoff.is_xml(text):  # an annotation tool's export: CVAT's XML
        return _tool_records(path, lambda: handoff.read_cvat(path, text))
    if path.suffix.lower() == ".json" or stripped.startswith(("[", "{")):
        try:
            data = json.loads(text, object_pairs_hook=_unique_keys)
        except _DuplicateKey as e:
            raise DecisionsFileError(f"{path} has an object with the key {shown(e.args[0])} twice; which one is meant "
                                     "cannot be told. Keep one and run again.") from None
        except json.JSONDecodeError as e:
            raise DecisionsFileError(f"{path} is not valid JSON ({e}); save the decisions again from the "
                                     "report.") from e
        except RecursionError:
            raise DecisionsFileError(f"{path} nests JSON too deeply to be a decisions file (a list of flat objects); "
                                     "save the decisions again from the report.") from None
        if handoff.is_label_studio(data):  # an annotation tool's export: Label Studio's JSON
            return _tool_records(path, lambda: handoff.read_label_studio(path, data))
        items = data.get("decisions") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise DecisionsFileError(f"{path}: expected a list of decisions or {{\"decisions\": [...]}}.")
        _refuse_flattened(path, items[0] if items and isinstance(items[0], dict) else {})
        run = data.get("run_id") if isinstance(data, dict) else None  # the report's JSON names its run once
        out = []
        for i, item in enumerate(items, start=1):
            rec = item if isinstance(item, dict) else {"_bad": item}
            if run and isinstance(item, dict):
                rec = {"run_id": run, **item}
            out.append((f"entry {i}", rec))
        return out
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    _refuse_flattened(path, header)
    _check_unique_columns(path, header)
    missing = [c for c in ("sample_id", "action") if c not in header]
    if missing:
        raise DecisionsFileError(
            f"{path} has no {' or '.join(missing)} column (its header: {shown_header(reader.fieldnames or [])}). "
            "A decisions file is CSV with the header sample_id,action,label (as the report saves it).")
    reader.fieldnames = header
    # DictReader's line_num is the last physical line read: a row's own line number
    out = []
    try:
        for row in reader:
            out.append((f"row {reader.line_num}", {k: v for k, v in row.items() if k is not None}))
    except csv.Error as e:  # a cell over the csv module's field limit (128 KB), a NUL byte
        raise DecisionsFileError(f"{path} row {reader.line_num + 1}: {e}; a decisions row holds an id, an action and "
                                 "a class name. Save the decisions again from the report.") from None
    return out


def _refuse_flattened(path: Path, keys) -> None:
    """A Label Studio export that flattened fercure's tasks (JSON-MIN, CSV) is named, not misread."""
    error = handoff.flattened_tasks_error(path, keys)
    if error is not None:
        raise DecisionsFileError(str(error))


def _tool_records(path: Path, read) -> list[tuple[str, dict]]:
    """The rows of an annotation tool's export (``fercure.handoff``) as records for ``parse``."""
    try:
        return [d.record() for d in read()]
    except handoff.HandoffFileError as e:
        raise DecisionsFileError(str(e)) from None


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """json's object hook: a key given twice in one object is an error, not the last one silently."""
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _check_unique_columns(path: Path, header: Sequence[str]) -> None:
    """A column fercure reads, named twice: csv.DictReader would keep the last one without a word."""
    twice = sorted({h for h in header if h in KNOWN_COLUMNS and header.count(h) > 1})
    if twice:
        raise DecisionsFileError(f"{path} has the column {', '.join(map(shown, twice))} more than once; which one is "
                                 "meant cannot be told. Keep one and run again.")


KNOWN_COLUMNS = ("sample_id", "action", "label", "given_label", "path", "source_path")


def parse(records: Sequence[tuple[str, dict]], *, file: str, sample_ids: Sequence[str], given: Sequence[str],
          suggested: Sequence, classes: Sequence[str], content_hashes: Sequence[str] | None = None,
          runs: Sequence[str] | None = None) -> Decisions:
    """Check each record against the audit (ids, given labels, suggestions, classes).

    ``sample_ids``, ``given`` and ``suggested`` are the audit's columns, row-aligned. A sample decided
    twice keeps its last decision (a row appended later corrects an earlier one); the earlier row is
    reported as overridden. ``content_hashes`` (row-aligned, the manifest's) and ``runs`` (this
    workspace's run ids), when given, are checked against a record's ``content_hash`` (the image
    it was decided on; a prefix of at least 8 hex digits) and ``run_id`` (the run the report
    showed): a decision about another image, or made in another workspace, is not applied blind.
    """
    classes = [str(c) for c in classes]
    known_runs = set(runs) if runs is not None else None
    where = {str(s): i for i, s in enumerate(sample_ids)}
    problems: list[Problem] = []
    chosen: dict[str, dict] = {}
    class_list = ", ".join(classes)

    def bad(row: str, msg: str) -> None:
        problems.append(Problem(file, row, msg))

    for row, rec in records:
        if "_problem" in rec:  # found while reading (an annotation tool's task with no usable annotation)
            bad(row, rec["_problem"])
            continue
        if "_bad" in rec:
            bad(row, f"{shown(repr(rec['_bad']))} is not an object with sample_id and action; skipped.")
            continue
        sid = cell_text(rec.get("sample_id"))
        action = cell_text(rec.get("action")).lower()
        label = cell_text(rec.get("label"))
        if not sid:
            bad(row, "no sample_id; skipped. Copy the sample_id from the report's card.")
            continue
        if sid not in where:
            bad(row, f"unknown sample_id {shown(sid)}: no such sample in this workspace's audit; skipped. Was the "
                     "file saved from another workspace's report?")
            continue
        i = where[sid]
        run = cell_text(rec.get("run_id"))
        if run and known_runs is not None and run not in known_runs:
            bad(row, f"sample {sid} was decided on run {shown(run)}, which this workspace does not have; skipped. "
                     "Were the decisions saved from another workspace's report?")
            continue
        recorded_hash = cell_text(rec.get("content_hash")).lower()
        now = str(content_hashes[i]) if content_hashes is not None else ""
        if len(recorded_hash) >= 8 and now and not now.startswith(recorded_hash):
            bad(row, f"sample {sid} ({shown(rec.get('source_path') or '')}) was decided on another image than the one "
                     "there now (its content hash differs: the file was replaced, or the decisions come from another "
                     "workspace with the same file names); skipped. Review it again.")
            continue
        recorded_given = cell_text(rec.get("given_label"))
        if rec.get("given_tag") and rec["given_tag"] != handoff.label_tag(given[i]):  # CVAT: the image name's
            bad(row, f"sample {sid} was exported for review labelled otherwise than the audit's {given[i]!r} now; "
                     "skipped. The labels changed since the export: export the queue again.")
            continue
        if recorded_given and recorded_given != str(given[i]):
            bad(row, f"sample {sid} was decided as labelled {shown(recorded_given)}, but the audit says "
                     f"{given[i]!r}; skipped. The labels changed since the report: review it again.")
            continue
        if action not in ACTIONS:
            bad(row, f"unknown action {shown(action)} for sample {sid}; skipped. Use keep, relabel, drop or accept.")
            continue
        if action == "accept":
            s = suggested[i]
            if s is None or (isinstance(s, float) and np.isnan(s)) or str(s) == str(given[i]):
                bad(row, f"sample {sid} has no suggestion to accept; skipped. Use relabel with a label, keep or drop.")
                continue
            action, label = "relabel", str(s)
        if action == "relabel":
            if label not in classes:
                close = difflib.get_close_matches(label[:200], classes, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                bad(row, f"unknown class {shown(label)} for sample {sid}; skipped. Classes: {class_list}.{hint}"
                    if label else f"relabel of sample {sid} names no label; skipped. Put a class in the label "
                                  f"column ({class_list}).")
                continue
            if label == str(given[i]):
                action = "keep"  # relabelled to what it already is: the reviewer confirms the label
        via = cell_text(rec.get("decided_via")).lower()
        group = cell_text(rec.get("group_id"))
        if via not in ("", VIA_CARD, VIA_GROUP):
            bad(row, f"unknown decided_via {via!r} for sample {sid}; read as its own card. Use card or group.")
        if sid in chosen:
            bad(chosen[sid]["row"], f"sample {sid} is decided again in {row}; the later decision applies.")
        chosen[sid] = {"sample_id": sid, "action": action, "label": label if action == "relabel" else None,
                       "row": row, "via": f"group {group}".strip() if via == VIA_GROUP else ""}
    table = pd.DataFrame(list(chosen.values()), columns=DECISION_COLUMNS, dtype=object)
    return Decisions(table=table, problems=problems, file=file)


def _via_text(via) -> str:
    """Where a decision came from, as the reason and the trusted source say it ("" for its own card)."""
    via = "" if via is None or (isinstance(via, float) and np.isnan(via)) else str(via)
    return f"one decision for {via}" if via else ""


def apply(cleaned: pd.DataFrame, decisions: Decisions | None, classes: Sequence[str], *,
          soft: bool = False) -> pd.DataFrame:
    """``cleaned`` with each decided sample's action and clean label overridden, and a
    ``decided_by`` column (``reviewer`` or ``fercure``) after ``action``; the input is not modified.

    The reason says what the reviewer decided, then what fercure had done. With ``soft`` the
    ``p_<class>`` training targets follow the decision: one-hot on the kept or new label, NaN on a drop.
    """
    out = cleaned.copy()
    col = {k: _cleaned_name(out, k) for k in CLEANED}
    by = np.full(len(out), FERCURE, dtype=object)
    if decisions is not None and len(decisions.table):
        pos = pd.Series(np.arange(len(out)), index=out[col["id"]].astype(str).to_numpy())
        d = decisions.table[decisions.table["sample_id"].isin(pos.index)]
        rows = pos.loc[d["sample_id"].to_numpy()].to_numpy()
        actions = d["action"].to_numpy(dtype=object)
        given = out[col["given"]].astype(object).to_numpy()[rows]
        labels = np.where(actions == "relabel", d["label"].to_numpy(dtype=object),
                          np.where(actions == "drop", None, given))
        before = out[col["action"]].astype(str).to_numpy()[rows]
        verbs = {"keep": "kept", "relabel": "relabelled", "drop": "dropped"}
        via = d["via"].to_numpy(dtype=object) if "via" in d.columns else np.full(len(d), "", dtype=object)
        reasons = [f"reviewer {verbs[a]}" + (f": {g} -> {lab}" if a == "relabel" else "")
                   + (f", {_via_text(v)}" if _via_text(v) else "")
                   + f" (fercure: {old}; {f'{decisions.file} {r}'.strip()})"
                   for a, g, lab, old, r, v in zip(actions, given, labels, before, d["row"].to_numpy(), via)]
        ai, li, ri = (out.columns.get_loc(col[k]) for k in ("action", "label", "reason"))
        out.iloc[rows, ai] = actions
        out.iloc[rows, li] = labels
        out.iloc[rows, ri] = reasons
        by[rows] = REVIEWER
        if soft:
            cidx = {c: j for j, c in enumerate(classes)}
            pcols = [f"p_{c}" for c in classes if f"p_{c}" in out.columns]
            if len(pcols) == len(classes):
                targets = np.full((len(rows), len(classes)), np.nan)
                for k, lab in enumerate(labels):
                    if lab is not None and lab in cidx:
                        targets[k] = 0.0
                        targets[k, cidx[lab]] = 1.0
                out.iloc[rows, [out.columns.get_loc(c) for c in pcols]] = targets
    out.insert(out.columns.get_loc(col["action"]) + 1, CLEANED["decided_by"], by)
    return out


def summary(decisions: Decisions | None) -> dict:
    """What the provenance records about a decisions file."""
    if decisions is None:
        return {}
    counts = decisions.table["action"].value_counts()
    via = decisions.table["via"].fillna("").astype(str) if "via" in decisions.table.columns else pd.Series([], dtype=str)
    return {
        "file": decisions.file,
        "applied": int(len(decisions.table)),
        "actions": {a: int(counts.get(a, 0)) for a in ("keep", "relabel", "drop")},
        # rows decided by one decision on a group card, and how many group cards that was
        "via_group": int((via != "").sum()), "group_cards": int(via[via != ""].nunique()),
        "skipped": len(decisions.problems),
        "problems": [str(p) for p in decisions.problems[:100]],
    }


# ---------------------------------------------------------------------------------------------
# Trusted labels: decisions files (and plain label tables) given to `fercure train --trusted`

TRUSTED_COLUMNS = ["sample_id", "action", "label", "given_label", "source"]


@dataclass
class Trusted:
    """The reviewed samples of a run, one decision each (the last given wins), and what was skipped.

    ``table``: sample_id, action (keep | relabel | drop), label (the reviewed label; None for a drop),
    given_label (the label as given), source ("FILE row N")."""

    table: pd.DataFrame
    files: list[dict] = field(default_factory=list)  # per file: file, applied, actions, skipped
    problems: list[Problem] = field(default_factory=list)
    overridden: list[str] = field(default_factory=list)  # "sample X: FILE row N replaces FILE row M"


def _plain_records(path: Path, text: str, path_ids: dict[str, str]) -> tuple[list[tuple[str, dict]], list[Problem]]:
    """A ``sample_id,label`` or ``path,label`` table (labels verified elsewhere) as relabel records
    (``parse`` turns a relabel to the given label into a keep); a path the manifest does not know is a
    problem of its own."""
    reader = csv.DictReader(io.StringIO(text))
    reader.fieldnames = [h.strip().lower() for h in (reader.fieldnames or [])]
    _check_unique_columns(path, reader.fieldnames)
    key = "sample_id" if "sample_id" in reader.fieldnames else \
        next(k for k in ("path", "source_path") if k in reader.fieldnames)
    records, problems = [], []
    try:
        for row in reader:
            where, ref = f"row {reader.line_num}", cell_text(row.get(key))
            sid = ref if key == "sample_id" else path_ids.get(ref.replace("\\", "/"), "")
            if key != "sample_id" and ref and not sid:
                problems.append(Problem(str(path), where, f"path {shown(ref)} is not in this workspace's manifest; skipped. "
                                        "Give the path as the manifest has it (relative to the prepared input "
                                        "folder), or the sample_id."))
                continue
            records.append((where, {"sample_id": sid, "action": "relabel", "label": cell_text(row.get("label"))}))
    except csv.Error as e:
        raise DecisionsFileError(f"{path} row {reader.line_num + 1}: {e}; a trusted-label row holds an id or a "
                                 "path and a class name.") from None
    return records, problems


def read_trusted_file(path: Path | str, *, limit: int | None, path_ids: dict[str, str],
                      data: bytes | None = None) -> tuple[list, list[Problem]]:
    """Records of one ``--trusted`` file: a decisions file (``read_decisions``) or a plain CSV table
    with a ``label`` column and a ``sample_id`` or ``path`` column (no ``action``). Returns
    (records, problems found while reading). ``data``: the file's bytes when the caller read them
    (once, to fingerprint what it parsed); else the file is read here."""
    path = Path(path)
    if data is None:
        if limit is not None and path.stat().st_size > limit:
            return read_decisions(path, limit), []  # raises with the size message
        data = path.read_bytes()
    if limit is not None and len(data) > limit:
        raise _too_large(path, len(data), limit)
    text = _decode(path, data)
    if not text.lstrip().startswith(("[", "{")) and path.suffix.lower() != ".json" and not handoff.is_xml(text):
        header = [h.strip().lower() for h in next(csv.reader(io.StringIO(text)), [])]
        _refuse_flattened(path, header)
        if "action" not in header and "label" in header and {"sample_id", "path", "source_path"} & set(header):
            return _plain_records(path, text, path_ids)
        if "action" not in header:
            raise DecisionsFileError(
                f"{path} has neither an action column (a decisions file saved from the report: sample_id,action,"
                f"label) nor a label column with a sample_id or path column (a table of verified labels); its "
                f"header: {shown_header(header)}. Pass one of those.")
    return _records_from_text(path, text), []


def merge_trusted(parsed: Sequence[Decisions], given_of: dict[str, str]) -> Trusted:
    """The decisions of several files, in the order given: a sample decided again later takes the later
    decision (said in ``overridden``). ``given_of``: sample_id → the label as given."""
    chosen: dict[str, dict] = {}
    overridden, files, problems = [], [], []
    for d in parsed:
        files.append(summary(d))
        problems.extend(d.problems)
        for rec in d.table.to_dict("records"):
            sid = rec["sample_id"]
            via = _via_text(rec.get("via"))
            src = f"{d.file} {rec['row']}" + (f" ({via})" if via else "")
            if sid in chosen:
                overridden.append(f"sample {sid}: {src} ({rec['action']}) replaces {chosen[sid]['source']} "
                                  f"({chosen[sid]['action']})")
            label = rec["label"] if rec["action"] == "relabel" else (None if rec["action"] == "drop" else given_of[sid])
            chosen[sid] = {"sample_id": sid, "action": rec["action"], "label": label, "given_label": given_of[sid],
                           "source": src}
    table = pd.DataFrame(list(chosen.values()), columns=TRUSTED_COLUMNS, dtype=object)
    return Trusted(table, files, problems, overridden)


def from_trusted(table: pd.DataFrame) -> Decisions:
    """A run's trusted table (or the audit's reviewed rows as one) as decisions for ``apply``: each row
    names its own source."""
    t = table.rename(columns={"source": "row"})
    t = t.assign(label=np.where(t["action"] == "relabel", t["label"], None), via="")
    return Decisions(table=t[DECISION_COLUMNS].reset_index(drop=True), file="")


def combine(first: Decisions | None, later: Decisions | None) -> Decisions | None:
    """Both sets of decisions, ``later`` winning for a sample both decide (rows name their file)."""
    if first is None or not len(first.table):
        return later
    if later is None:
        return first
    lt = later.table.assign(row=[f"{later.file} {r}".strip() for r in later.table["row"]])
    table = pd.concat([first.table, lt], ignore_index=True).drop_duplicates("sample_id", keep="last")
    return Decisions(table=table.reset_index(drop=True), problems=later.problems, file="")

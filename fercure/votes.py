"""Label files with several labels per image: who said what, kept whole.

Two shapes are read (a plain ``path,label`` file is ``fercure.ingest``'s):

* long: ``path,annotator,label[,split]``, one row per annotation, several rows per image. The
  annotator column is any of ``ANNOTATOR_ALIASES``.
* wide: ``path[,split],<class>,<class>,...``, one row per image, one column per class holding its vote
  count (FER+ and RAF-DB publish theirs so). No label column. The class columns are the numeric ones,
  or with ``--classes`` exactly those; id-like columns (``*_row``, ``*_id``, ``id``, ``index``) never
  are. Counts may be fractions (a published vote distribution).

``read_vote_file`` returns a ``VoteFile``: one sample per image whose label is the consensus (majority
vote, ties to the class with more votes overall, then the first in class order:
``fercure.annotators.majority_vote``), every annotation (the workspace's annotations table), the
rejected rows and notes. A wide file's votes are anonymous: annotator ``""``, one row per image and
class with its count in ``votes``.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fercure import annotators
from fercure import labels as class_names_mod
from fercure.ingest import DEFAULT_SPLIT, REJECT_COLUMNS, SAMPLE_COLUMNS
from fercure.input_paths import PathLocator
from fercure.label_file import LABEL_ALIASES, PATH_ALIASES, SPLIT_ALIASES, LabelFileError, normalise_header
from fercure.label_rules import check_reserved, clean_label, lookalike_hint, lookalike_labels
from fercure.workspace import file_kind, sample_id

ANNOTATOR_ALIASES = ("annotator", "annotator_id", "rater", "rater_id", "worker", "worker_id", "labeler",
                     "labeller", "annotator_name", "user")
ANNOTATION_COLUMNS = ["sample_id", "source_path", "annotator", "label", "votes", "row"]
_ID_LIKE = re.compile(r"^(id|index|idx|row|.*_(row|id|index|idx))$")


@dataclass
class VoteFile:
    kind: str  # "long" | "wide"
    samples: pd.DataFrame  # SAMPLE_COLUMNS + n_votes, agreement; label = the consensus
    annotations: pd.DataFrame  # ANNOTATION_COLUMNS
    rejects: pd.DataFrame  # REJECT_COLUMNS
    classes: list[str]  # every class a vote names (the file's class columns for a wide file)
    notes: list[str] = field(default_factory=list)


def _first(names: list[str], aliases: tuple[str, ...]) -> int | None:
    return next((names.index(a) for a in aliases if a in names), None)


def _read_frame(path: Path, nrows: int | None = None) -> tuple[pd.DataFrame, int, list[str]]:
    """The file as text cells (CSV or Parquet), the row number of its first data row as a user sees
    it (2 for CSV, 1 for Parquet), and notes."""
    notes: list[str] = []
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            df = pd.read_parquet(path)
        except Exception as e:  # noqa: BLE001 - any reader failure means the file is unusable
            raise LabelFileError(f"Cannot read label file {path} as Parquet: {e}. Re-export it, or save it as CSV.") from e
        return (df.head(nrows) if nrows is not None else df), 1, notes
    raw = path.read_bytes() if nrows is None else path.open("rb").read(1 << 16)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")
        notes.append(f"{path} is not UTF-8; read as cp1252.")
    if nrows is not None:
        text = text.split("\n", 1)[0]
    first = text.split("\n", 1)[0]
    sep = max((",", ";", "\t"), key=first.count)
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=False,
                         nrows=nrows)
    except (pd.errors.ParserError, ValueError) as e:
        raise LabelFileError(f"Label file {path}: cannot parse CSV ({e}). Check the quoting and delimiters.") from e
    return df, 2, notes


def sniff(path: Path | str) -> str | None:
    """"long" or "wide" for a file with several labels per image, None for a plain label file (or one
    that is not a regular file: a pipe can be read once, by ``fercure.ingest``)."""
    path = Path(path)
    if not path.is_file() or file_kind(path):
        return None
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            header = [str(c) for c in pq.read_schema(path).names]
        else:
            header = [str(c) for c in _read_frame(path, nrows=0)[0].columns]
    except Exception:  # noqa: BLE001 - unreadable here: ingest reads it and says what is wrong
        return None
    names = [normalise_header(c) for c in header]
    if _first(names, PATH_ALIASES) is None:
        return None
    if _first(names, ANNOTATOR_ALIASES) is not None and _first(names, LABEL_ALIASES) is not None:
        return "long"
    if _first(names, LABEL_ALIASES) is None and len(_class_columns(names, header, None)) >= 2:
        return "wide"
    return None


def _class_columns(names: list[str], header: list[str], wanted: set[str] | None) -> list[int]:
    """Positions of a wide file's class columns: those named in ``wanted``, else every column that is
    not the path, the split or id-like."""
    skip = set(PATH_ALIASES) | set(SPLIT_ALIASES) | set(ANNOTATOR_ALIASES)
    if wanted is not None:
        return [i for i, h in enumerate(header) if clean_label(str(h)) in wanted]
    return [i for i, n in enumerate(names) if n not in skip and not _ID_LIKE.match(n)]


def read_vote_file(root: Path, path: Path, classes: list[str] | None = None) -> VoteFile:
    """The samples, annotations and rejects of a long or wide vote file (module doc)."""
    kind = sniff(path)
    if kind is None:
        raise LabelFileError(f"{path} is not a vote file (path,annotator,label or path,<class>,<class>,...).")
    df, first_row, notes = _read_frame(path)
    if df.empty:
        raise LabelFileError(f"Label file {path} has a header but no data rows.")
    wanted = None if classes is None else {clean_label(str(c)) for c in classes}
    header = [str(c) for c in df.columns]
    names = [normalise_header(c) for c in header]
    locator = PathLocator(root, None)
    file_s = str(path)
    rows = np.arange(len(df)) + first_row
    rejects: list[tuple] = []
    ann: list[tuple[str, str, str, float, int]] = []  # (rel, annotator, label, votes, row)
    split_of: dict[str, str] = {}
    cells = df.astype(object).where(df.notna(), "").astype(str)
    # plain lists: a pandas row lookup per row costs more than the whole file's reading
    blank = (cells.apply(lambda col: col.str.strip()) == "").all(axis=1).tolist()
    path_col = cells.iloc[:, _first(names, PATH_ALIASES)].tolist()
    split_i = _first(names, SPLIT_ALIASES)
    split_col = cells.iloc[:, split_i].tolist() if split_i is not None else None
    if kind == "long":
        ann_col = cells.iloc[:, _first(names, ANNOTATOR_ALIASES)].tolist()
        label_col = cells.iloc[:, _first(names, LABEL_ALIASES)].tolist()
        class_cols: list[int] = []
    else:
        class_cols = _class_columns(names, header, wanted)
        if len(class_cols) < 2:
            raise LabelFileError(f"Vote file {path} has {len(class_cols)} class column(s) "
                                 f"({', '.join(header[i] for i in class_cols) or 'none'}); a wide vote file needs one "
                                 "column per class with its vote count. Check --classes against the header.")
        votes = cells.iloc[:, class_cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        class_names = [clean_label(header[i]) for i in class_cols]
    seen: dict[tuple[str, str], int] = {}
    for k in range(len(df)):
        row = int(rows[k])
        raw_path = path_col[k]
        if blank[k]:
            continue  # a blank row
        if not raw_path.strip():
            rejects.append((file_s, row, "", "empty path", "fill in the image's path, or remove the row"))
            continue
        rel, problem, hint = locator.locate(raw_path)
        if rel is None:
            rejects.append((file_s, row, raw_path.strip(), problem, hint))
            continue
        if split_col is not None:
            split_of.setdefault(rel, split_col[k].strip() or DEFAULT_SPLIT)
        if kind == "long":
            label = clean_label(label_col[k])
            who = ann_col[k].strip()
            if not label:
                rejects.append((file_s, row, raw_path.strip(), "empty label", "fill in the label, or remove the row"))
                continue
            if wanted is not None and label not in wanted:
                rejects.append((file_s, row, raw_path.strip(), f"unknown class {label!r}",
                                f"expected one of: {', '.join(sorted(wanted))} (or add it to --classes)"))
                continue
            if (rel, who) in seen:
                rejects.append((file_s, row, raw_path.strip(), "duplicate annotation",
                                f"row {seen[rel, who]} already gives annotator {who!r}'s label for this image; "
                                "keep one row per image and annotator"))
                continue
            seen[rel, who] = row
            ann.append((rel, who, label, 1.0, row))
            continue
        v = votes[k]
        bad = [class_names[j] for j in np.flatnonzero(~np.isfinite(v) | (v < 0))]
        if bad:
            rejects.append((file_s, row, raw_path.strip(), f"vote count for {bad[0]!r} is not a number >= 0",
                            "write each class's vote count as a number (0 for none)"))
            continue
        if v.sum() <= 0:
            rejects.append((file_s, row, raw_path.strip(), "no votes", "the row's class columns are all 0"))
            continue
        if rel in seen:
            rejects.append((file_s, row, raw_path.strip(), "duplicate row",
                            f"row {seen[rel, '']} already gives this image's votes; keep one row per image"))
            continue
        seen[rel, ""] = row
        ann.extend((rel, "", class_names[j], float(v[j]), row) for j in np.flatnonzero(v > 0))
    taken_for = lookalike_labels([a[2] for a in ann]) if kind == "long" else {}
    if taken_for:  # one class spelt two ways (case, look-alike letters): the rarer spelling's rows go, as in ingest
        rejects.extend((file_s, a[4], a[0], "look-alike label", lookalike_hint(a[2], taken_for[a[2]]))
                       for a in ann if a[2] in taken_for)
        ann = [a for a in ann if a[2] not in taken_for]
        rejects.sort(key=lambda r: r[1])
    classes_out = (class_names if kind == "wide" and wanted is None else
                   [c for c in dict.fromkeys(clean_label(str(c)) for c in classes)] if classes else
                   sorted({a[2] for a in ann}))
    voted = _assemble(kind, ann, split_of, rejects, classes_out, notes)
    counts = {str(k): int(v) for k, v in voted.samples["label"].value_counts().items()}
    check_reserved({c: counts.get(c, 0) for c in classes_out}, path)
    voted.notes.extend(f"warning: {w}" for w in class_names_mod.near_duplicate_classes(counts)
                       + class_names_mod.balance_warnings(counts, classes_out if classes else None))
    return voted


def _assemble(kind: str, ann: list[tuple[str, str, str, float, int]], split_of: dict[str, str],
              rejects: list[tuple], classes: list[str], notes: list[str]) -> VoteFile:
    paths = list(dict.fromkeys(a[0] for a in ann))  # images in the order of their first row
    item_of = {p: i for i, p in enumerate(paths)}
    cidx = {c: i for i, c in enumerate(classes)}
    counts = annotators.vote_counts(np.array([item_of[a[0]] for a in ann], dtype=np.int64),
                                    np.array([cidx[a[2]] for a in ann], dtype=np.int64), len(paths), len(classes),
                                    np.array([a[3] for a in ann]))
    consensus = annotators.majority_vote(counts)
    agree = annotators.agreement(counts, consensus)
    samples = pd.DataFrame({
        "sample_id": [sample_id(p) for p in paths], "source_path": paths,
        "label": [classes[k] for k in consensus], "split": [split_of.get(p, DEFAULT_SPLIT) for p in paths],
        "n_votes": counts.sum(axis=1), "agreement": agree,
    })
    annotations = pd.DataFrame(ann, columns=["source_path", "annotator", "label", "votes", "row"])
    annotations.insert(0, "sample_id", annotations["source_path"].map(sample_id))
    n_split = int((agree < 1).sum())
    notes.append(f"{len(annotations)} annotations of {len(paths)} images ({kind} vote file"
                 + (f", {annotations['annotator'].nunique()} annotators" if kind == "long" else "")
                 + f"): each image's label is the majority vote; {n_split} images have votes for more than one class.")
    rej = pd.DataFrame(rejects, columns=REJECT_COLUMNS)
    return VoteFile(kind, samples[SAMPLE_COLUMNS + ["n_votes", "agreement"]], annotations[ANNOTATION_COLUMNS],
                    rej.astype({"row": "int64"}), classes, notes)


def as_annotations(table: pd.DataFrame, sample_ids: list[str], classes: list[str]
                   ) -> tuple[annotators.Annotations, list[str]]:
    """The annotations table for ``sample_ids`` (items in that order) over ``classes`` as
    ``fercure.annotators.Annotations``, and the annotator names in index order. Rows for other
    samples or classes are left out."""
    item_of = {s: i for i, s in enumerate(sample_ids)}
    cidx = {c: i for i, c in enumerate(classes)}
    t = table[table["sample_id"].isin(item_of) & table["label"].isin(cidx)]
    names = sorted(t["annotator"].astype(str).unique().tolist())
    aidx = {a: i for i, a in enumerate(names)}
    return annotators.Annotations(
        t["sample_id"].map(item_of).to_numpy(np.int64), t["annotator"].astype(str).map(aidx).to_numpy(np.int64),
        t["label"].map(cidx).to_numpy(np.int64), len(sample_ids), max(len(names), 1), len(classes),
        weight=t["votes"].to_numpy(np.float64)), names


# Fewer than this share of an image's votes for its label: the annotators disagree (flagged).
DISAGREEMENT_BELOW = 0.5


@dataclass
class VoteAudit:
    """The audit's view of the votes: columns by audit row, and each annotator's record."""
    columns: pd.DataFrame  # n_votes, annotator_agreement, consensus_label, consensus_score, is_disagreement_issue, votes
    annotators: list[dict]  # per annotator: name, votes, agreement with consensus and model, quality (worst first)
    n_images: int  # audit rows with votes
    n_disagreement: int


def format_votes(counts: np.ndarray, classes: list[str]) -> str:
    """'happy 6 · neutral 3 · sad 1': the classes with votes, most first (ties in class order)."""
    order = sorted(np.flatnonzero(counts > 0), key=lambda j: (-counts[j], j))
    return " · ".join(f"{classes[j]} {counts[j]:g}" for j in order)


def audit_votes(table: pd.DataFrame, sample_ids: list[str], given: list[str | None], probs: np.ndarray,
                classes: list[str]) -> VoteAudit:
    """Per audit row (``sample_ids``, their given labels and the audit's (n, C) probabilities, NaN rows
    where the run did not score the sample): agreement of the votes with the given label, the
    CROWDLAB-style consensus of the votes and the model (``fercure.annotators.model_consensus``),
    the disagreement flag, the votes as text; and per annotator their agreement with that consensus
    and with the model, and their quality."""
    ann, names = as_annotations(table, sample_ids, classes)
    counts = ann.counts()
    has = counts.sum(axis=1) > 0
    cidx = {c: i for i, c in enumerate(classes)}
    g = np.array([cidx.get(str(x), -1) if x is not None else -1 for x in given], dtype=np.int64)
    agree = annotators.agreement(counts, g)
    p = np.asarray(probs, dtype=np.float64)
    scored = np.isfinite(p).all(axis=1)
    p = np.where(scored[:, None], p, 1.0 / len(classes))  # an unscored row: the model says nothing
    cons = annotators.model_consensus(ann, p if scored.any() else None)
    quality = annotators.annotator_quality(ann, cons, p if scored.any() else None)
    disagree = has & (np.nan_to_num(agree, nan=1.0) < DISAGREEMENT_BELOW)
    score = np.full(len(g), np.nan)
    ok = has & (g >= 0)
    score[ok] = cons.probs[np.flatnonzero(ok), g[ok]]
    columns = pd.DataFrame({
        "n_votes": np.where(has, counts.sum(axis=1), np.nan),
        "annotator_agreement": agree,
        "consensus_label": pd.Series([classes[k] if h else None for k, h in zip(cons.label, has)], dtype=object),
        "consensus_score": score,
        "is_disagreement_issue": disagree,
        "votes": [format_votes(c, classes) if h else "" for c, h in zip(counts, has)],
    })
    records = [{"annotator": names[q.annotator] if q.annotator < len(names) else "", "votes": q.n_annotations,
                "agreement_with_consensus": q.agreement_with_consensus,
                "agreement_with_model": q.agreement_with_model, "quality": q.quality} for q in quality]
    records.sort(key=lambda r: (np.nan_to_num(r["quality"], nan=2.0), r["annotator"]))
    return VoteAudit(columns, records, int(has.sum()), int(disagree.sum()))

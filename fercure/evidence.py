"""Evidence the user brings: their model's class probabilities (``audit-labels --pred-probs``) and
embeddings (``--features``), read, checked against the manifest, and turned into the rows of a
predictions table the audit scores like a run's (``fercure.audit.build_audit``), so one audit
judges every row whatever the evidence.

Files: Parquet, CSV or NumPy ``.npy``. A table is keyed by ``sample_id`` or by ``path`` (the
manifest's ``source_path``, relative to the input root); pred-probs have one column per class named
as the classes (``p_<class>`` is read too); features are the other numeric columns, or one list
column. A ``.npy`` holds one row per manifest row, in manifest order.

Every row the audit scores (a known label, a usable image: ``required_rows``) must be in the file;
a row the file lacks, a row the manifest does not know, classes that differ, NaN or negative
values, rows that do not sum to 1 (beyond ``SUM_TOLERANCE``, which rounding explains and which is
renormalised), and features of another length are refused with ``EvidenceFileError`` naming the
file and what to fix. Nothing is written before the files are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
import pandas as pd

from fercure import outliers, schema
from fercure.errors import WorkspaceError
from fercure.workspace import check_input_file

# A row whose sum is off by more than this is not a probability vector rounded (logits, scores,
# percentages): refused. Within it the row is renormalised and the audit says how many were.
SUM_TOLERANCE = 0.01
# The given label's mean probability at or above this looks in-sample: a model that trained on
# these labels scores its own (possibly wrong) labels near 1.
IN_SAMPLE_MEAN = 0.9
SUFFIXES = (".parquet", ".csv", ".npy")
KEY_COLUMNS = ("sample_id", "path", "source_path")
IGNORED_COLUMNS = ("label", "given_label", "split")  # a file may carry them; they are not classes
PRED_FAMILY = "ext_p"  # the predictions table's column family for the --pred-probs distribution


class EvidenceFileError(WorkspaceError):
    """A --pred-probs or --features file cannot be used (the message names the file and what to fix)."""


@dataclass(frozen=True)
class PredProbs:
    """A --pred-probs file, checked: the probabilities of the manifest rows it scores."""

    path: Path
    positions: np.ndarray  # (m,) manifest positions, ascending
    probs: np.ndarray  # (m, K) rows sum to 1
    n_renormalised: int
    max_sum_error: float
    mean_p_given: float


@dataclass(frozen=True)
class Features:
    """A --features file, checked: the embedding of the manifest rows it covers."""

    path: Path
    positions: np.ndarray  # (m,) manifest positions, ascending
    vectors: np.ndarray  # (m, D)


@dataclass(frozen=True)
class FeatureSignals:
    """What the embedding says about each of its rows."""

    positions: np.ndarray  # (m,) manifest positions
    knn_p: np.ndarray  # (m, K) the neighbours' label vote
    knn_agreement: np.ndarray  # (m,) the vote for the given label
    outliers: outliers.OutlierScores
    k: int
    neighbours: outliers.Neighbours | None = None  # (m, k), rows of the features: the map and group cards


@dataclass
class Evidence:
    """What ``audit-labels`` was given besides (or instead of) a run, and what to say about it."""

    pred_probs: PredProbs | None = None
    features: Features | None = None
    feature_signals: FeatureSignals | None = None
    notes: list[str] = field(default_factory=list)  # said under the summary (renormalised rows, fallbacks)
    warnings: list[str] = field(default_factory=list)  # the in-sample warning

    def as_dict(self) -> dict:
        return {"pred_probs": str(self.pred_probs.path) if self.pred_probs else None,
                "features": str(self.features.path) if self.features else None,
                "n_renormalised": self.pred_probs.n_renormalised if self.pred_probs else 0,
                "mean_p_given": self.pred_probs.mean_p_given if self.pred_probs else None,
                "k": self.feature_signals.k if self.feature_signals else None,
                "notes": list(self.notes), "warnings": list(self.warnings)}


# ---------------------------------------------------------------------------------------------
# Which rows need evidence, and the rows of a file


def required_rows(manifest: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """(n,) bool: the manifest rows the audit scores: a label among ``classes`` and an image that is
    neither unreadable nor a duplicate (the rows a train run would use, crop or not)."""
    label = manifest["label"].fillna("").astype(str)
    status = manifest["face_status"].astype(str) if "face_status" in manifest.columns else pd.Series("ok", manifest.index)
    return (label.isin(list(classes)) & ~status.isin(schema.UNUSABLE_STATUSES)).to_numpy()


def _read(path: Path, option: str) -> pd.DataFrame | np.ndarray:
    hint = "Pass a Parquet, CSV or .npy file."
    try:
        path = check_input_file(path, option=option, hint=hint)
    except WorkspaceError as e:
        raise EvidenceFileError(str(e)) from None
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise EvidenceFileError(f"{option} {path}: unknown file type {suffix or '(none)'!r}. {hint}")
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".csv":
            return pd.read_csv(path, dtype={k: str for k in KEY_COLUMNS})
        return pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 — any reader failure is a file the user must fix
        raise EvidenceFileError(f"{option} {path} cannot be read as {suffix[1:]} ({type(e).__name__}: {e}). "
                                f"{hint}") from None


def _positions(df: pd.DataFrame, manifest: pd.DataFrame, path: Path, option: str,
               input_root: str | None) -> np.ndarray:
    """Manifest position of each row of a keyed table; unknown or repeated keys refused."""
    key = next((k for k in KEY_COLUMNS if k in df.columns), None)
    if key is None:
        raise EvidenceFileError(
            f"{option} {path} has no sample_id or path column: key each row by the manifest's sample_id, or by "
            f"its path relative to the input root (as in WS/manifest.parquet's source_path), or pass a .npy "
            f"with one row per manifest row in manifest order.")
    values = df[key].astype(str).to_numpy()
    if key == "sample_id":
        lookup = pd.Series(np.arange(len(manifest)), index=manifest["sample_id"].astype(str).to_numpy())
    else:
        values = np.array([_relative(v, input_root) for v in values], dtype=object)
        lookup = pd.Series(np.arange(len(manifest)), index=manifest["source_path"].astype(str).to_numpy())
    dup = pd.Series(values).duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise EvidenceFileError(f"{option} {path}: data row {i + 1} repeats {key} {values[i]!r}; give each "
                                f"sample one row.")
    known = pd.Series(values).isin(lookup.index).to_numpy()
    if not known.all():
        bad = np.flatnonzero(~known)
        raise EvidenceFileError(
            f"{option} {path}: {len(bad):,} row(s) name samples the manifest does not have (first: data row "
            f"{bad[0] + 1}, {key} {values[bad[0]]!r}). Key rows by the manifest's {'sample_id' if key == 'sample_id' else 'source_path (relative to the input root)'}, "
            f"and leave out images that are not in the workspace.")
    return lookup.loc[values].to_numpy(dtype=np.int64)


def _relative(value: str, input_root: str | None) -> str:
    p = value.replace("\\", "/")
    if input_root and PurePosixPath(p).is_absolute():
        try:
            return PurePosixPath(p).relative_to(PurePosixPath(Path(input_root).as_posix())).as_posix()
        except ValueError:
            return p
    return p[2:] if p.startswith("./") else p


def _keyed_rows(data, manifest: pd.DataFrame, need: np.ndarray, path: Path, option: str,
                input_root) -> tuple[np.ndarray, np.ndarray]:
    """A keyed file's rows that the audit needs, and their manifest positions, in manifest order;
    a needed manifest row the file lacks is an error (``_check_missing``)."""
    all_pos = _positions(data, manifest, path, option, input_root)
    have = np.zeros(len(manifest), bool)
    have[all_pos] = True
    _check_missing(have, need, manifest, path, option)
    use = need[all_pos]
    order = np.argsort(all_pos[use], kind="stable")
    return np.flatnonzero(use)[order], all_pos[use][order]


def _check_missing(have: np.ndarray, need: np.ndarray, manifest: pd.DataFrame, path: Path, option: str) -> None:
    missing = np.flatnonzero(need & ~have)
    if len(missing):
        first = ", ".join(repr(str(manifest["source_path"].iat[i])) for i in missing[:3])
        raise EvidenceFileError(
            f"{option} {path} lacks {len(missing):,} of the {int(need.sum()):,} samples the audit scores "
            f"(first: {first}). Add a row for each (keyed by sample_id or path), or take those images out "
            f"of the label file and re-run `fercure prepare`.")


def _where(path: Path, is_npy: bool, file_row: int, manifest: pd.DataFrame, pos: int) -> str:
    row = f"row {file_row} (manifest order)" if is_npy else f"data row {file_row + 1}"
    return f"{path} {row}, {manifest['source_path'].iat[pos]!r}"


# ---------------------------------------------------------------------------------------------
# --pred-probs


def load_pred_probs(path: Path | str, manifest: pd.DataFrame, classes: Sequence[str], *,
                    input_root: str | None = None) -> PredProbs:
    """The --pred-probs file, checked against the manifest and ``classes`` (see the module docstring)."""
    path, option, classes = Path(path), "--pred-probs", [str(c) for c in classes]
    data = _read(path, option)
    k = len(classes)
    need = required_rows(manifest, classes)
    is_npy = isinstance(data, np.ndarray)
    if is_npy:
        if data.ndim != 2 or data.shape != (len(manifest), k):
            raise EvidenceFileError(
                f"{option} {path} has shape {data.shape}; a .npy needs one row per manifest row in manifest "
                f"order and one column per class in this order: ({len(manifest):,}, {k}) for {classes}.")
        file_rows = np.flatnonzero(need)
        positions = file_rows
        values = np.asarray(data[file_rows], dtype=float)
    else:
        cols = _class_columns(data, classes, path, option)
        file_rows, positions = _keyed_rows(data, manifest, need, path, option, input_root)
        try:
            values = data[cols].to_numpy(dtype=float)[file_rows]
        except (TypeError, ValueError) as e:
            raise EvidenceFileError(f"{option} {path}: the class columns must hold numbers ({e}).") from None
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise EvidenceFileError(f"{option} {_where(path, is_npy, file_rows[r], manifest, positions[r])}: "
                                f"p({classes[c]}) is {values[r, c]}; {int(bad.any(axis=1).sum()):,} row(s) "
                                f"have NaN or infinite values. Give every scored sample a probability for each class.")
    neg = values < 0
    if neg.any():
        r, c = np.argwhere(neg)[0]
        raise EvidenceFileError(f"{option} {_where(path, is_npy, file_rows[r], manifest, positions[r])}: "
                                f"p({classes[c]}) = {values[r, c]:g} is negative; {int(neg.any(axis=1).sum()):,} "
                                f"row(s) are. These look like logits or scores: pass softmax probabilities.")
    sums = values.sum(axis=1)
    err = np.abs(sums - 1.0)
    if len(err) and err.max() > SUM_TOLERANCE:
        r = int(np.argmax(err))
        raise EvidenceFileError(
            f"{option} {_where(path, is_npy, file_rows[r], manifest, positions[r])} sums to {sums[r]:.4g}; "
            f"{int((err > SUM_TOLERANCE).sum()):,} row(s) are off by more than {SUM_TOLERANCE:g}, more than "
            f"rounding explains, so fercure refuses to renormalise them (they look like scores, logits or "
            f"percentages). Pass probabilities: a softmax over the classes, each row summing to 1.")
    n_renorm = int((err > 1e-6).sum())
    probs = values / sums[:, None] if len(values) else values.reshape(0, k)
    given = pd.Series(manifest["label"].astype(str).to_numpy()[positions]).map({c: i for i, c in enumerate(classes)})
    p_given = probs[np.arange(len(probs)), given.to_numpy(dtype=np.int64)] if len(probs) else np.zeros(0)
    return PredProbs(path, positions, probs, n_renorm, float(err.max()) if len(err) else 0.0,
                     float(p_given.mean()) if len(p_given) else float("nan"))


def _class_columns(df: pd.DataFrame, classes: list[str], path: Path, option: str) -> list[str]:
    """The file's columns for ``classes``, in class order (named as the class, or ``p_<class>``)."""
    names = [str(c) for c in df.columns]
    other = [n for n in names if n not in KEY_COLUMNS and n not in IGNORED_COLUMNS]
    for form in ("{}", "p_{}"):
        cols = [form.format(c) for c in classes]
        if all(c in names for c in cols):
            extra = [n for n in other if n not in cols]
            if extra:
                raise EvidenceFileError(
                    f"{option} {path} has column(s) {extra[:5]} that are not classes of this workspace "
                    f"({classes}). Give one column per class, named as the class, and a sample_id or path column.")
            return cols
    missing = [c for c in classes if c not in names and f"p_{c}" not in names]
    raise EvidenceFileError(
        f"{option} {path}: its classes do not match the workspace's. Missing column(s) for {missing[:5]}; "
        f"the file has {other[:10]}; the workspace's classes are {classes}. Name one column per class exactly "
        f"as the class (or p_<class>).")


def in_sample_warning(pp: PredProbs) -> str | None:
    """The warning when the probabilities look in-sample (None otherwise)."""
    if not np.isfinite(pp.mean_p_given) or pp.mean_p_given < IN_SAMPLE_MEAN:
        return None
    return (f"{pp.path}: the given label's mean probability is {pp.mean_p_given:.2f}, which looks in-sample "
            f"(a model that trained on these labels). A model scores the labels it learned, wrong ones too, near "
            f"1, so wrong labels hide; cleanlab asks for out-of-sample probabilities for this reason (e.g. "
            f"cross-validation: each sample scored by a model that did not train on it). The audit goes on.")


# ---------------------------------------------------------------------------------------------
# --features


def load_features(path: Path | str, manifest: pd.DataFrame, classes: Sequence[str], *,
                  input_root: str | None = None) -> Features:
    """The --features file, checked: every scored row present, finite, one length."""
    path, option = Path(path), "--features"
    data = _read(path, option)
    need = required_rows(manifest, classes)
    is_npy = isinstance(data, np.ndarray)
    if is_npy:
        if data.ndim != 2 or len(data) != len(manifest):
            raise EvidenceFileError(
                f"{option} {path} has shape {data.shape}, but the manifest has {len(manifest):,} rows: a .npy "
                f"needs one embedding row per manifest row, in manifest order (shape ({len(manifest):,}, D)).")
        file_rows = positions = np.flatnonzero(need)
        try:
            values = np.asarray(data[file_rows], dtype=float)
        except (TypeError, ValueError) as e:
            raise EvidenceFileError(f"{option} {path} must hold numbers ({e}).") from None
    else:
        file_rows, positions = _keyed_rows(data, manifest, need, path, option, input_root)
        values = _feature_matrix(data, path, option)[file_rows]
    if values.ndim != 2 or values.shape[1] == 0:
        raise EvidenceFileError(f"{option} {path} holds no embedding columns.")
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise EvidenceFileError(f"{option} {_where(path, is_npy, file_rows[r], manifest, positions[r])} has NaN "
                                f"or infinite values ({int(bad.sum()):,} row(s) do). Give every scored sample a "
                                f"finite embedding.")
    return Features(path, positions, values)


def _feature_matrix(df: pd.DataFrame, path: Path, option: str) -> np.ndarray:
    cols = [c for c in df.columns if str(c) not in KEY_COLUMNS and str(c) not in IGNORED_COLUMNS]
    if len(cols) == 1 and df[cols[0]].dtype == object:  # one list column
        lengths = df[cols[0]].map(lambda v: len(v) if v is not None and hasattr(v, "__len__") else -1)
        if lengths.nunique() != 1 or lengths.iat[0] <= 0:
            i = int(np.flatnonzero(lengths.to_numpy() != lengths.mode().iat[0])[0]) if lengths.nunique() > 1 else 0
            raise EvidenceFileError(f"{option} {path}: data row {i + 1}'s embedding has {lengths.iat[i]} values, "
                                    f"others {lengths.mode().iat[0]}; every embedding needs the same length.")
        return np.stack([np.asarray(v, dtype=float) for v in df[cols[0]]])
    try:
        return df[cols].to_numpy(dtype=float)
    except (TypeError, ValueError) as e:
        raise EvidenceFileError(f"{option} {path}: every column besides sample_id / path must be a number "
                                f"(the embedding), or one list column ({e}).") from None


def feature_signals(ft: Features, manifest: pd.DataFrame, classes: Sequence[str],
                    k: int = outliers.DEFAULT_K) -> FeatureSignals:
    """Neighbours' label vote, agreement with the given label and outlier score of each feature row."""
    cidx = {c: i for i, c in enumerate(classes)}
    given = np.array([cidx.get(str(g), -1) for g in manifest["label"].astype(str).to_numpy()[ft.positions]],
                     dtype=np.int64)
    nb = outliers.nearest_neighbours(ft.vectors, k)
    vote = outliers.label_vote(nb, given, len(classes))
    agree = np.where(given >= 0, vote[np.arange(len(given)), np.clip(given, 0, None)], np.nan) if len(given) \
        else np.zeros(0)
    return FeatureSignals(ft.positions, vote, agree, outliers.outlier_scores(nb, given), nb.index.shape[1], nb)


# ---------------------------------------------------------------------------------------------
# Into the audit


def predictions_table(manifest: pd.DataFrame, classes: Sequence[str], ev: Evidence,
                      run_predictions: pd.DataFrame | None) -> pd.DataFrame:
    """A predictions table for ``build_audit``: the run's rows (if any) joined on sample_id with the
    pred-probs (family ``ext_p``) and the features' kNN vote (``knn_p``, ``knn_agreement``; they
    replace the run's own). A row only the file scores joins with NaN run columns."""
    ids = manifest["sample_id"].astype(str).to_numpy()
    labels = manifest["label"].astype(str).to_numpy()
    parts = []
    if ev.pred_probs is not None:
        pp = ev.pred_probs
        parts.append(pd.DataFrame({"sample_id": ids[pp.positions],
                                   **{f"{PRED_FAMILY}_{c}": pp.probs[:, j] for j, c in enumerate(classes)}}))
    if ev.feature_signals is not None:
        fs = ev.feature_signals
        parts.append(pd.DataFrame({"sample_id": ids[fs.positions], "knn_agreement": fs.knn_agreement,
                                   **{f"knn_p_{c}": fs.knn_p[:, j] for j, c in enumerate(classes)}}))
    ext = None
    for part in parts:
        ext = part if ext is None else ext.merge(part, on="sample_id", how="outer")
    if run_predictions is None:
        out = ext
    elif ext is None:
        return run_predictions
    else:
        replaced = [c for c in ext.columns if c != "sample_id" and c in run_predictions.columns]
        out = run_predictions.drop(columns=replaced).merge(ext, on="sample_id", how="outer")
    pos = pd.Series(np.arange(len(ids)), index=ids).loc[out["sample_id"].astype(str)].to_numpy()
    out = out.assign(given_label=labels[pos]).iloc[np.argsort(pos, kind="stable")].reset_index(drop=True)
    return out


def distribution_families(ev: Evidence, has_run: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the audit distribution's families, the suggestion's): the pred-probs when given (out-of-sample
    probabilities are what confident learning counts on), else the run's, else the neighbours' vote."""
    if ev.pred_probs is not None:
        audit_dist = (PRED_FAMILY,)
    elif has_run:
        audit_dist = ("mean_p",)
    else:
        audit_dist = ("knn_p",)
    suggest = ((PRED_FAMILY,) if ev.pred_probs is not None else ()) + \
        (("retrain_p", "knn_p", "mean_p") if has_run else ("knn_p",))
    return audit_dist, suggest


def evidence_label(pred: bool, run: bool, feat: bool) -> str:
    """One row's evidence (``schema.EVIDENCE``)."""
    parts = [name for name, on in zip(schema.EVIDENCE_SOURCES, (pred, run, feat)) if on]
    if parts == ["fercure"]:
        return "fercure run"
    return "+".join(parts) if parts else "not scored"


def evidence_column(manifest: pd.DataFrame, scored: np.ndarray, ev: Evidence,
                    run_predictions: pd.DataFrame | None) -> np.ndarray:
    """(n,) the evidence of each audit row: which sources had the row, for the rows the audit scored."""
    n = len(manifest)
    ids = manifest["sample_id"].astype(str)

    def has(positions: np.ndarray | None) -> np.ndarray:
        m = np.zeros(n, bool)
        if positions is not None:
            m[positions] = True
        return m

    pred = has(ev.pred_probs.positions if ev.pred_probs else None)
    feat = has(ev.feature_signals.positions if ev.feature_signals else None)
    run = ids.isin(set(run_predictions["sample_id"].astype(str))).to_numpy() if run_predictions is not None \
        else np.zeros(n, bool)
    out = np.array([evidence_label(p, r, f) for p, r, f in zip(pred, run, feat)], dtype=object)
    out[~np.asarray(scored, bool)] = "not scored"
    return out

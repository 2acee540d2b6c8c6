"""The table contracts: every Parquet table fercure writes, its columns, their types and meaning.

Declared once, here. ``fercure.workspace.write_table`` conforms a DataFrame to its contract before
writing (casting to the declared types, refusing a missing or undeclared column) and records the
contract's name in the file's metadata; ``read_table`` checks the file against that contract again.
docs/SCHEMA.md is rendered from these declarations (``python -m fercure.schema > docs/SCHEMA.md``;
a test keeps the two equal).

Per-class columns (``p_<class>`` …) are declared once as a family and expanded with the table's
class list (its ``classes`` metadata).

Score convention (as in cleanlab): every ``<issue>_score`` lies in 0..1 and LOW = worse (more
likely an issue), and ``is_<issue>_issue`` is the decision.
"""

from __future__ import annotations

import dataclasses
import fnmatch

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# Bump when a table's columns change meaning; readers refuse other versions with a clear message.
SCHEMA_VERSION = 2

FACE_STATUSES = ("ok", "no_face", "multiple_faces", "low_confidence", "too_small", "unreadable", "duplicate")
# Rows without a usable crop: train leaves them out, export drops them under every policy.
UNUSABLE_STATUSES = ("unreadable", "duplicate")
ACTIONS = ("keep", "relabel", "drop", "review")
DECIDED_BY = ("fercure", "reviewer")
CROP_MODE_VALUES = ("align", "as-given", "")
# What a row's label verdict rests on (fercure.evidence.evidence_label): the sources joined by "+"
# in this order (fercure's own run alone reads "fercure run"); "not scored" when none scored it.
EVIDENCE_SOURCES = ("pred-probs", "fercure", "features")
EVIDENCE = ("fercure run", "pred-probs", "features", "pred-probs+fercure", "pred-probs+features",
            "fercure+features", "pred-probs+fercure+features", "not scored")

STRING, INT64, INT32, FLOAT64, FLOAT32, BOOL = pa.string(), pa.int64(), pa.int32(), pa.float64(), pa.float32(), pa.bool_()
FLOAT_LIST = pa.list_(pa.float64())
FLOAT32_LIST, INT32_LIST = pa.list_(pa.float32()), pa.list_(pa.int32())


class ContractError(ValueError):
    """A table does not meet its contract (the message names the column and, where it can, the row)."""


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    doc: str
    required: bool = True
    nullable: bool = True
    per_class: bool = False  # ``name`` is a prefix: one column ``<name>_<class>`` per class
    bounds: tuple[float, float] | None = None  # finite values must lie in [lo, hi] (NaN allowed)
    values: tuple[str, ...] | None = None  # the only values allowed (null allowed when nullable)


@dataclass(frozen=True)
class Table:
    name: str
    file: str
    doc: str
    columns: tuple[Column, ...]
    metadata: str = ""
    # Column families a name may match when no column declares it (``*`` stands for any text): how a
    # registered issue's columns enter the audit's contract without an entry here.
    families: tuple[Column, ...] = ()

    def column_names(self, classes: Sequence[str] = ()) -> list[str]:
        return [n for n, _ in self._expanded(classes)]

    def _expanded(self, classes: Sequence[str]) -> list[tuple[str, Column]]:
        out = []
        for col in self.columns:
            if col.per_class:
                out.extend((f"{col.name}_{c}", col) for c in classes)
            else:
                out.append((col.name, col))
        return out

    def arrow_schema(self, classes: Sequence[str] = ()) -> pa.Schema:
        """The full pyarrow schema for a table with these classes (every declared column)."""
        return pa.schema([pa.field(n, c.type) for n, c in self._expanded(classes)])

    def columns_for(self, names: Iterable[str], classes: Sequence[str] = ()) -> dict[str, Column]:
        """Declared column of each name; ContractError for a name the contract does not declare."""
        declared = dict(self._expanded(classes))
        for n in names:
            family = next((f for f in self.families if n not in declared and fnmatch.fnmatchcase(n, f.name)), None)
            if family is not None:
                declared[n] = dataclasses.replace(family, name=n)
        unknown = [n for n in names if n not in declared]
        if unknown:
            raise ContractError(
                f"column(s) {', '.join(map(repr, unknown[:5]))} are not part of the {self.name} table's contract"
                + (" (classes: " + ", ".join(classes) + ")" if classes else "")
                + "; declare new columns in fercure/schema.py (and regenerate docs/SCHEMA.md)")
        return {n: declared[n] for n in names}


def _c(name, type_, doc, **kw) -> Column:
    return Column(name, type_, doc, **kw)


SCORE = (0.0, 1.0)

MANIFEST = Table(
    "manifest", "WS/manifest.parquet",
    "One row per input sample that had a usable path (written by prepare).",
    (
        _c("sample_id", STRING, "stable id: a hash of source_path", nullable=False),
        _c("source_path", STRING, "posix path relative to the input root (metadata `input_root`)", nullable=False),
        _c("label", STRING, "the label as given (NFC, case folded into the class's spelling: see label_original)"),
        _c("split", STRING, "train / val / test … as given (default train)"),
        _c("face_status", STRING, "what the face stage made of the image", values=FACE_STATUSES, nullable=False),
        _c("reason", STRING, "why the status is not ok ('' when ok)"),
        _c("face_count", INT64, "faces found"),
        _c("face_score", FLOAT64, "detector confidence of the kept face (NaN if none)"),
        _c("bbox", FLOAT_LIST, "x1, y1, x2, y2 of the kept face in the source image (null if none)"),
        _c("landmarks", FLOAT_LIST, "5 × (x, y) landmarks (null if none)"),
        _c("face_size", FLOAT64, "shorter side of the face box, pixels"),
        _c("sharpness", FLOAT64, "variance of the crop's Laplacian: higher = sharper (scale depends on crop size)"),
        _c("brightness", FLOAT64, "mean grey level of the crop, 0..255"),
        _c("contrast", FLOAT64, "standard deviation of the crop's grey levels"),
        _c("phash", STRING, "perceptual hash of the crop, 16 hex digits ('' without a crop)"),
        _c("duplicate_of", STRING, "sample_id of the first near-duplicate ('' if none)"),
        _c("store_index", INT64, "row of WS/faces/crops.npy holding the aligned crop (-1: none)", nullable=False),
        _c("width", INT64, "source image width, pixels"),
        _c("height", INT64, "source image height, pixels"),
        _c("file_size", INT64, "bytes of the source file"),
        _c("file_mtime_ns", INT64, "modification time of the source file"),
        _c("content_hash", STRING, "blake2b of the file's bytes: a re-run reuses a row only when unchanged"),
        _c("detection_status", STRING, "face_status before duplicates were marked", values=FACE_STATUSES),
        _c("detection_reason", STRING, "reason before duplicates were marked"),
        _c("crop_mode", STRING, "how the crop was cut: 'align' (5-point alignment) or 'as-given' (a square of the "
           "image's shorter side around the face, resized: a pre-cropped face, or no face); '' without a crop",
           values=CROP_MODE_VALUES, required=False),
        _c("crop_fill", FLOAT64, "share of the crop's pixels taken from beyond the image border (replicated "
           "border pixels, never black; 0 for as-given; NaN without a crop)", bounds=(0.0, 1.0), required=False),
        _c("n_votes", FLOAT64, "annotations (votes) the image got in a vote file (NaN with one label per image)",
           required=False),
        _c("agreement", FLOAT64, "share of the image's votes for its label, the majority vote (NaN with one label "
           "per image)", bounds=SCORE, required=False),
        _c("label_original", STRING, "the label as the row wrote it, when `label` folded its case into the class's "
           "spelling ('Angry' read as 'angry'); else the same as `label`", required=False),
    ),
    metadata="classes (the class list, in training-index order; empty after prepare --no-labels), input_root and "
             "labels_file (absolute), settings, settings_fingerprint, no_labels (prepared without labels), "
             "annotations (a vote file's kind and counts)",
)

ANNOTATIONS = Table(
    "annotations", "WS/annotations.parquet",
    "Every annotation of a vote file (written by prepare from a long or wide vote file): one row per image and "
    "annotator (long form), or per image and class with its count (wide form, annotator '').",
    (
        _c("sample_id", STRING, "the manifest's sample_id", nullable=False),
        _c("source_path", STRING, "posix path relative to the input root", nullable=False),
        _c("annotator", STRING, "who gave the label, as in the file ('' for a wide file's anonymous votes)",
           nullable=False),
        _c("label", STRING, "the label given", nullable=False),
        _c("votes", FLOAT64, "how many votes the row stands for (1 in long form; the class's count in wide form)",
           nullable=False, bounds=(0.0, float("inf"))),
        _c("row", INT64, "the label-file row it came from"),
    ),
    metadata="input_root, labels_file, kind (long | wide), classes",
)

REJECTS = Table(
    "rejects", "WS/rejects.parquet",
    "Label-file rows and files that could not become samples (written by prepare).",
    (
        _c("file", STRING, "the label file (or folder) the problem is in"),
        _c("row", INT64, "1-based data row of the label file (null for a file found on disk)"),
        _c("source_path", STRING, "the path the row named"),
        _c("problem", STRING, "what is wrong"),
        _c("hint", STRING, "what to do about it"),
    ),
    metadata="input_root",
)

_PRED_FAMILIES = (
    ("p", "final eval-mode probabilities, mirror-averaged (ensemble mean when M > 1)"),
    ("mean_p", "mean over epochs of the training-time (augmented) probabilities (probe: held out)"),
    ("rel_p", "ARBEx-corrected distribution"),
    ("knn_p", "the k nearest neighbours' label vote in the embedding"),
    ("retrain_p", "the second model's probabilities"),
)

PREDICTIONS = Table(
    "predictions", "WS/runs/<run_id>/predictions.parquet",
    "One row per trained sample (the probe included), written by train; its presence marks the run "
    "finished. Every score is about the *given* label. Planted and probe samples have NaN for the "
    "statistics that need their own training dynamics.",
    (
        _c("sample_id", STRING, "the manifest's sample_id", nullable=False),
        _c("given_label", STRING, "the label the run trained it with", nullable=False),
        _c("given_index", INT64, "its index in the class list", nullable=False),
        *(_c(prefix, FLOAT32, doc, per_class=True, bounds=SCORE) for prefix, doc in _PRED_FAMILIES[:2]),
        _c("mean_p_given", FLOAT32, "mean over epochs of p(given): cartography confidence", bounds=SCORE),
        _c("var_p_given", FLOAT32, "variance over epochs of p(given): cartography variability²"),
        _c("aum", FLOAT32, "area under the margin: mean over epochs of p(given) − max other p", bounds=(-1.0, 1.0)),
        _c("last_p_given", FLOAT32, "p(given) at the last epoch", bounds=SCORE),
        _c("importance_weight", FLOAT32, "SCN importance α at the last epoch (1 without SCN)"),
        _c("relabel_count", INT64, "epochs in which SCN relabelled the sample"),
        _c("scn_label", STRING, "the label after SCN's relabelling (the given label without SCN)"),
        _c("reliability", FLOAT32, "ARBEx reliability (the top probability without it)", bounds=SCORE),
        _c("rel_p", FLOAT32, _PRED_FAMILIES[2][1], per_class=True, bounds=SCORE),
        _c("uncertainty_entropy", FLOAT32, "entropy of the ensemble's mean distribution (nats)"),
        _c("uncertainty_mutual_info", FLOAT32, "mutual information across ensemble members (0 with one model)"),
        _c("oof_p_given", FLOAT32, "out-of-fold p(given), temperature-scaled (NaN unless --folds)", bounds=SCORE),
        _c("forgetting", FLOAT32, "forgetting events over epochs"),
        _c("knn_agreement", FLOAT32, "share of the k nearest neighbours in the embedding with the same label", bounds=SCORE),
        _c("fusion_quality", FLOAT32, "logistic fusion of the signals, fitted on the planted flips", bounds=SCORE),
        _c("retrain_p_given", FLOAT32, "the second model's p(given): held out for the share it dropped", bounds=SCORE),
        _c("mean_p_given_eval", FLOAT32, "mean eval-mode p(given) over epochs (only with epoch_eval)", bounds=SCORE),
        _c("fine_alignment", FLOAT32, "FINE: |cosine| of the embedding to its given class's principal direction "
           "(low = unlike its class; NaN for planted rows)", bounds=SCORE, required=False),
        _c("knn_p", FLOAT32, _PRED_FAMILIES[3][1], per_class=True, bounds=SCORE),
        _c("retrain_p", FLOAT32, _PRED_FAMILIES[4][1], per_class=True, bounds=SCORE),
        _c("retrain_held_out", BOOL, "the second model did not train on it (its suspects, the probe, the planted)"),
        _c("retrain_suspect", BOOL, "in the lowest retrain_drop share of its estimator group (trained, probe, "
                                    "planted) by that group's own score: what the retrain rule asks the second model about"),
        _c("planted", BOOL, "its label was flipped on purpose in the first model (the self-check)"),
        _c("probe", BOOL, "held out of the first model to measure its strength"),
    ),
    metadata="run_id, classes, config, temperature, self_check (planted flips: count, AUROC, estimated "
             "error share, recall at it, the fusion's weights), model_strength (probe accuracy, chance, "
             "standard error, planted AUROC, verdict ok | weak | too_weak, message)",
)

DYNAMICS = Table(
    "dynamics", "WS/runs/<run_id>/dynamics.parquet",
    "One row per sample per epoch per ensemble member (written by train). Planted-flip and probe "
    "samples are left out: they were not trained with their given label.",
    (
        _c("sample_id", STRING, "the manifest's sample_id", nullable=False),
        _c("member", INT32, "ensemble member"),
        _c("epoch", INT32, "epoch, from 0"),
        _c("given_index", INT32, "class index of the given label"),
        _c("current_index", INT32, "class index of the label after this epoch's relabelling"),
        _c("p_given", FLOAT32, "p(given) in the training forward pass (augmented)", bounds=SCORE),
        _c("margin", FLOAT32, "p(given) − max other p", bounds=(-1.0, 1.0)),
        _c("importance_weight", FLOAT32, "SCN importance α (1 without SCN)"),
        _c("predicted", INT32, "argmax class index"),
        _c("relabeled", BOOL, "SCN relabelled it in this epoch"),
    ),
    metadata="as predictions.parquet",
)

EMBEDDING = Table(
    "embedding", "WS/runs/<run_id>/embedding.parquet",
    "One row per trained sample, in predictions.parquet's order (written by train): where the first model "
    "puts it in its embedding. Planted rows are left blank (their place was learnt with their flip).",
    (
        _c("sample_id", STRING, "the manifest's sample_id", nullable=False),
        _c("components", FLOAT32_LIST, "the embedding's first principal components (centred; empty: none)"),
        _c("neighbours", INT32_LIST, "rows of this table of the k nearest neighbours by cosine, best first (empty "
           "without --knn)"),
        _c("neighbour_similarity", FLOAT32_LIST, "their cosine similarity, aligned with neighbours"),
    ),
    metadata="run_id, classes",
)

AUDIT = Table(
    "audit", "WS/audit.parquet",
    "One row per manifest sample, in manifest order (written by audit-labels).",
    (
        _c("sample_id", STRING, "the manifest's sample_id", nullable=False),
        _c("source_path", STRING, "posix path relative to the input root", nullable=False),
        _c("split", STRING, "as in the manifest"),
        _c("given_label", STRING, "the label as given"),
        _c("trained", BOOL, "the sample was scored: the run trained it, or --pred-probs / --features gave it"),
        _c("predicted_label", STRING, "the most probable class of the suggestion distribution, flagged or not (cleanlab's "
           "predicted_label; null when not trained)"),
        _c("suggested_label", STRING, "the replacement for a flagged label, or for an unflagged card a re-ranked queue "
           "puts among its first ones: the most probable other class; the given label otherwise (null when not "
           "trained)"),
        _c("suggested_label_confidence", FLOAT64, "the suggestion distribution's probability of suggested_label",
           bounds=SCORE),
        _c("label_score", FLOAT64, "low = the given label is likely wrong (the --score signal)", bounds=SCORE),
        _c("is_label_issue", BOOL, "the given label is likely wrong (the --threshold-method rule)"),
        _c("ambiguous_score", FLOAT64, "p(top) − p(second) of the suggestion distribution: low = ambiguous",
           bounds=SCORE),
        _c("is_ambiguous_issue", BOOL, "the top two classes are too close to tell"),
        _c("reliability", FLOAT64, "from predictions"),
        _c("uncertainty_entropy", FLOAT64, "from predictions (the audit's own when missing)"),
        _c("uncertainty_mutual_info", FLOAT64, "from predictions"),
        _c("importance_weight", FLOAT64, "from predictions"),
        _c("relabel_count", FLOAT64, "from predictions (NaN when not trained)"),
        _c("scn_label", STRING, "from predictions"),
        _c("aum", FLOAT64, "from predictions"),
        _c("oof_p_given", FLOAT64, "from predictions"),
        _c("retrain_p_given", FLOAT64, "from predictions: the second model's p(given), held out for its suspects, the "
           "probe and the planted rows (NaN without a retrain); the review queue's order", required=False),
        _c("knn_agreement", FLOAT64, "from predictions: share of the k nearest neighbours in the embedding with the "
           "same given label", bounds=SCORE, required=False),
        _c("fine_alignment", FLOAT64, "from predictions: FINE's |cosine| of the embedding to its given class's "
           "principal direction (low = unlike its class)", bounds=SCORE, required=False),
        _c("logit_margin", FLOAT64, "mean over epochs of the logit margin z(given) − max other z, from the run's "
           "dynamics (nats; NaN for probe and planted rows)", required=False),
        _c("el2n_early", FLOAT64, "EL2N over the first fifth of the epochs: ‖softmax − one-hot(given)‖ from the two "
           "probabilities the dynamics keep (a lower bound; NaN for probe and planted rows)", required=False),
        _c("learned_epoch", FLOAT64, "first epoch (from 0) from which the training prediction stays the given label; "
           "the number of epochs when it never does (NaN for probe and planted rows)", required=False),
        _c("p", FLOAT64, "the audit distribution (NaN when not trained)", per_class=True, bounds=SCORE),
        _c("face_status", STRING, "from the manifest", values=FACE_STATUSES),
        _c("face_score", FLOAT64, "from the manifest"),
        _c("sharpness", FLOAT64, "from the manifest (variance of the Laplacian; higher = sharper)"),
        _c("duplicate_of", STRING, "from the manifest"),
        _c("store_index", INT64, "row of WS/faces/crops.npy (-1: no crop)", nullable=False),
        _c("content_hash", STRING, "the manifest's content_hash (blake2b of the image file): export and decisions "
           "check that the image is still the one audited", required=False),
        _c("is_duplicate_issue", BOOL, "a near-duplicate of another sample"),
        _c("duplicate_score", FLOAT64, "0 for a duplicate, 1 otherwise", bounds=SCORE),
        _c("is_no_face_issue", BOOL, "no face was found"),
        _c("no_face_score", FLOAT64, "detector confidence (0 without a face)", bounds=SCORE),
        _c("blur_score", FLOAT64, "share of the dataset's crops that are blurrier (0 = the blurriest; NaN: no crop)",
           bounds=SCORE),
        _c("is_blur_issue", BOOL, "sharpness below the cut in the metadata (stats.blur_threshold)"),
        _c("unreadable_score", FLOAT64, "0 when the file could not be decoded, 1 otherwise", bounds=SCORE),
        _c("is_unreadable_issue", BOOL, "the file could not be decoded"),
        _c("is_dark_issue", BOOL, "the crop's mean grey level is below fercure.exposure.TOO_DARK", required=False),
        _c("dark_score", FLOAT64, "brightness / 255 (NaN: no crop)", bounds=SCORE, required=False),
        _c("is_bright_issue", BOOL, "the crop's mean grey level is above fercure.exposure.TOO_BRIGHT", required=False),
        _c("bright_score", FLOAT64, "1 − brightness / 255 (NaN: no crop)", bounds=SCORE, required=False),
        _c("is_low_contrast_issue", BOOL, "the crop's grey standard deviation is below fercure.exposure.LOW_CONTRAST",
           required=False),
        _c("low_contrast_score", FLOAT64, "contrast / 127.5 (NaN: no crop)", bounds=SCORE, required=False),
        _c("outlier_score", FLOAT64, "exp(−mean cosine distance to the k nearest neighbours in the --features "
           "embedding ÷ its class's median): low = likely an outlier (NaN without --features)", bounds=SCORE,
           required=False),
        _c("is_outlier_issue", BOOL, "that distance is past its class's far-out fence (Q3 + 3 IQR of the log distances)", required=False),
        _c("evidence", STRING, "what the row's label verdict rests on: fercure's run, the --pred-probs file, the "
           "--features embedding, joined by +", values=EVIDENCE, required=False),
        _c("reason", STRING, "why, in words, with the numbers behind each flag"),
        _c("is_reviewed", BOOL, "a reviewer decided this sample (the run's --trusted files): never flagged",
           required=False),
        _c("n_votes", FLOAT64, "votes the image got in the workspace's vote file (NaN: none)", required=False),
        _c("annotator_agreement", FLOAT64, "share of its votes for the given label (NaN: no votes)", bounds=SCORE,
           required=False),
        _c("consensus_label", STRING, "the consensus of its votes and the model's probabilities (CROWDLAB-style, "
           "each weighted by how well it agrees with the majority)", required=False),
        _c("consensus_score", FLOAT64, "that consensus's probability of the given label: low = likely wrong",
           bounds=SCORE, required=False),
        _c("is_disagreement_issue", BOOL, "fewer than half its votes are for the given label", required=False),
        _c("votes", STRING, "its votes, most first ('happy 6 · neutral 3 · sad 1'; '' without votes)",
           required=False),
        _c("reviewed_label", STRING, "the reviewer's label (null when dropped or not reviewed)", required=False),
        _c("decided_by", STRING, "reviewer for a reviewed sample, fercure otherwise", values=DECIDED_BY,
           required=False),
        _c("review_rank", INT64, "the row's place in the review queue, 1 = first (stats.queue says which order: the "
           "hand-made one, or the re-ranker fitted on the reviewed rows); null for reviewed and unscored rows",
           required=False),
        _c("group_id", STRING, "the sample_id of the group card's first member, for every member of a group of "
           "flagged look-alikes one decision covers ('' for a sample in no group; see --groups)", required=False),
        _c("map_x", FLOAT64, "the report's embedding map: the first principal direction of the run's embedding "
           "(NaN without one)", required=False),
        _c("map_y", FLOAT64, "the second principal direction", required=False),
    ),
    metadata="run_id, classes, thresholds, stats (per class, transition matrix, model strength, "
             "self-check, reviewed), predictions (path), trusted (the run's --trusted files and counts)",
    families=(
        _c("is_*_issue", BOOL, "a registered issue's decision (fercure.audit.issues; optional)", required=False),
        _c("*_score", FLOAT64, "a registered issue's score: 0..1, low = worse (optional)", bounds=SCORE,
           required=False),
    ),
)

TRUSTED = Table(
    "trusted", "WS/runs/<run_id>/trusted.parquet",
    "One row per sample a reviewer decided (written by train --trusted; WS/reviewed.parquet, the same contract, by "
    "audit-labels --trusted; the last decision given wins).",
    (
        _c("sample_id", STRING, "the manifest's sample_id", nullable=False),
        _c("action", STRING, "keep (label confirmed), relabel (to label) or drop (left out of the run)",
           values=("keep", "relabel", "drop"), nullable=False),
        _c("label", STRING, "the reviewed label the run trained with (null for a drop)"),
        _c("given_label", STRING, "the label as given in the manifest"),
        _c("source", STRING, "the --trusted file and row the decision came from"),
        _c("rank_when_reviewed", FLOAT64, "the sample's place in the review queue (the audit's review_rank; for an "
           "audit without it, the queue's key: the held-out p(given), else the label score) in the audit the reviewer "
           "worked from, as a rank in (0, 1), low = early (NaN: not in the queue)",
           bounds=SCORE, required=False),
        _c("spot_check", BOOL, "the report offered the sample as a spot check (a random draw among the rows not "
           "reviewed yet)", required=False),
        _c("review_round", INT64, "which --trusted file the decision came from, 1-based", required=False),
        _c("suggested_when_reviewed", STRING, "the class the sample's card suggested in the audit the reviewer "
           "worked from (a flagged row's suggestion other than its given label; null: none), so the decided "
           "cards measure how often a suggestion is right", required=False),
    ),
    metadata="run_id, trusted (the files in order, their counts)",
)

CLEANED = Table(
    "cleaned", "export-cleaned --output FILE",
    "One row per manifest sample (written by export-cleaned): what changed and why; nothing is lost.",
    (
        _c("sample_id", STRING, "the manifest's sample_id", nullable=False),
        _c("source_path", STRING, "posix path relative to the input root (provenance `input_root`)", nullable=False),
        _c("split", STRING, "as in the manifest"),
        _c("given_label", STRING, "the label as given"),
        _c("clean_label", STRING, "the label to train on (null for a dropped row)"),
        _c("action", STRING, "what the policy did, or the reviewer (see decided_by)", values=ACTIONS, nullable=False),
        _c("decided_by", STRING, "whose action it is: fercure (the policy) or reviewer (a --decisions file)",
           values=DECIDED_BY, nullable=False),
        _c("reason", STRING, "why, with the numbers"),
        _c("label_score", FLOAT64, "from the audit: low = the given label is likely wrong", bounds=SCORE),
        _c("is_label_issue", BOOL, "from the audit"),
        _c("predicted_label", STRING, "from the audit"),
        _c("suggested_label", STRING, "from the audit"),
        _c("suggested_label_confidence", FLOAT64, "from the audit", bounds=SCORE),
        _c("ambiguous_score", FLOAT64, "from the audit: low = ambiguous", bounds=SCORE),
        _c("is_ambiguous_issue", BOOL, "from the audit"),
        _c("reliability", FLOAT64, "from the audit"),
        _c("uncertainty_entropy", FLOAT64, "from the audit"),
        _c("face_status", STRING, "from the audit", values=FACE_STATUSES),
        _c("store_index", INT64, "row of the workspace's faces/crops.npy holding the aligned crop (-1: none)",
           nullable=False),
        _c("evidence", STRING, "from the audit: what the label verdict rests on", values=EVIDENCE, required=False),
        *(_c(f"is_{issue}_issue", BOOL, "from the audit", required=False) for issue in ("outlier", "dark", "bright",
                                                                                      "low_contrast")),
        _c("outlier_score", FLOAT64, "from the audit: low = likely an outlier", bounds=SCORE, required=False),
        _c("p", FLOAT64, "the audit's distribution, or soft training targets under --policy soft",
           per_class=True, bounds=SCORE),
    ),
    metadata="the provenance: run_id, policy, min_confidence, model_strength, classes, thresholds, "
             "actions, issues (rows per is_<issue>_issue of the audit), evidence (rows per evidence), audit (path), audit_fercure_version, decided_by (rows per decider), decisions (file, "
             "applied, skipped rows and why), input_root (absolute: source_path is relative to it), crop_store "
             "(absolute path of the crops store_index points into)",
)

HF_IMAGE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])

HF_EXPORT = Table(
    "hf_export", "export-cleaned --format hf --output FILE",
    "One row per exported sample (every row with a clean_label), for `datasets.load_dataset(\"parquet\", "
    "...)`: the `huggingface` metadata declares `image` as an Image and `label` as a ClassLabel.",
    (
        _c("image", HF_IMAGE, "the aligned crop as PNG bytes (path: <sample_id>.png), or the original's "
           "absolute path (bytes null)", nullable=False),
        _c("label", INT64, "index of clean_label in the ClassLabel names (the `classes` metadata)", nullable=False),
        _c("sample_id", STRING, "the manifest's sample_id", nullable=False),
        _c("split", STRING, "as in the manifest"),
        _c("clean_label", STRING, "the label as text"),
        _c("given_label", STRING, "the label as given"),
        _c("action", STRING, "keep, relabel or review: the policy's, or a reviewer's (see decided_by)",
           values=ACTIONS),
        _c("decided_by", STRING, "whose action it is: fercure (the policy) or reviewer (a --decisions file)",
           values=DECIDED_BY, nullable=False),
        _c("label_score", FLOAT64, "from the audit", bounds=SCORE),
        _c("source_path", STRING, "posix path relative to the input root (provenance `input_root`)"),
        _c("store_index", INT64, "row of the workspace's faces/crops.npy (provenance `crop_store`; -1: none)"),
    ),
    metadata="as cleaned (the provenance), plus `huggingface` (the datasets Features)",
)

TABLES: dict[str, Table] = {t.name: t for t in (MANIFEST, REJECTS, ANNOTATIONS, PREDICTIONS, DYNAMICS, EMBEDDING, AUDIT, TRUSTED, CLEANED, HF_EXPORT)}

# Arrow types that hold the same values as the declared one (a file from another writer may use them).
_SAME = {pa.string(): (pa.large_string(),), pa.float64(): (), pa.float32(): (), pa.bool_(): ()}


def _type_matches(actual: pa.DataType, declared: pa.DataType) -> bool:
    return actual == declared or actual in _SAME.get(declared, ()) or pa.types.is_null(actual)


def conform(df: pd.DataFrame, table: Table, classes: Sequence[str] = ()) -> pa.Table:
    """``df`` as an Arrow table of the contract: each column cast to its declared type, then
    ``validate``d. Columns keep ``df``'s order. Raises ContractError naming the column (and row)."""
    names = [str(c) for c in df.columns]
    declared = table.columns_for(names, classes)
    arrays, fields = [], []
    df = df.reset_index(drop=True)
    for name, col in declared.items():
        series = df[name]
        try:
            arr = pa.array(series, type=col.type, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise ContractError(f"column {name!r} of the {table.name} table must be {col.type} "
                                f"({col.doc}); its values are {series.dtype}: {e}") from None
        arrays.append(arr)
        fields.append(pa.field(name, col.type))  # nullable in the file (datasets compares fields with it); checked below
    out = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    validate(out, table, classes)
    return out


def validate(data: pa.Table, table: Table, classes: Sequence[str] = ()) -> None:
    """Check an Arrow table against the contract: every required column present, no undeclared
    column, declared types, no null where none is allowed, scores within bounds, enum values."""
    names = data.schema.names
    declared = table.columns_for(names, classes)
    expanded = dict(table._expanded(classes))
    missing = [n for n, c in expanded.items() if c.required and n not in declared]
    if missing:
        raise ContractError(f"the {table.name} table lacks column(s) {', '.join(map(repr, missing[:5]))}"
                            + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""))
    for name, col in declared.items():
        arr = data.column(name)
        if not _type_matches(arr.type, col.type):
            raise ContractError(f"column {name!r} of the {table.name} table is {arr.type}, not {col.type} ({col.doc})")
        if pa.types.is_null(arr.type):
            continue
        if not col.nullable and arr.null_count:
            raise ContractError(f"column {name!r} of the {table.name} table is empty (null) in row "
                                f"{_first(pc.is_null(arr))}; it must always hold a value ({col.doc})")
        if col.bounds is not None and len(arr):
            lo, hi = col.bounds
            # float32 rounding may step a probability just past 1; NaN compares false: allowed
            bad = pc.or_(pc.less(arr, lo - 1e-6), pc.greater(arr, hi + 1e-6))
            if pc.any(bad).as_py():
                row = _first(bad)
                raise ContractError(f"column {name!r} of the {table.name} table holds "
                                    f"{data.column(name)[row].as_py()!r} in row {row}, outside {lo:g}..{hi:g} ({col.doc})")
        if col.values is not None and len(arr):
            bad = pc.invert(pc.fill_null(pc.is_in(arr, value_set=pa.array(col.values, type=arr.type)), True))
            if pc.any(bad).as_py():
                row = _first(bad)
                raise ContractError(f"column {name!r} of the {table.name} table holds "
                                    f"{data.column(name)[row].as_py()!r} in row {row}; allowed: {', '.join(col.values)}")


def _first(mask) -> int:
    return int(np.flatnonzero(np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False)))[0])


# ---------------------------------------------------------------------------------------------
# docs/SCHEMA.md


def _type_name(t: pa.DataType) -> str:
    if pa.types.is_struct(t):
        return "struct{" + ", ".join(f"{f.name}: {_type_name(f.type)}" for f in t) + "}"
    if pa.types.is_list(t):
        return f"list of {_type_name(t.value_type)}"
    return {"string": "string", "int64": "int64", "int32": "int32", "double": "float64", "float": "float32",
            "bool": "bool", "binary": "binary"}.get(str(t), str(t).replace("double", "float64"))


def render_markdown() -> str:
    """docs/SCHEMA.md: every contract as a table of columns."""
    lines = [
        "# fercure table contracts",
        "",
        "Generated from `fercure/schema.py` by `python -m fercure.schema > docs/SCHEMA.md`; do not edit by hand",
        "(tests/test_schema.py fails when the two differ). Every table is checked against its contract on",
        f"each write and read. Table schema version: {SCHEMA_VERSION} (stored in each file's `fercure` metadata).",
        "",
        "Conventions: every `<issue>_score` lies in 0..1 and low = worse (more likely an issue); `is_<issue>_issue`",
        "is the decision. `<prefix>_<class>` stands for one column per class, in the order of the `classes`",
        "metadata. Columns marked *not null* always hold a value.",
    ]
    for table in TABLES.values():
        lines += ["", f"## {table.name} — `{table.file}`", "", table.doc, "",
                  "| column | type | meaning |", "|---|---|---|"]
        for col in table.columns:
            name = f"{col.name}_<class>" if col.per_class else col.name
            notes = []
            if not col.nullable:
                notes.append("not null")
            if col.bounds is not None:
                notes.append(f"{col.bounds[0]:g}..{col.bounds[1]:g}")
            if col.values is not None:
                notes.append(" \\| ".join(col.values))
            if not col.required:
                notes.append("optional")
            extra = f" ({'; '.join(notes)})" if notes else ""
            lines.append(f"| `{name}` | {_type_name(col.type)} | {col.doc.replace('|', chr(92) + '|')}{extra} |")
        for col in table.families:
            lines.append(f"| `{col.name}` (any other) | {_type_name(col.type)} | {col.doc} |")
        if table.metadata:
            lines += ["", f"Metadata: {table.metadata}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m fercure.schema > docs/SCHEMA.md
    print(render_markdown(), end="")

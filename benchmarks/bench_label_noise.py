"""Label-noise benchmark on FER2013 with FER+ votes (protocol: ../shared/benchmarks/fer2013-ferplus/README.md).

Side by side, in one process, on the same images, device, resolution and epochs:

* fercure           its own chain through the stage functions: run_prepare → run_train (default
                    TrainConfig: plain core + probe + planted flips + kNN + retrain) → run_audit →
                    run_export (default policy); score 1 − label_score.
* fercure_thorough  the same chain with TrainConfig(ensemble=3[, folds=K]).
* seeds             the seeds' methods as 0.1 shipped them: SCN + ARBEx, one run, no retrain.
* elr               the memorisation-resistant candidate: ELR + per-epoch mirror-averaged eval pass.
* jigsaw, inpaint,  the issue-13 parts alone: the plain_dynamics run plus one part (HMTL jigsaw or
  app               in-painting, APViT attentive patch pooling), scored the same way.
* vit, vit_atp      a small ViT from scratch (VIT below) plain, and with APViT attentive token pooling.
* fercure_plus      fercure's default run plus the parts named by --plus.
* plain_dynamics    one plain run (the core alone: no probe, no planted flips, no retrain) scored by
                    mean p(given) over epochs; its flags and suggestions come from fercure's audit.
* plain_original    the anchor a user compares against: the same plain run on the ORIGINAL images
                    (no prepare crops: each file resized to the run's image size, put in a copy of
                    the workspace as its crop store, same rows), scored the same way.

``--crop auto|align|as-given`` chooses how the shared workspace is prepared (prepare's --crop).

Every chain's predictions are also audited under every score × threshold rule (audit_variants:
cheap, no training), so the candidates compare on the same fits.
* cleanlab_oof      cleanlab.filter.find_label_issues on K-fold out-of-fold probabilities of the
                    same backbone (plain config) at the same resolution and epochs.

Ground truth comes from the FER+ votes and is used ONLY for scoring, never as training input:
positive (clear error) g ≤ 1, negative (clean) g ≥ 5, both with NF + unknown < 5, g = votes for the
given label. Downstream: a fresh plain model trained on raw / fercure-cleaned / cleanlab-cleaned /
FER+-majority (oracle) labels, scored on publictest against the FER+ majority.

    .venv/bin/python benchmarks/bench_label_noise.py --scale small --device cpu
    .venv/bin/python benchmarks/bench_label_noise.py --scale full --device cuda   # a GPU

Results merge into benchmarks/results/label_noise.json under "cpu" or "cuda".
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # `common` beside this script
sys.path.insert(0, str(REPO))  # fercure from the checkout, even without an install

import common  # noqa: E402

# FER2013 class name → FER+ vote column (README: anger→angry, happiness→happy, sadness→sad).
CLASS_TO_FERPLUS = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness",
                    "sad": "sadness", "surprise": "surprise", "neutral": "neutral"}
FERPLUS_TO_CLASS = {v: k for k, v in CLASS_TO_FERPLUS.items()}
VOTE_COLUMNS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                "unknown", "NF"]
METHODS = ("fercure", "fercure_thorough", "seeds", "elr", "plain_dynamics", "plain_original", "cleanlab_oof",
           "jigsaw", "inpaint", "app", "vit", "vit_atp", "fercure_plus")
# Single-run chains (no probe, planted flips, kNN or retrain) whose headline score is mean p(given).
PLAIN = dict(holdout=0.0, plant_rate=0.0, retrain=False, knn=0)
PART_SWITCHES = {"jigsaw": dict(jigsaw=True), "inpaint": dict(inpaint=True), "app": dict(pool="app")}
# A small ViT that trains from scratch at 48 px on a CPU: 8-px patches (36 tokens), 6 blocks.
VIT = dict(backbone="vit_tiny_patch16_224", backbone_args={"patch_size": 8, "depth": 6})
STEPS = METHODS + ("downstream", "calibration")

# Per-scale defaults; every one can be overridden on the command line.
SCALES: dict[str, dict[str, Any]] = {
    # Sized for 2 shared CPU cores in ~10 minutes: about 18 ResNet-18 fits' worth of work in all
    # (1 + 3 + 1 + 5 folds × 0.8 + 4 downstream variants × 2 seeds) at ~150 images/s. Its figures
    # test the pipeline and the ranking between methods; they are not the H100 figures of the README.
    "small": {"n_train": 1500, "image_size": 48, "epochs": 5, "test_limit": 1000,
              "thorough_ensemble": 3, "thorough_folds": 0, "cleanlab_folds": 5, "batch_size": 128,
              "downstream_thorough": 0},
    # The CPU reference scale: big enough that the models learn (several thousand images, 15 epochs),
    # small enough for every candidate, cleanlab and the downstream retrains on 2 cores in about 80 minutes.
    "reference": {"n_train": 4000, "image_size": 48, "epochs": 15, "test_limit": 1500,
                  "thorough_ensemble": 3, "thorough_folds": 0, "cleanlab_folds": 5, "batch_size": 128,
                  "downstream_thorough": 0},
    # The README protocol: all 26,892 training images, 96 px, 20 epochs.
    "full": {"n_train": 0, "image_size": 96, "epochs": 20, "test_limit": 0,
             "thorough_ensemble": 3, "thorough_folds": 5, "cleanlab_folds": 5, "batch_size": 128,
             "downstream_thorough": 1},
}

# Columns of predictions.parquet scored one by one; "low" = a low value means a likely wrong label.
SIGNAL_DIRECTIONS = {
    "mean_p_given": "low", "aum": "low", "last_p_given": "low", "importance_weight": "low",
    "reliability": "low", "oof_p_given": "low", "final_p_given": "low", "rel_p_given": "low",
    "var_p_given": "high", "uncertainty_entropy": "high", "uncertainty_mutual_info": "high",
    "relabel_count": "high", "mean_plus_std_p_given": "low", "forgetting": "high", "knn_agreement": "low",
    "fusion_quality": "low", "retrain_p_given": "low", "mean_p_given_eval": "low",
    "retrain_combined": "low",
}
# Audit variants scored on every chain's predictions: label_score signal (or blend) × threshold rule.
AUDIT_SCORES: dict[str, Any] = {"confidence": "confidence", "confidence_variability": "confidence_variability",
                                "aum": "aum", "retrain": "retrain", "fusion": "fusion", "knn": "knn",
                                "eval": "eval", "confidence+knn": {"confidence": 1.0, "knn": 1.0},
                                "retrain+knn": {"retrain": 2.0, "knn": 1.0}}
AUDIT_THRESHOLDS = ("retrain", "noise_rate", "planted")


# ---------------------------------------------------------------------------------------------
# Small utilities


class LogReporter:
    """fercure progress Reporter that prints one line per step to stderr (readable in a log file,
    unlike a live progress bar)."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0

    def _print(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    def log(self, message: str) -> None:
        self._print(message)

    def task(self, description: str, total: int | None) -> "_LogHandle":
        return _LogHandle(self, description, total)


class _LogHandle:
    def __init__(self, rep: LogReporter, desc: str, total: int | None) -> None:
        self.rep, self.desc, self.total, self.done, self.t = rep, desc, total, 0, time.perf_counter()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if n and self.desc.startswith("train"):  # one line per epoch; other stages only at the end
            self.rep._print(f"{self.desc} {self.done}/{self.total} ({time.perf_counter() - self.t:.1f}s)")

    def close(self) -> None:
        if not self.desc.startswith("train"):
            self.rep._print(f"{self.desc} done ({time.perf_counter() - self.t:.1f}s)")


@dataclass
class Timer:
    seconds: float = 0.0

    def __enter__(self) -> "Timer":
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds += time.perf_counter() - self._t


def stratified_subset(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of a class-stratified random subset of size n (all when n ≤ 0 or ≥ len)."""
    labels = np.asarray(labels)
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts / counts.sum() * n).astype(int)
    # hand the remainder to the classes with the largest fractional parts (largest-remainder)
    frac = counts / counts.sum() * n - quota
    quota[np.argsort(-frac)[: n - quota.sum()]] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked))


# ---------------------------------------------------------------------------------------------
# Ground truth from the FER+ votes (evaluation only)


def load_split(data: Path, split: str) -> pd.DataFrame:
    """labels.csv joined with ferplus_votes.csv, plus the derived truth columns:
    g (votes for the given label), positive, negative, majority (class name or None; a unique
    plurality that is one of the 7 classes) and majority_votes."""
    d = data / split
    labels = pd.read_csv(d / "labels.csv", dtype={"path": str, "label": str})
    votes = pd.read_csv(d / "ferplus_votes.csv")
    df = labels.merge(votes, on="path", how="left", validate="one_to_one")
    if df[VOTE_COLUMNS].isna().any().any():
        raise SystemExit(f"{d}: {int(df[VOTE_COLUMNS].isna().any(axis=1).sum())} rows have no FER+ votes")
    unknown = set(df["label"]) - set(CLASS_TO_FERPLUS)
    if unknown:
        raise SystemExit(f"{d}/labels.csv has labels outside the 7 FER2013 classes: {sorted(unknown)}")
    v = df[VOTE_COLUMNS].to_numpy(dtype=np.int64)
    col = {c: i for i, c in enumerate(VOTE_COLUMNS)}
    g = v[np.arange(len(df)), df["label"].map(lambda s: col[CLASS_TO_FERPLUS[s]]).to_numpy()]
    junk = v[:, col["NF"]] + v[:, col["unknown"]]
    top = v.max(axis=1)
    unique_top = (v == top[:, None]).sum(axis=1) == 1
    arg = v.argmax(axis=1)
    majority = [FERPLUS_TO_CLASS.get(VOTE_COLUMNS[a]) if u else None for a, u in zip(arg, unique_top)]
    return df.assign(g=g, positive=(g <= 1) & (junk < 5), negative=(g >= 5) & (junk < 5),
                     majority=majority, majority_votes=top)


# ---------------------------------------------------------------------------------------------
# Scoring


def detection_metrics(truth: pd.DataFrame, score: np.ndarray, flagged: np.ndarray | None,
                      suggested: np.ndarray | None) -> dict[str, Any]:
    """AUROC/AP of ``score`` (high = likely wrong) and P/R/F1 of ``flagged`` over positives ∪
    negatives with a finite score; suggested-label accuracy over flagged positives. Arrays are
    aligned with ``truth`` rows."""
    score = np.asarray(score, dtype=np.float64)
    ev = (truth["positive"] | truth["negative"]).to_numpy() & np.isfinite(score)
    y = truth["positive"].to_numpy()[ev]
    out: dict[str, Any] = {"auroc": common.auroc(y, score[ev]), "ap": common.average_precision(y, score[ev]),
                           "n_positive": int(y.sum()), "n_negative": int((~y).sum())}
    if flagged is not None:
        f = np.asarray(flagged, dtype=bool)
        prf = common.precision_recall_f1(y, f[ev])
        out.update(flagged=prf["flagged"], precision=prf["precision"], recall=prf["recall"], f1=prf["f1"],
                   flagged_all=int(f.sum()))
        if suggested is not None:
            fp = f & truth["positive"].to_numpy() & np.isfinite(score)
            sugg = np.asarray(suggested, dtype=object)[fp]
            maj = truth["majority"].to_numpy(dtype=object)[fp]
            out["suggested_label_accuracy"] = float(np.mean(sugg == maj)) if fp.any() else float("nan")
            out["n_flagged_positive"] = int(fp.sum())
    return out


def signal_metrics(truth: pd.DataFrame, pred: pd.DataFrame, classes: list[str]) -> dict[str, Any]:
    """AUROC/AP of every per-sample signal of a predictions table, one at a time. ``pred`` is
    aligned with ``truth`` (NaN rows for samples the run did not train)."""
    cols = dict.fromkeys(c for c in SIGNAL_DIRECTIONS if c in pred.columns)
    table = pred.copy()
    given = table["given_index"].to_numpy()
    ok = np.isfinite(given.astype(float))
    gi = np.where(ok, given, 0).astype(int)
    rows = np.arange(len(table))
    p_cols = [f"p_{c}" for c in classes]
    if all(c in table.columns for c in p_cols):  # final-epoch eval probability of the given label
        table["final_p_given"] = np.where(ok, table[p_cols].to_numpy(dtype=float)[rows, gi], np.nan)
        cols["final_p_given"] = None
    if {"mean_p_given", "var_p_given"} <= set(table.columns):  # audit's --score confidence_variability
        table["mean_plus_std_p_given"] = table["mean_p_given"] + np.sqrt(table["var_p_given"].clip(lower=0))
        cols["mean_plus_std_p_given"] = None
    if {"mean_p_given", "retrain_p_given"} <= set(table.columns):
        table["retrain_combined"] = (table["mean_p_given"] + table["retrain_p_given"]) / 2
        cols["retrain_combined"] = None
    r_cols = [f"rel_p_{c}" for c in classes]
    if all(c in table.columns for c in r_cols):  # ARBEx-corrected probability of the given label
        table["rel_p_given"] = np.where(ok, table[r_cols].to_numpy(dtype=float)[rows, gi], np.nan)
        cols["rel_p_given"] = None
    out: dict[str, Any] = {}
    for c in cols:
        x = table[c].to_numpy(dtype=np.float64)
        fin = x[np.isfinite(x)]
        if fin.size == 0 or np.ptp(fin) == 0:
            out[c] = {"auroc": None, "ap": None, "note": "constant or absent in this run"}
            continue
        score = -x if SIGNAL_DIRECTIONS[c] == "low" else x
        m = detection_metrics(truth, score, None, None)
        out[c] = {"auroc": m["auroc"], "ap": m["ap"], "direction": f"{SIGNAL_DIRECTIONS[c]} = likely wrong"}
    return out


def curator_metrics(truth: pd.DataFrame, table: pd.DataFrame, stats: dict, classes: list[str],
                    manifest: pd.DataFrame | None = None, pred: pd.DataFrame | None = None) -> dict[str, Any]:
    """What a curator experiences of one audit (issue 17): the ranking inside each given class,
    the precision of the review queue in the report's own order, the suggestion's accuracy per
    confidence band, and the flag rates of the run's own rows (trained, probe, planted).

    ``table``: the audit in manifest order (as build_audit returns it); ``pred``: the run's
    predictions aligned with ``truth`` (for the probe/planted columns)."""
    from fercure.report.data import BANDS, confidence_band, review_order, review_rows

    sid = truth["sample_id"]
    a = aligned(table, sid)
    ev = (truth["positive"] | truth["negative"]).to_numpy()
    pos = truth["positive"].to_numpy()
    score = 1.0 - a["label_score"].to_numpy(dtype=np.float64)
    ok = ev & np.isfinite(score)
    per, macro = common.within_class_auroc(pos[ok], score[ok], truth["label"].to_numpy(dtype=object)[ok])
    # the review queue: the report's listed rows in its order; cards without a FER+ verdict skipped
    bits, listed = review_rows(table, manifest)
    order = review_order(table, listed, bits)
    verdict = pd.Series(np.where(pos, 1, np.where(truth["negative"].to_numpy(), 0, -1)), index=sid.to_numpy())
    shown = verdict.reindex(table["sample_id"].to_numpy()[order]).to_numpy()
    shown = shown[np.isfinite(shown) & (shown >= 0)]
    out: dict[str, Any] = {"within_class_auroc": per, "within_class_auroc_macro": macro,
                           "queue_precision": common.precision_at(shown == 1),
                           "queue_cards_with_verdict": int(len(shown))}
    # confidence bands: suggestion = FER+ majority over flagged rows with a majority label
    flagged = a["is_label_issue"].fillna(False).to_numpy(bool)
    maj = truth["majority"].to_numpy(dtype=object)
    m = flagged & pd.notna(maj) & a["suggested_label"].notna().to_numpy()
    bands = stats.get("confidence_bands") or {}
    vrd = (stats.get("model_strength") or {}).get("verdict")
    conf = a["suggested_label_confidence"].to_numpy(dtype=float)
    # (an audit from before issue 17 has no calibrated bands: the lift rule of that code decides)
    band = np.array([BANDS.index(confidence_band(c, len(classes), None, bands) if bands else
                                 confidence_band(c, len(classes), None)) for c in conf[m]], dtype=int)
    acc, n, rising = common.accuracy_by_band(band, a["suggested_label"].to_numpy(dtype=object)[m] == maj[m], len(BANDS))
    out["bands"] = {"names": list(BANDS), "calibrated": bool(bands.get("calibrated")), "cuts": bands.get("cuts"),
                    "probe_accuracy": bands.get("accuracy"), "ferplus_accuracy": acc, "n": n,
                    "rising": rising, "model_verdict": vrd}
    if pred is not None and {"planted", "probe"} <= set(pred.columns):
        grp = np.where(pred["probe"].fillna(False).to_numpy(bool), "probe",
                       np.where(pred["planted"].fillna(False).to_numpy(bool), "planted", "trained"))
        rates = {}
        for g in ("trained", "probe", "planted"):
            gm = (grp == g) & ev
            rates[g] = {"n_clear_errors": int((gm & pos).sum()), "n_clean": int((gm & ~pos).sum()),
                        "flagged_clear_errors": float(flagged[gm & pos].mean()) if (gm & pos).any() else None,
                        "flagged_clean": float(flagged[gm & ~pos].mean()) if (gm & ~pos).any() else None}
        out["groups"] = rates
    return out


def suggestion_accuracy(truth: pd.DataFrame, suggestion: np.ndarray) -> float:
    """Over every positive (clear error) with a suggestion and a class majority: how often the
    suggestion is the FER+ majority. Independent of any method's flags, so distributions compare."""
    s = np.asarray(suggestion, dtype=object)
    m = truth["positive"].to_numpy() & truth["majority"].notna().to_numpy() & pd.notna(s)
    return float(np.mean(s[m] == truth["majority"].to_numpy(dtype=object)[m])) if m.any() else float("nan")


def suggestion_sources(truth: pd.DataFrame, pred: pd.DataFrame, classes: list[str]) -> dict[str, float]:
    """suggestion_accuracy of the argmax of each class distribution a run writes (p = final eval,
    mean_p = mean over epochs of training-time, rel_p = ARBEx-corrected) and of SCN's label, to
    choose which one the audit should suggest from."""
    out: dict[str, float] = {}
    ok = pred["given_index"].notna().to_numpy()
    for prefix in ("p", "mean_p", "rel_p", "knn_p", "retrain_p"):
        cols = [f"{prefix}_{c}" for c in classes]
        if all(c in pred.columns for c in cols):
            arg = np.nan_to_num(pred[cols].to_numpy(dtype=float), nan=-1.0).argmax(axis=1)
            out[prefix] = suggestion_accuracy(truth, np.where(ok, np.array(classes, dtype=object)[arg], None))
    if "scn_label" in pred.columns:
        out["scn_label"] = suggestion_accuracy(truth, pred["scn_label"].where(pred["scn_label"].notna()).to_numpy(dtype=object))
    return out


def aligned(frame: pd.DataFrame, sample_ids: pd.Series) -> pd.DataFrame:
    """Rows of ``frame`` (keyed by sample_id) in the order of ``sample_ids``; NaN where absent."""
    return frame.set_index("sample_id").reindex(sample_ids.to_numpy()).reset_index()


# ---------------------------------------------------------------------------------------------
# The benchmark


@dataclass
class Bench:
    args: argparse.Namespace
    cfg: dict[str, Any]
    device: str
    scratch: Path
    reporter: LogReporter
    results: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    reuse: dict[str, dict[str, Any]] = field(default_factory=dict)  # chain → its earlier metrics

    def note(self, msg: str) -> None:
        self.notes.append(msg)
        self.reporter.log("note: " + msg)

    def save_partial(self, key: str, value: Any) -> None:
        """Keep each finished step in <out>.partial.json, so a long run that is stopped keeps what
        it measured (the final merge into <out> happens only at the end)."""
        import json
        import os

        self.results[key] = value
        path = Path(str(self.args.out) + ".partial.json")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(common.to_jsonable({**self.results, "notes": self.notes}), indent=1))
        os.replace(tmp, path)

    def train_config(self, **kw: Any) -> Any:
        from fercure.train.config import TrainConfig

        base = dict(backbone=self.args.backbone, image_size=self.cfg["image_size"], epochs=self.cfg["epochs"],
                    batch_size=self.cfg["batch_size"], device=self.device, seed=self.args.seed)
        base.update(kw)
        return TrainConfig(**base)

    def default_config(self, **kw: Any) -> Any:
        """fercure's default TrainConfig at this scale's size/epochs (relabelling from halfway)."""
        return self.train_config(**kw)


def run_chain(b: Bench, ws: Path, name: str, config: Any, truth_ws: pd.DataFrame) -> dict[str, Any]:
    """fercure's stages on a prepared workspace: train → audit → export. Returns metrics plus the
    frames the later steps need (audit, cleaned, predictions), aligned with ``truth_ws``.

    With ``--reuse NAME`` the chain's finished run from ``--reuse-from`` (an earlier results or
    .partial.json of the same workspace) is audited and exported again with the current code instead
    of being trained again; its training seconds are the earlier run's."""
    from types import SimpleNamespace

    from fercure.stages.audit import run_audit
    from fercure.stages.export import run_export
    from fercure.stages.train import run_train
    from fercure.workspace import read_metadata, read_table

    b.reporter.log(f"{name}: ensemble={config.ensemble} folds={config.folds} selfcure={config.selfcure} "
                   f"reliability={config.reliability} epochs={config.epochs} size={config.image_size}")
    t = Timer()
    earlier = b.reuse.get(name)
    with t:
        if earlier is not None:
            run_dir = ws / "runs" / earlier["run_id"]
            ts = SimpleNamespace(run_id=earlier["run_id"], run_dir=run_dir, seconds=earlier["train_seconds"],
                                 images_per_s=earlier["images_per_s"], n_samples=earlier["n_trained"],
                                 final_train_accuracy=earlier["final_train_accuracy"], temperature=None,
                                 classes=list(read_metadata(run_dir / "predictions.parquet")["classes"]))
            b.note(f"{name}: fits reused from run {ts.run_id} ({earlier['train_seconds']:.0f}s of training), "
                   "audited and exported again with this commit's code")
        else:
            ts = run_train(ws, config, reporter=b.reporter)
        au = run_audit(ws, run_id=ts.run_id, write_report=False, reporter=b.reporter)
        audit = read_table(au.audit_path)  # read now: the next chain's audit overwrites WS/audit.parquet
        ex = run_export(ws, b.scratch / f"cleaned_{name}.parquet", force=True)
    cleaned = read_table(ex.output)
    pred = read_table(ts.run_dir / "predictions.parquet")
    sid = truth_ws["sample_id"]
    audit_a, pred_a = aligned(audit, sid), aligned(pred, sid)
    score = 1.0 - audit_a["label_score"].to_numpy(dtype=np.float64)
    m = detection_metrics(truth_ws, score, audit_a["is_label_issue"].fillna(False).to_numpy(bool),
                          audit_a["suggested_label"].to_numpy(dtype=object))
    m["suggestion_accuracy_by_source"] = suggestion_sources(truth_ws, pred_a, ts.classes)
    meta = read_metadata(ts.run_dir / "predictions.parquet")
    m["model_strength"] = meta.get("model_strength")
    m["self_check"] = meta.get("self_check")
    m["flagged_vs_clear_errors"] = float(m["flagged_all"] / max(int(truth_ws["positive"].sum()), 1))
    audit_meta = read_metadata(au.audit_path)
    m.update(curator_metrics(truth_ws, audit, {**audit_meta.get("stats", {}), **audit_meta.get("thresholds", {})},
                             ts.classes, read_table(ws / "manifest.parquet"), pred_a))
    m["review_share"] = float(ex.actions.get("review", 0) / max(len(cleaned), 1))
    m["audit_variants"] = audit_variants(b, ws, ts.run_id, truth_ws)
    m.update(seconds=t.seconds + (ts.seconds if earlier is not None else 0.0), reused=earlier is not None,
             train_seconds=ts.seconds, images_per_s=ts.images_per_s,
             final_train_accuracy=ts.final_train_accuracy, run_id=ts.run_id, n_trained=ts.n_samples,
             threshold_method_used=au.thresholds.get("threshold_method_used"),
             export_actions=ex.actions, temperature=ts.temperature,
             config={k: v for k, v in config.to_dict().items() if k != "extra"})
    b.reporter.log(f"{name}: AUROC {m['auroc']:.3f} AP {m['ap']:.3f} flagged {m['flagged']} "
                   f"P {m['precision']:.3f} R {m['recall']:.3f} ({m['seconds']:.0f}s)")
    b.save_partial(name, {**m, "signals": signal_metrics(truth_ws, pred_a, ts.classes)})
    return {"metrics": m, "audit": audit_a, "cleaned": cleaned, "pred": pred_a, "classes": ts.classes,
            "summary": ts}


def audit_variants(b: Bench, ws: Path, run_id: str, truth_ws: pd.DataFrame) -> dict[str, Any]:
    """Every AUDIT_SCORES × AUDIT_THRESHOLDS audit of one run's predictions (no training), scored
    against the FER+ truth: detection, flagged count vs clear errors, export actions (default
    policy), relabel precision, and is_ambiguous_issue against vote disagreement."""
    from fercure import audit as core
    from fercure.export import apply_policy
    from fercure.workspace import read_metadata, read_table

    manifest = read_table(ws / "manifest.parquet")
    pred_path = ws / "runs" / run_id / "predictions.parquet"
    pred, meta = read_table(pred_path), read_metadata(pred_path)
    classes = list(meta["classes"])
    sid = truth_ws["sample_id"]
    n_clear = int(truth_ws["positive"].sum())
    disagree = (truth_ws["majority_votes"] <= 5).to_numpy()
    out: dict[str, Any] = {}
    for name, method in AUDIT_SCORES.items():
        for rule in AUDIT_THRESHOLDS:
            try:
                table, stats = core.build_audit(manifest, pred, classes, method=method, threshold_method=rule,
                                                run_meta=meta)
            except ValueError as e:  # a signal this run does not have
                out[f"{name}|{rule}"] = {"error": str(e)}
                continue
            a = aligned(table, sid)
            score = 1.0 - a["label_score"].to_numpy(dtype=np.float64)
            flagged = a["is_label_issue"].fillna(False).to_numpy(bool)
            m = detection_metrics(truth_ws, score, flagged, a["suggested_label"].to_numpy(dtype=object))
            cleaned = aligned(apply_policy(table, classes), sid)
            act = cleaned["action"].to_numpy(dtype=object)
            relab = act == "relabel"
            maj = truth_ws["majority"].to_numpy(dtype=object)
            amb = a["is_ambiguous_issue"].fillna(False).to_numpy(bool)
            m.update(threshold_used=stats["threshold_method_used"],
                     flagged_vs_clear_errors=float(flagged.sum() / max(n_clear, 1)),
                     review_share=float(np.mean(act == "review")), relabel_share=float(relab.mean()),
                     drop_share=float(np.mean(act == "drop")),
                     relabel_right=float(np.mean(cleaned["clean_label"].to_numpy(dtype=object)[relab] == maj[relab]))
                     if relab.any() else None,
                     ambiguous_share=float(amb.mean()),
                     ambiguous_precision=float(disagree[amb].mean()) if amb.any() else None,
                     ambiguous_recall=float(amb[disagree].mean()) if disagree.any() else None)
            cm = curator_metrics(truth_ws, table, stats, classes, manifest)
            m.update(within_class_auroc_macro=cm["within_class_auroc_macro"], queue_precision=cm["queue_precision"],
                     bands_rising=cm["bands"]["rising"], band_accuracy=cm["bands"]["ferplus_accuracy"])
            out[f"{name}|{rule}"] = m
    return out


def oof_probabilities(b: Bench, store: np.ndarray, rows: np.ndarray, given: np.ndarray,
                      classes: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """K-fold out-of-fold logits and probabilities with the engine's array-level fit (plain
    config). The engine's own ``folds`` option keeps only oof_p_given, and confident learning
    needs the whole distribution, so the folds are trained here."""
    import torch

    from fercure.train import ensemble as ens
    from fercure.train.device_store import upload
    from fercure.train.loop import fit, predict, resolve_device

    cfg = b.train_config()
    dev_store = upload(store, resolve_device(b.device))
    labels_full = np.zeros(store.shape[0], dtype=np.int64)
    labels_full[rows] = given
    folds = ens.stratified_folds(given, k, seed=0)
    logits = np.zeros((len(rows), len(classes)))
    for f in range(k):
        held = np.flatnonzero(folds == f)
        res = fit(dev_store, labels_full, classes, cfg, index=rows[folds != f], seed=100_000 + f,
                  reporter=b.reporter, description=f"train cleanlab fold {f + 1}/{k}")
        logits[held] = predict(res.model, dev_store, cfg, index=rows[held])["logits"]
        del res
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    return logits, probs


def downstream_fit(b: Bench, images: np.ndarray, labels: np.ndarray, keep: np.ndarray,
                   test_images: np.ndarray, classes: list[str], seed: int) -> dict[str, np.ndarray]:
    """A fresh plain model trained on images[keep] with ``labels`` (class indices); returns its
    publictest logits/probs."""
    from fercure.train.loop import fit, predict

    cfg = b.train_config()
    res = fit(images, labels, classes, cfg, index=np.flatnonzero(keep), seed=seed, reporter=b.reporter,
              description=f"train downstream seed {seed} ({int(keep.sum())} images)")
    return predict(res.model, test_images, cfg)


def main(argv: list[str] | None = None) -> int:
    command = [sys.executable, *sys.argv] if argv is None else ["bench_label_noise.main", *argv]
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(
        description="Label-noise benchmark on FER2013 + FER+ votes: fercure vs plain training dynamics "
                    "vs cleanlab on out-of-fold probabilities, plus downstream accuracy and calibration.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "benchmarks" / "fer2013-ferplus",
                    help="benchmark folder with train/ and publictest/")
    ap.add_argument("--scale", choices=sorted(SCALES), default="small",
                    help="small: stratified subset, 48 px, few epochs (2 CPU cores, ~10 min); "
                         "full: all 26,892 images, 96 px, 20 epochs (a GPU)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    ap.add_argument("--seeds", type=int, default=2, help="downstream: number of seeds to average (0..N-1)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "label_noise.json",
                    help="results JSON; this run is merged in under 'cpu' or 'cuda'")
    ap.add_argument("--workspace", type=Path, default=None,
                    help="scratch folder (workspace, exports); default a temporary folder, removed at the end")
    ap.add_argument("--steps", default=",".join(STEPS),
                    help=f"comma-separated subset of {','.join(STEPS)}")
    ap.add_argument("--backbone", default="resnet18", help="timm backbone for every model")
    ap.add_argument("--crop", choices=("auto", "align", "as-given"), default="auto",
                    help="prepare's --crop for the shared workspace (default auto, fercure's default)")
    ap.add_argument("--seed", type=int, default=0, help="seed of every detection fit (a second seed measures "
                                                        "run-to-run variation)")
    ap.add_argument("--plus", default="jigsaw", help=f"fercure_plus: comma-separated parts added to the default run "
                                                    f"({', '.join(PART_SWITCHES)})")
    ap.add_argument("--downstream-variants", default="",
                    help="comma-separated downstream retrains to run (raw, fercure, fercure_thorough, cleanlab, "
                         "oracle, or CHAIN_drop: that chain's flagged samples left out); default: raw, fercure, "
                         "cleanlab, oracle. Earlier ones not run again are carried over from --reuse-from")
    ap.add_argument("--reuse", default="", help="comma-separated chains whose finished runs are audited again "
                                                "instead of trained again (needs --reuse-from and --workspace)")
    ap.add_argument("--reuse-from", type=Path, default=None,
                    help="results JSON (or .partial.json) of an earlier run on the same --workspace")
    g = ap.add_argument_group("overrides of the --scale preset (unset: the preset; 0 for n-train/test-limit: all)")
    for name, kind, hlp in [("n_train", int, "training images (stratified subset; full: all)"),
                            ("image_size", int, "training resolution (px)"), ("epochs", int, "epochs of every fit"),
                            ("test_limit", int, "publictest images scored (stratified; full: all eligible)"),
                            ("thorough_ensemble", int, "members of fercure_thorough"),
                            ("thorough_folds", int, "folds of fercure_thorough (0 = off)"),
                            ("cleanlab_folds", int, "folds for cleanlab's out-of-fold probabilities"),
                            ("batch_size", int, "batch size of every fit"),
                            ("downstream_thorough", int, "1: also train downstream on fercure_thorough's export")]:
        g.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=hlp)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    reporter = LogReporter(t0)
    cfg = dict(SCALES[args.scale])
    for k in cfg:
        v = getattr(args, k)
        if v is not None:
            cfg[k] = v
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    bad = set(steps) - set(STEPS)
    if bad:
        ap.error(f"--steps: unknown {sorted(bad)}; choose from {','.join(STEPS)}")
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")
    data = args.data.resolve()
    if not (data / "train" / "labels.csv").exists():
        print(f"error: {data}/train/labels.csv not found; pass --data", file=sys.stderr)
        return 1

    import torch

    from fercure.train.loop import resolve_device

    device = str(resolve_device(args.device))
    if args.workspace is None:
        scratch = Path(tempfile.mkdtemp(prefix="fercure-bench-"))
        cleanup = True
    else:
        scratch = args.workspace.resolve()
        scratch.mkdir(parents=True, exist_ok=True)
        cleanup = False
    b = Bench(args, cfg, device, scratch, reporter)
    if args.reuse:
        if args.reuse_from is None or args.workspace is None:
            ap.error("--reuse needs --reuse-from and --workspace")
        import json

        earlier = json.loads(args.reuse_from.read_text())
        earlier = earlier.get(common.device_kind(device), earlier)
        b.reuse = {c.strip(): earlier[c.strip()] for c in args.reuse.split(",") if c.strip()}
        for c, v in earlier.items():  # chains measured earlier and not run again are carried over
            if (c in METHODS and c not in steps or c == "downstream") and isinstance(v, dict):
                b.results[c] = v
    try:
        payload = run(b, data, steps)
    finally:
        if cleanup:
            shutil.rmtree(scratch, ignore_errors=True)
    payload.update({
        "device_name": common.device_name(device), "date": common.today(), **common.git_commit(),
        "command": command,
        "scale": args.scale, "settings": {**cfg, "backbone": args.backbone, "seeds": args.seeds,
                                          "steps": steps, "torch": torch.__version__},
        "total_seconds": time.perf_counter() - t0, "notes": b.notes,
    })
    doc = common.merge_results(args.out, common.device_kind(device), payload)
    print_tables(doc[common.device_kind(device)])
    print(f"\nresults merged into {args.out} under {common.device_kind(device)!r} "
          f"({payload['total_seconds']:.0f}s in all)")
    return 0


def original_workspace(b: Bench, ws: Path, input_root: Path) -> Path:
    """A copy of the prepared workspace whose crop store holds the ORIGINAL images instead of
    prepare's crops: each row's file, centre-squared and resized to the run's image size (a FER
    crop is its own 48×48 file). Same manifest, so the same rows train and are scored."""
    from PIL import Image

    from fercure.faces.align import resize_whole
    from fercure.store import write_store
    from fercure.workspace import Workspace, read_table

    src, dst = Workspace(ws), Workspace(b.scratch / "ws_original")
    if dst.store.exists() and dst.manifest.exists() and dst.manifest.read_bytes() == src.manifest.read_bytes():
        return dst.root   # built from this very manifest by an earlier run (its runs/ serve --reuse)
    shutil.rmtree(dst.root, ignore_errors=True)
    dst.faces_dir.mkdir(parents=True)
    for f in (src.manifest, src.rejects):
        shutil.copyfile(f, dst.root / f.name)
    manifest = read_table(src.manifest)
    rows = manifest[manifest["store_index"] >= 0].sort_values("store_index")
    assert (rows["store_index"].to_numpy() == np.arange(len(rows))).all()
    size = b.cfg["image_size"]

    def original(path: Path) -> np.ndarray:
        with Image.open(path) as im:
            return resize_whole(np.asarray(im.convert("RGB"), dtype=np.uint8), size)

    def chunks():
        for lo in range(0, len(rows), 1024):
            yield np.stack([original(input_root / p) for p in rows["source_path"].iloc[lo : lo + 1024]])

    write_store(dst.store, chunks(), len(rows), size)
    b.reporter.log(f"plain_original: {len(rows)} original images as the crop store of {dst.root}")
    return dst.root


def run(b: Bench, data: Path, steps: list[str]) -> dict[str, Any]:
    from fercure.stages.prepare import run_prepare
    from fercure.workspace import read_table

    cfg, rep = b.cfg, b.reporter
    train = load_split(data, "train")
    test = load_split(data, "publictest")
    pos = stratified_subset(train["label"].to_numpy(), cfg["n_train"], seed=0)
    sub = train.iloc[pos].reset_index(drop=True)
    rep.log(f"train subset: {len(sub)} of {len(train)} images; positives {int(sub.positive.sum())}, "
            f"negatives {int(sub.negative.sum())}")
    out: dict[str, Any] = {"n_train": len(sub), "n_train_available": len(train)}

    # ---- prepare (shared by every fercure chain) ------------------------------------------
    ws = b.scratch / "ws"
    labels_file = b.scratch / "labels_subset.csv"
    sub[["path", "label"]].to_csv(labels_file, index=False)  # only path,label: votes never reach fercure
    t = Timer()
    with t:
        ps = run_prepare(data / "train", ws, labels_file=labels_file, device=b.device,
                         image_size=cfg["image_size"], crop=b.args.crop, reporter=rep)
    out["prepare"] = {"seconds": t.seconds, "status_counts": ps.status_counts, "n_with_crop": ps.n_with_crop,
                      "crop": b.args.crop}
    rep.log(f"prepare: {ps.status_counts} in {t.seconds:.0f}s")
    manifest = read_table(ws / "manifest.parquet")
    # truth aligned with the workspace's sample ids (source_path = labels.csv path)
    truth_ws = sub.merge(manifest[["sample_id", "source_path", "store_index", "face_status"]],
                         left_on="path", right_on="source_path", how="left", validate="one_to_one")
    if truth_ws["sample_id"].isna().any():
        b.note(f"{int(truth_ws.sample_id.isna().sum())} subset images have no manifest row (rejected by prepare)")

    chains: dict[str, dict[str, Any]] = {}
    if "fercure" in steps:
        chains["fercure"] = run_chain(b, ws, "fercure", b.default_config(), truth_ws)
    if "fercure_thorough" in steps:
        config = b.default_config(ensemble=cfg["thorough_ensemble"], folds=cfg["thorough_folds"])
        chains["fercure_thorough"] = run_chain(b, ws, "fercure_thorough", config, truth_ws)
        if not cfg["thorough_folds"]:
            b.note("fercure_thorough: folds=0 at this scale (each fold is one more fit); "
                   "ensemble only, so no oof_p_given signal")
    if "seeds" in steps:
        chains["seeds"] = run_chain(b, ws, "seeds", b.train_config(
            selfcure=True, reliability=True, erase_p=0.5, label_smoothing=0.0, holdout=0.0, plant_rate=0.0,
            retrain=False, knn=0), truth_ws)
    if "elr" in steps:
        chains["elr"] = run_chain(b, ws, "elr", b.train_config(elr=True, epoch_eval=True, retrain=False),
                                  truth_ws)
    single = {"plain_dynamics": {}, **PART_SWITCHES, "vit": VIT, "vit_atp": dict(VIT, pool="atp")}
    if "plain_original" in steps:
        single["plain_original"] = {}
    for name, switch in single.items():
        if name not in steps:
            continue
        run_ws = original_workspace(b, ws, data / "train") if name == "plain_original" else ws
        chains[name] = run_chain(b, run_ws, name, b.train_config(**PLAIN, **switch), truth_ws)
        # The protocol's score is mean p(given) itself (also the audit's default label_score).
        pm = chains[name]
        score = 1.0 - pm["pred"]["mean_p_given"].to_numpy(dtype=np.float64)
        m = detection_metrics(truth_ws, score, None, None)
        pm["metrics"].update(auroc=m["auroc"], ap=m["ap"], headline_score="mean_p_given")
    if "fercure_plus" in steps:
        plus = {k: v for part in b.args.plus.split(",") if part.strip() for k, v in PART_SWITCHES[part.strip()].items()}
        chains["fercure_plus"] = run_chain(b, ws, "fercure_plus", b.default_config(**plus), truth_ws)
        chains["fercure_plus"]["metrics"]["plus"] = b.args.plus
    for name, ch in chains.items():
        out[name] = ch["metrics"]
    for name, m in list(b.results.items()):  # chains carried over from --reuse-from, not run again
        if name in METHODS and name not in out:
            out[name] = {**m, "carried_over": True}
            b.note(f"{name}: figures carried over from {b.args.reuse_from} (same workspace, fits and settings)")
    out["signals"] = {name: signal_metrics(truth_ws, ch["pred"], ch["classes"]) for name, ch in chains.items()}
    for name in METHODS:
        if out.get(name, {}).get("carried_over") and "signals" in out[name]:
            out["signals"][name] = out[name].pop("signals")

    # ---- cleanlab on out-of-fold probabilities ----------------------------------------------
    classes = sorted(CLASS_TO_FERPLUS)  # the workspace's order too: sorted labels of the manifest
    for name, ch in chains.items():
        if list(ch["classes"]) != classes:
            raise SystemExit(f"{name} trained on classes {ch['classes']}, expected {classes}")
    cl_flag_ids: set[str] = set()
    oof_logits = oof_given = None
    if "cleanlab_oof" in steps or "calibration" in steps:
        from cleanlab.filter import find_label_issues

        # Same samples and crops as the fercure runs: trained rows = a crop and not a duplicate.
        from fercure.stages.train import EXCLUDED_STATUSES

        use = (truth_ws["store_index"].fillna(-1).astype(int) >= 0) & ~truth_ws["face_status"].isin(EXCLUDED_STATUSES)
        idx = np.flatnonzero(use.to_numpy())
        store = np.load(ws / "faces" / "crops.npy", mmap_mode="r")
        given = truth_ws["label"].iloc[idx].map({c: i for i, c in enumerate(classes)}).to_numpy(
            dtype=np.int64, copy=True)  # writable: torch wraps it
        t_fit, t_cl = Timer(), Timer()
        with t_fit:
            oof_logits, probs = oof_probabilities(b, store, truth_ws["store_index"].to_numpy()[idx].astype(np.int64),
                                                  given, classes, cfg["cleanlab_folds"])
        with t_cl:
            issues = find_label_issues(labels=given, pred_probs=probs, n_jobs=1)
        oof_given = given
        score = np.full(len(truth_ws), np.nan)
        flagged = np.zeros(len(truth_ws), dtype=bool)
        sugg = np.full(len(truth_ws), None, dtype=object)
        score[idx] = 1.0 - probs[np.arange(len(idx)), given]  # cleanlab's self_confidence
        flagged[idx] = issues
        sugg[idx] = np.array(classes, dtype=object)[probs.argmax(axis=1)]
        m = detection_metrics(truth_ws, score, flagged, sugg)
        m["suggestion_accuracy_by_source"] = {"oof_p": suggestion_accuracy(truth_ws, sugg)}
        m.update(seconds=t_fit.seconds + t_cl.seconds, fit_seconds=t_fit.seconds,
                 find_label_issues_seconds=t_cl.seconds,
                 folds=cfg["cleanlab_folds"], filter_by="prune_by_noise_rate (cleanlab default)")
        out["cleanlab_oof"] = m
        b.save_partial("cleanlab_oof", m)
        margin = probs[np.arange(len(idx)), given] - np.where(
            np.eye(len(classes), dtype=bool)[given], -1.0, probs).max(axis=1)
        for nm, x in (("oof_self_confidence", probs[np.arange(len(idx)), given]), ("oof_margin", margin)):
            full = np.full(len(truth_ws), np.nan)
            full[idx] = -x
            mm = detection_metrics(truth_ws, full, None, None)
            out["signals"].setdefault("cleanlab_oof", {})[nm] = {"auroc": mm["auroc"], "ap": mm["ap"],
                                                                  "direction": "low = likely wrong"}
        cl_flag_ids = set(truth_ws["sample_id"].to_numpy()[flagged])
        rep.log(f"cleanlab_oof: AUROC {m['auroc']:.3f} AP {m['ap']:.3f} flagged {m['flagged']} "
                f"P {m['precision']:.3f} R {m['recall']:.3f} ({m['seconds']:.0f}s)")

    # ---- downstream -------------------------------------------------------------------------
    if "downstream" in steps or "calibration" in steps:
        out.update(downstream(b, data, truth_ws, test, classes, chains, cl_flag_ids, oof_logits, oof_given,
                              steps))
    return out


def downstream(b: Bench, data: Path, truth_ws: pd.DataFrame, test: pd.DataFrame, classes: list[str],
               chains: dict[str, Any], cl_flag_ids: set[str], oof_logits: np.ndarray | None,
               oof_given: np.ndarray | None, steps: list[str]) -> dict[str, Any]:
    """Fresh plain models on raw / fercure / cleanlab / oracle labels (same images: the raw
    48×48 files, resized on the device), scored on publictest against the FER+ majority."""
    from fercure.train.ensemble import fit_temperature

    rep, cfg = b.reporter, b.cfg
    index = {c: i for i, c in enumerate(classes)}
    eligible = test[test["majority"].notna() & (test["majority_votes"] >= 5)].reset_index(drop=True)
    tpos = stratified_subset(eligible["majority"].to_numpy(), cfg["test_limit"], seed=0)
    ev = eligible.iloc[tpos].reset_index(drop=True)
    y_test = ev["majority"].map(index).to_numpy()
    rep.log(f"downstream: {len(ev)} publictest images (of {len(eligible)} eligible, {len(test)} in all)")
    train_images = common.load_images([data / "train" / p for p in truth_ws["path"]])
    test_images = common.load_images([data / "publictest" / p for p in ev["path"]])

    raw = truth_ws["label"].map(index).to_numpy(dtype=np.int64, copy=True)  # writable: fit wraps it
    variants: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}
    if "downstream" in steps:
        variants["raw"] = (raw, np.ones(len(truth_ws), bool), "given FER2013 labels")
        for name in ("fercure", "fercure_thorough"):
            if name in chains and (name == "fercure" or cfg["downstream_thorough"]):
                cl = chains[name]["cleaned"].set_index("source_path").reindex(truth_ws["path"].to_numpy())
                clean = cl["clean_label"]
                keep = clean.notna().to_numpy() & clean.isin(classes).to_numpy()
                lab = np.where(keep, clean.map(index).fillna(-1).to_numpy(), 0).astype(np.int64)
                variants[name] = (lab, keep, "export default policy: relabel→clean_label, drop left out, "
                                             "review kept with the original label")
        if cl_flag_ids:
            keep = ~truth_ws["sample_id"].isin(cl_flag_ids).to_numpy()
            variants["cleanlab"] = (raw, keep, "cleanlab-flagged samples dropped")
        maj = truth_ws["majority"]
        keep = maj.notna().to_numpy()
        variants["oracle"] = (np.where(keep, maj.map(index).fillna(-1).to_numpy(), 0).astype(np.int64), keep,
                              "FER+ majority labels of train (images without a class majority left out)")
        for name, ch in chains.items():
            flagged = ch["audit"]["is_label_issue"].fillna(False).to_numpy(bool)
            variants[f"{name}_drop"] = (raw, ~flagged, f"{name}'s flagged samples left out (given labels otherwise)")
        wanted = [v.strip() for v in b.args.downstream_variants.split(",") if v.strip()] or \
            ["raw", "fercure", "fercure_thorough", "cleanlab", "oracle"]
        unknown = set(wanted) - set(variants)
        if unknown:
            b.note(f"downstream: {sorted(unknown)} not available in this run (their chain did not run)")
        variants = {k: v for k, v in variants.items() if k in wanted}
    elif "calibration" in steps:
        variants["raw"] = (raw, np.ones(len(truth_ws), bool), "given FER2013 labels")

    res: dict[str, Any] = {}
    raw_logits: list[np.ndarray] = []
    for name, (lab, keep, desc) in variants.items():
        accs, t = [], Timer()
        with t:
            for seed in range(b.args.seeds):
                pr = downstream_fit(b, train_images, lab, keep, test_images, classes, seed)
                accs.append(float((pr["probs"].argmax(1) == y_test).mean()))
                if name == "raw":
                    raw_logits.append(pr["logits"])
        changed = int(((lab != raw) & keep).sum())
        res[name] = {"accuracy": float(np.mean(accs)), "per_seed": accs, "n_train": int(keep.sum()),
                     "n_relabelled": changed, "n_dropped": int((~keep).sum()), "what": desc, "seconds": t.seconds}
        rep.log(f"downstream {name}: accuracy {np.mean(accs):.3f} {accs} on {int(keep.sum())} images")
        b.save_partial("downstream_" + name, res[name])
    earlier = {k: {**v, "carried_over": True} for k, v in b.results.get("downstream", {}).items()
               if isinstance(v, dict) and k not in res}
    if earlier:
        b.note(f"downstream {sorted(earlier)}: carried over from {b.args.reuse_from} (same images, seeds and recipe)")
    out: dict[str, Any] = {"downstream": {**earlier, **res, "n_test": len(ev), "n_test_eligible": len(eligible)}}

    if "calibration" in steps:
        if oof_logits is None or not raw_logits:
            b.note("calibration: needs the cleanlab_oof step (its out-of-fold logits fit the temperature)")
        else:
            # T from the K-fold out-of-fold logits of the same recipe against the GIVEN labels (what a
            # user without FER+ can do), applied to the raw-label model; ECE against the FER+ majority.
            temp = fit_temperature(oof_logits, oof_given)
            import torch

            before, after = [], []
            for lg in raw_logits:
                lt = torch.from_numpy(lg).double()
                before.append(common.expected_calibration_error(torch.softmax(lt, 1).numpy(), y_test))
                after.append(common.expected_calibration_error(torch.softmax(lt / temp, 1).numpy(), y_test))
            out["calibration"] = {"model": "downstream raw", "temperature": temp,
                                  "temperature_fitted_on": f"{cfg['cleanlab_folds']}-fold out-of-fold logits, given labels",
                                  "ece_before": float(np.mean(before)), "ece_after": float(np.mean(after)),
                                  "per_seed_before": before, "per_seed_after": after, "n_bins": 15}
            rep.log(f"calibration: T={temp:.3f} ECE {np.mean(before):.4f} → {np.mean(after):.4f}")
    return out


# ---------------------------------------------------------------------------------------------
# Output


def _f(x: Any, nd: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return "nan" if not np.isfinite(x) else f"{x:.{nd}f}"
    return str(x)


def print_tables(r: dict[str, Any]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain fallback
        Console = Table = None  # type: ignore[assignment]

    def emit(title: str, header: list[str], rows: list[list[str]]) -> None:
        if Table is not None:
            tb = Table(title=title)
            for h in header:
                tb.add_column(h, justify="left" if h == header[0] else "right")
            for row in rows:
                tb.add_row(*row)
            Console(width=160).print(tb)
        else:
            print(f"\n{title}\n" + "\t".join(header))
            for row in rows:
                print("\t".join(row))

    cols = ["auroc", "ap", "flagged", "precision", "recall", "f1", "suggested_label_accuracy", "seconds"]
    rows = [[m] + [_f(r[m].get(c), 1 if c == "seconds" else 3) for c in cols] for m in METHODS if m in r]
    emit(f"Label-error detection ({r.get('scale')}, n_train={r.get('n_train')}, {r.get('device_name')})",
         ["method", "AUROC", "AP", "flagged", "precision", "recall", "F1", "sugg. acc", "s"], rows)
    cur = [[m, _f(r[m].get("within_class_auroc_macro"))] + [_f((r[m].get("queue_precision") or {}).get(k))
                                                            for k in ("50", "100", "200")]
           + [", ".join(_f(x) for x in (r[m].get("bands") or {}).get("ferplus_accuracy") or []),
              str((r[m].get("bands") or {}).get("rising"))]
           for m in METHODS if m in r and "within_class_auroc_macro" in r[m]]
    if cur:
        emit("What a curator sees: within-class AUROC (macro), review-queue precision, suggestion accuracy "
             "per band (guess, lead, likely)", ["method", "within AUROC", "P@50", "P@100", "P@200",
                                                "band acc.", "rising"], cur)
    sig_rows = []
    for run_name, sig in r.get("signals", {}).items():
        for s, v in sig.items():
            sig_rows.append([run_name, s, _f(v.get("auroc")), _f(v.get("ap"))])
    emit("Individual signals", ["run", "signal", "AUROC", "AP"], sig_rows)
    src_rows = [[m, src, _f(v)] for m in METHODS if m in r
                for src, v in r[m].get("suggestion_accuracy_by_source", {}).items()]
    if src_rows:
        emit("Suggested label = FER+ majority, over all clear errors, by source",
             ["run", "argmax of", "accuracy"], src_rows)
    ds = r.get("downstream", {})
    ds_rows = [[k, _f(v["accuracy"]), ", ".join(_f(a) for a in v["per_seed"]), str(v["n_train"]),
                str(v["n_relabelled"]), str(v["n_dropped"])] for k, v in ds.items() if isinstance(v, dict)]
    if ds_rows:
        emit(f"Downstream accuracy on publictest vs FER+ majority (n={ds.get('n_test')})",
             ["labels", "accuracy", "per seed", "n train", "relabelled", "dropped"], ds_rows)
    cal = r.get("calibration")
    if cal:
        emit("Calibration (downstream raw model, publictest)", ["T", "ECE before", "ECE after"],
             [[_f(cal["temperature"]), _f(cal["ece_before"], 4), _f(cal["ece_after"], 4)]])


if __name__ == "__main__":
    sys.exit(main())

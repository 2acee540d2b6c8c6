"""What the review page shows, as plain data: the rows to review, their flags, bands and
thumbnails, duplicate groups, calibration bins (pure functions; the page renders the result)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from fercure import review_calibration as rc
from fercure import strength as st
from fercure.audit.issues import ISSUES, IssueInputs
from fercure.health import IMBALANCE_RATIO
from fercure.rerank import unflagged_first_cards
from fercure.faces import quality
from fercure.report import columns as C
from fercure.report import embedding as E
from fercure.report.thumbs import THUMB_BUDGET, THUMB_SIZE, thumbnails

# Flags of a listed row, one bit each (the page filters on them).
# The image-quality flags are the audit's registered issues that say so (``RowIssue.quality``).
QUALITY_FLAGS = tuple(i.name for i in ISSUES.values() if i.quality)
FLAGS = ("label_issue", "ambiguous", "duplicate", "face", *QUALITY_FLAGS, "reviewed", "spot_check", "queue")
BIT = {f: 1 << i for i, f in enumerate(FLAGS)}
# What a card's chip says of each flag (the page's JavaScript reads it from the payload).
FLAG_TEXT = {"label_issue": "label issue", "ambiguous": "ambiguous", "duplicate": "duplicate", "face": "face problem",
             **{f: ISSUES[f].title for f in QUALITY_FLAGS},
             "reviewed": "reviewed", "spot_check": "spot check", "queue": "next in the re-ranked queue"}

BANDS = ("guess", "lead", "likely")


def confidence_band(confidence: float | None, n_classes: int, verdict: str | None = None,
                    bands: dict | None = None) -> str:
    """A suggestion's confidence in words: ``guess``, ``lead`` or ``likely``.

    With ``bands`` (the audit's ``stats["confidence_bands"]``, calibrated on the probe) the band is
    the one whose measured accuracy the confidence reaches: ``likely`` where held-out predictions
    that sure matched their label at least half the time, ``lead`` from one in three
    (``fercure.audit.BAND_ACCURACY``). Without a calibration (an old audit, a probe too small),
    the lift over chance (1/K) decides: ``guess`` under a quarter of the way from chance to
    certainty, ``likely`` a majority and at least 40% of the way, ``lead`` between. A weak
    model's suggestions are at most leads, a too-weak model's guesses.
    """
    if confidence is None or not math.isfinite(confidence) or n_classes < 2:
        return "guess"
    if bands and bands.get("calibrated") and bands.get("cuts"):
        cuts = [math.inf if c is None else c for c in bands["cuts"]]
        band = BANDS[max(i for i, c in enumerate(cuts) if confidence >= c or i == 0)]
    else:
        chance = 1.0 / n_classes
        lift = (confidence - chance) / (1.0 - chance)
        band = "guess" if lift < 0.25 else "likely" if confidence >= 0.5 and lift >= 0.4 else "lead"
    if verdict == "too_weak":
        return "guess"
    if verdict == "weak" and band == "likely":
        return "lead"
    return band


# A suggestion is offered ("accept → class") only this far from chance (1/K) toward certainty: 0.19
# with seven classes (chance 0.14) is a coin the model barely tilted, not a suggestion.
MIN_SUGGESTION_LIFT = 0.1


def suggestion_clear(confidence: float | None, n_classes: int) -> bool:
    """Whether a suggestion's confidence is clearly above chance (``MIN_SUGGESTION_LIFT`` of the way
    from 1/K to 1): below it the card offers no suggestion and says why."""
    if confidence is None or not math.isfinite(confidence) or n_classes < 2:
        return False
    chance = 1.0 / n_classes
    return (confidence - chance) / (1.0 - chance) >= MIN_SUGGESTION_LIFT


def reliability_bins(probs: np.ndarray, given: np.ndarray, n_bins: int = 10) -> tuple[list[dict], float | None]:
    """Calibration against the given labels: per bin of top-class probability, the mean
    probability and the share of samples whose top class is the given label; and the expected
    calibration error (bin-size weighted mean gap). Rows with NaN probabilities are left out."""
    p = np.asarray(probs, dtype=float)
    g = np.asarray(given, dtype=int)
    ok = np.isfinite(p).all(axis=1) & (g >= 0) if p.size else np.zeros(len(g), bool)
    p, g = p[ok], g[ok]
    conf = p.max(axis=1) if len(p) else np.zeros(0)
    hit = (p.argmax(axis=1) == g) if len(p) else np.zeros(0, bool)
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, n_bins - 1)
    bins, gap = [], 0.0
    for b in range(n_bins):
        m = which == b
        n = int(m.sum())
        acc = float(hit[m].mean()) if n else None
        mc = float(conf[m].mean()) if n else None
        if n:
            gap += n * abs(acc - mc)
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": n, "accuracy": acc, "confidence": mc})
    return bins, (gap / len(conf) if len(conf) else None)


def duplicate_groups(ids: Sequence[str], duplicate_of: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    """Row positions of each near-duplicate group whose members carry more than one label
    (the original first, then its copies in table order)."""
    pos = {str(s): i for i, s in enumerate(ids)}
    groups: dict[int, list[int]] = {}
    for i, orig in enumerate(duplicate_of):
        if isinstance(orig, str) and orig and orig in pos:
            groups.setdefault(pos[orig], [pos[orig]]).append(i)
    return [g for g in groups.values() if len({str(labels[i]) for i in g}) > 1]


def balance_note(counts: dict[str, int]) -> str | None:
    """A warning for classes without samples or far smaller than the largest (None when balanced)."""
    if not counts:
        return None
    empty = [c for c, n in counts.items() if n == 0]
    nonzero = {c: n for c, n in counts.items() if n > 0}
    parts = []
    if empty:
        parts.append(f"no samples in {', '.join(empty)}")
    if nonzero:
        big = max(nonzero, key=nonzero.get)
        small = [c for c, n in nonzero.items() if nonzero[big] / n >= IMBALANCE_RATIO]
        if small:
            parts.append(", ".join(f"{c} has {nonzero[c]}" for c in small)
                         + f" against {nonzero[big]} in {big} (at least {IMBALANCE_RATIO:g}× fewer): the model "
                           "sees little of it, and its flags and suggestions rest on few samples")
    return "; ".join(parts) + "." if parts else None


def _num(series: pd.Series) -> np.ndarray:
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)


def _round(x: float, digits: int) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def review_rows(audit: pd.DataFrame, manifest: pd.DataFrame | None = None, *,
                list_missed_faces: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(flags per audit row as FLAGS bits, positions of the rows the page lists): every label issue,
    ambiguous sample, duplicate or conflicting-duplicate original, face-stage problem and image
    quality issue. A pre-cropped face the detector missed (``quality.missed_on_crop``) is no face
    problem (its crop is the face as given) unless ``list_missed_faces``."""
    n = len(audit)
    bits = np.zeros(n, np.int64)
    status = C.column(audit, "face_status", "ok").astype(str).to_numpy()
    for key, flag_name in (("is_issue", "label_issue"), ("is_ambiguous", "ambiguous"), ("is_duplicate", "duplicate")):
        bits |= np.where(C.flag(audit, key).to_numpy(), BIT[flag_name], 0)
    face = (status != "ok") & (status != "duplicate")
    if not list_missed_faces:
        face &= ~missed_faces(audit, manifest)
    bits |= np.where(face, BIT["face"], 0)
    for name, hit in quality_issues(audit, manifest).items():
        bits |= np.where(hit, BIT[name], 0)
    groups = duplicate_groups(C.column(audit, "id").astype(str).tolist(),
                              C.column(audit, "duplicate_of", "").fillna("").astype(str).tolist(),
                              C.column(audit, "given", "").astype(str).tolist())
    for g in groups:  # the original of a conflicting group is listed beside its copies
        bits[g[0]] |= BIT["duplicate"]
    # reviewed rows are listed (the page hides them by default), never as issues
    bits |= np.where(C.flag(audit, "is_reviewed").to_numpy(), BIT["reviewed"], 0)
    bits[spot_checks(audit, bits)] |= BIT["spot_check"]  # after the reviewed bit: never a reviewed row
    bits[queue_rows(audit, bits)] |= BIT["queue"]
    return bits, np.flatnonzero(bits)


def quality_issues(audit: pd.DataFrame, manifest: pd.DataFrame | None) -> dict[str, np.ndarray]:
    """Each image-quality issue's flags per audit row: the audit's own column; for an audit written
    before the issue had one, the issue measured on the manifest (none without it)."""
    out = {}
    ids = C.column(audit, "id").astype(str)
    for name in QUALITY_FLAGS:
        issue = ISSUES[name]
        if issue.flag_column in audit.columns:
            out[name] = audit[issue.flag_column].fillna(False).to_numpy(dtype=bool)
        elif manifest is not None and "sample_id" in manifest.columns:
            m = manifest.set_index(manifest["sample_id"].astype(str)).reindex(ids).reset_index(drop=True)
            out[name] = np.asarray(issue.columns(IssueInputs(m)).columns[issue.flag_column], bool)
    return out


def missed_faces(audit: pd.DataFrame, manifest: pd.DataFrame | None) -> np.ndarray:
    """Audit rows that are a pre-cropped dataset's face crop the detector missed
    (``quality.missed_on_crop`` over the whole manifest; none without its image sizes)."""
    if manifest is None or not all(C.name(manifest, k, C.MANIFEST_COLUMNS) for k in ("width", "height")) \
            or "face_status" not in manifest:
        return np.zeros(len(audit), bool)
    ids = C.column(manifest, "id", table=C.MANIFEST_COLUMNS).astype(str).to_numpy()
    hit = quality.missed_on_crop(manifest["face_status"].astype(str).to_numpy(),
                                 _num(manifest[C.name(manifest, "width", C.MANIFEST_COLUMNS)]),
                                 _num(manifest[C.name(manifest, "height", C.MANIFEST_COLUMNS)]))
    missed = set(ids[hit])
    return C.column(audit, "id").astype(str).isin(missed).to_numpy()


def queue_rows(audit: pd.DataFrame, bits: np.ndarray) -> np.ndarray:
    """Rows the queue (``review_rank``) puts among its first cards without a flag
    (``fercure.rerank.unflagged_first_cards``); none for an audit written before that column."""
    if not C.name(audit, "review_rank"):
        return np.zeros(0, np.int64)
    return unflagged_first_cards(_num(C.column(audit, "review_rank")), (bits & BIT["label_issue"]) > 0,
                                 (bits & BIT["reviewed"]) > 0)


def spot_checks(audit: pd.DataFrame, bits: np.ndarray) -> np.ndarray:
    """Positions of the spot checks (``review_calibration.spot_checks``): random scored rows no reviewer
    decided yet, flagged or not, so that the decisions speak for every row, not only the queue's."""
    return rc.spot_checks(C.column(audit, "id").astype(str).to_numpy(), _num(C.column(audit, "score", np.nan)),
                          (bits & BIT["reviewed"]) > 0)


def queue_key(audit: pd.DataFrame, flagged: np.ndarray) -> np.ndarray:
    """The audit's ``review_rank`` (its queue, hand-made or re-ranked: ``fercure.rerank``); for an audit
    written before that column, ``review_calibration.queue_key`` (``flagged``: positions of the label issues)."""
    if C.name(audit, "review_rank"):
        return _num(C.column(audit, "review_rank"))
    mask = np.zeros(len(audit), bool)
    mask[flagged] = True
    return rc.queue_key(_num(C.column(audit, "score", np.nan)), _num(C.column(audit, "held_out_p", np.nan)), mask)


def review_order(audit: pd.DataFrame, listed: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Listed rows in the order a person should see them (and thumbnails are spent): label issues
    by ``queue_key`` (most likely wrong first), then ambiguous by top-2 margin, then spot checks,
    duplicates, face and quality; reviewed rows last."""
    b = bits[listed]
    key = queue_key(audit, listed[(b & BIT["label_issue"]) > 0])[listed]  # the queue rows have a review_rank
    margin = _num(C.column(audit, "margin", np.nan))[listed]
    tier = np.select([b & BIT["reviewed"] > 0, b & (BIT["label_issue"] | BIT["queue"]) > 0, b & BIT["ambiguous"] > 0,
                      b & BIT["spot_check"] > 0, b & BIT["duplicate"] > 0, b & BIT["face"] > 0],
                     [6, 0, 1, 2, 3, 4], default=5)
    key2 = np.where(tier == 0, key, np.where(tier == 1, margin, 0.0))
    return listed[np.lexsort((listed, np.nan_to_num(key2, nan=2.0), tier))]


def build_payload(
    audit: pd.DataFrame,
    stats: dict,
    classes: Sequence[str],
    *,
    crops: np.ndarray | None = None,
    manifest: pd.DataFrame | None = None,
    actions: Sequence[str] | None = None,
    thumb_budget: int = THUMB_BUDGET,
    thumb_size: int = THUMB_SIZE,
    neighbours=None,
    list_missed_faces: bool = False,
) -> dict:
    """The page's JSON blob: the listed rows (columnar), thumbnails, duplicate groups, counts, the
    embedding map's points, group cards and similar faces.

    ``actions``: what fercure's default export would do with each audit row (shown on the cards).
    ``neighbours``: the run's nearest neighbours (``fercure.groups.Neighbours``, aligned with the audit).
    """
    classes = [str(c) for c in classes]
    verdict = str((stats.get("model_strength") or {}).get("verdict", "unknown"))
    bands = stats.get("confidence_bands") or {}
    bits, listed = review_rows(audit, manifest, list_missed_faces=list_missed_faces)
    order = review_order(audit, listed, bits)
    store = np.nan_to_num(_num(C.column(audit, "store_index", -1)), nan=-1).astype(np.int64)
    thumbs = thumbnails(crops, store, order, budget=thumb_budget, size=thumb_size)

    given = C.column(audit, "given", "").astype(str).to_numpy()
    labels = classes + sorted(set(given[order]) - set(classes))  # labels outside the run's classes last
    lidx = {c: i for i, c in enumerate(labels)}
    sugg = C.column(audit, "suggested", None).to_numpy(dtype=object)
    conf = _num(C.column(audit, "confidence", np.nan))
    score = _num(C.column(audit, "score", np.nan))
    status = C.column(audit, "face_status", "ok").astype(str).to_numpy()
    statuses = sorted(set(status[order]))
    sidx = {s: i for i, s in enumerate(statuses)}
    reason = C.column(audit, "reason", "").fillna("").astype(str).to_numpy()
    votes = C.column(audit, "votes", "").fillna("").astype(str).to_numpy()
    ids = C.column(audit, "id").astype(str).to_numpy()
    paths = C.column(audit, "path", "").astype(str).to_numpy()
    # the image a decision is about: 12 hex digits of its content hash, saved with the decision
    hashes = audit["content_hash"].fillna("").astype(str).str[:12].to_numpy() if "content_hash" in audit.columns \
        else np.full(len(audit), "", dtype=object)

    rows: dict[str, list] = {k: [] for k in ("id", "path", "given", "sugg", "offer", "conf", "band", "score",
                                             "flags", "status", "reason", "action", "thumb", "votes", "hash")}
    for r in order:
        s = sugg[r]
        s_i = lidx.get(str(s), -1) if s is not None and not (isinstance(s, float) and math.isnan(s)) else -1
        rows["id"].append(ids[r])
        rows["path"].append(paths[r])
        rows["given"].append(lidx[given[r]])
        rows["sugg"].append(s_i)
        rows["offer"].append(int(s_i >= 0 and s_i != lidx[given[r]] and suggestion_clear(conf[r], len(classes))))
        rows["conf"].append(_round(conf[r], 3))
        rows["band"].append(BANDS.index(confidence_band(conf[r], len(classes), verdict, bands)))
        rows["score"].append(_round(score[r], 4))
        rows["flags"].append(int(bits[r]))
        rows["status"].append(sidx[status[r]])
        rows["reason"].append(reason[r])
        rows["action"].append(str(actions[r]) if actions is not None else "")
        rows["thumb"].append(thumbs.get(int(r), ""))
        rows["votes"].append(votes[r])
        rows["hash"].append(str(hashes[r]))

    grp = E.group_leaders(audit, order)
    if any(g >= 0 for g in grp):  # absent keys cost nothing on a page without groups or neighbours
        rows["grp"] = grp
    if neighbours is not None:
        rows["nn"] = E.similar_faces(neighbours, order, given, lidx)
    emap = E.map_payload(audit, order, C.flag(audit, "is_issue").to_numpy(), lidx)
    if emap is not None:
        emap["note"] = E.map_note(emap)
    pos = {int(r): i for i, r in enumerate(order)}
    groups = duplicate_groups(ids.tolist(), C.column(audit, "duplicate_of", "").fillna("").astype(str).tolist(),
                              given.tolist())
    with_thumb = sum(1 for t in rows["thumb"] if t)
    with_crop = int(sum(1 for r in order if store[r] >= 0 and (crops is None or store[r] < len(crops))))
    return {
        "classes": classes,
        "labels": labels,
        "statuses": statuses,
        "flags": list(FLAGS),
        "flag_text": FLAG_TEXT,
        "quality_flags": list(QUALITY_FLAGS),
        "bands": list(BANDS),
        "verdict": verdict,
        "chance": 1.0 / len(classes) if classes else None,
        "min_suggestion_lift": MIN_SUGGESTION_LIFT,
        # per band, the share of the probe's held-out predictions in it that matched their label
        "band_accuracy": list(bands.get("accuracy") or []) if bands.get("calibrated") else [],
        "rows": rows,
        "dup_groups": [[pos[i] for i in g if i in pos] for g in groups],
        "map": emap,
        "counts": flag_counts(bits),
        "progress": review_progress(audit, classes, order, bits, stats.get("calibration")),
        "thumbs": {"n": with_thumb, "n_with_crop": with_crop if crops is not None else 0, "size": thumb_size,
                   "budget_bytes": thumb_budget},
    }


def flag_counts(bits: np.ndarray) -> dict[str, int]:
    """Rows with each flag, and (``quality``) with any image-quality flag."""
    bits = np.asarray(bits)
    counts = {f: int((bits & BIT[f] > 0).sum()) for f in FLAGS}
    counts["quality"] = int((bits & sum(BIT[f] for f in QUALITY_FLAGS) > 0).sum())
    return counts


NEXT_CARDS = 100


def expected_errors_next(n_cards: int, calibration: dict | None) -> dict:
    """The wrong labels the next ``n_cards`` flagged cards are expected to hold, with a 95 % interval,
    from a measured rate only: the latest reviewed queue cards' error rate once the run has
    ``MIN_RECENT_CARDS`` of them (``source`` "reviewed"), else the planted flips' recovery rate
    ("planted": the share of the flips the score put among its lowest-scored rows at the estimated
    share of wrong labels; flagging as many rows as are wrong, precision equals that recall), else
    nothing (``source`` None). The model's own sum of 1 − p(given) is no estimate: on FER2013 it said
    92 of 100 where about 40 were wrong."""
    cal = calibration or {}
    recent = (cal.get("reviewed") or {}).get("recent_queue") or {}
    planted = cal.get("planted") or {}
    if recent.get("rate") is not None and recent.get("n"):
        rate, k, n, source = recent["rate"], round(recent["rate"] * recent["n"]), int(recent["n"]), "reviewed"
    elif planted.get("recall") is not None and planted.get("n_planted"):
        n = int(planted["n_planted"])
        rate, k, source = float(planted["recall"]), round(float(planted["recall"]) * n), "planted"
    else:
        return {"expected": None, "lo": None, "hi": None, "source": None, "n": 0}
    lo, hi = st.wilson(int(k), n)
    return {"expected": _round(rate * n_cards, 1), "lo": _round(lo * n_cards, 0), "hi": _round(hi * n_cards, 0),
            "source": source, "n": n}


def review_progress(audit: pd.DataFrame, classes: Sequence[str], order: np.ndarray, bits: np.ndarray,
                    calibration: dict | None = None) -> dict:
    """Where the reviewer stands: samples reviewed, label issues still flagged, spot checks offered (and
    whether they can reach ``MIN_SPOT_CHECKS`` at this size), and the errors the next ``NEXT_CARDS``
    flagged cards (in review order) are expected to hold (``expected_errors_next``)."""
    flagged = order[(bits[order] & BIT["label_issue"]) > 0]
    nxt = flagged[:NEXT_CARDS]
    exp = expected_errors_next(len(nxt), calibration)
    reviewed = C.flag(audit, "is_reviewed").to_numpy()
    n_spot = int(((bits & BIT["spot_check"]) > 0).sum())
    return {"n_reviewed": int(reviewed.sum()), "n_flagged": int(len(flagged)),
            "n_spot_checks": n_spot, "spot_checks_reachable": rc.spot_checks_reachable(n_spot),
            "n_rows": int(len(audit)),
            "next_cards": int(len(nxt)), "expected_errors_next": exp["expected"], "expected_lo": exp["lo"],
            "expected_hi": exp["hi"], "expected_from": exp["source"], "n_expected_from": exp["n"]}

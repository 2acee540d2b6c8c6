"""A reviewer's decisions re-rank the rows nobody reviewed (issue 28, part 1; pure functions, no retraining).

The hand-made score orders the first review queue. Once a reviewer has decided enough cards, a small
L2-regularised logistic regression is fitted on the reviewed rows: the target is the reviewer's
verdict (the given label was wrong: relabelled or dropped; right: kept), never a planted flip (planted
flips are clear faces with a foreign label, real errors mostly ambiguous ones). The inputs are the
per-sample signals the audit already has (``FEATURES``: label score, the second model's held-out
p(given), AUM, p(given), entropy, the suggestion's confidence, the dynamics signals of
``fercure.dynamics_signals``, neighbour agreement) and the given class (one-hot): the model learns
which classes' labels the reviewer finds wrong, and how the signals weigh against each other on this
dataset.

Queue cards are the most suspect rows, so they alone would teach the model only about the top of the
ranking; the report's random spot checks stand for every row nobody reviewed. The model is fitted with
every reviewed row alike (``DEFAULT_WEIGHTING``: in the replay, weighting the spot checks for the rows
they stand for ranked the unreviewed rows better by AUROC but put fewer errors in the next cards).
Whether the fit orders the queue is measured, not assumed: its cross-validated AUROC on the reviewed
rows is set beside the hand-made order's AUROC on the same rows, both with the spot checks weighted
for the rows they stand for (the queue cards alone were picked by the hand-made key, which would
flatter it); the fit orders the queue unless the hand-made order's is higher by more than
``AUROC_MARGIN`` (in the replay a strict comparison kept the hand-made order where the fit found more
errors per card); below ``MIN_REVIEWED`` reviewed rows (or ``MIN_PER_CLASS`` of either verdict) the
hand-made order stays, and the stats say why. The replay on
kept benchmark tables (benchmarks/bench_rerank.py) measures what the ordering does to the next cards.

Every row the queue can show gets a ``review_rank`` (1 = first); reviewed and unscored rows get none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from fercure import review_calibration as rc
from fercure.dynamics_signals import unambiguous_wrong
from fercure.metrics import auroc

# The audit's numeric columns the model reads (each standardised; a missing value gets the column's
# median and a missing-indicator input).
FEATURES = ("label_score", "retrain_p_given", "aum", "p_given", "uncertainty_entropy",
            "suggested_label_confidence", "logit_margin", "el2n_early", "learned_epoch", "knn_agreement",
            "fine_alignment")
# Set by replaying reviews on the reference benchmark (benchmarks/RESULTS.md, "Every reviewed card counts").
MIN_REVIEWED = 80  # reviewed rows before the fit may order the queue: the first 50 cards and most of the 40 spot checks
MIN_PER_CLASS = 10  # ...of which at least this many of each verdict
L2 = 100.0  # ridge penalty on the standardised inputs, in units of one reviewed row's weight
FOLDS = 5
AUROC_MARGIN = 0.1  # the fit orders the queue unless the hand-made order's AUROC beats its own by more than this
MAX_ITER, TOL = 50, 1e-8  # Newton steps; stop when no weight moves more than TOL
WEIGHTINGS = ("population", "equal")  # spot checks weighted for the rows they stand for, or every row alike
DEFAULT_WEIGHTING = "equal"  # the fit; its AUROC against the hand-made order's is always population-weighted
QUEUE_ORDERS = ("auto", "score", "unambiguous")  # the re-ranker when it measures better; today's; ALC's


@dataclass(frozen=True)
class Logistic:
    """A fitted L2-logistic model on standardised inputs: logit = ((x − mean) / sd) · weights + bias."""

    weights: np.ndarray
    bias: float
    mean: np.ndarray
    sd: np.ndarray

    def logit(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, float) - self.mean) / self.sd) @ self.weights + self.bias


def fit_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, l2: float = L2,
                 mean: np.ndarray | None = None, sd: np.ndarray | None = None) -> Logistic:
    """Weighted L2-regularised logistic regression by Newton's method (the bias unpenalised).

    ``mean``/``sd`` standardise the inputs (default: of ``x``); a constant input gets sd 1. At most
    ``MAX_ITER`` steps, stopping when no weight moves more than ``TOL``: deterministic for given inputs."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    w = np.ones(len(y)) if w is None else np.asarray(w, float)
    mean = x.mean(axis=0) if mean is None else mean
    sd = x.std(axis=0) if sd is None else sd
    sd = np.where(sd > 0, sd, 1.0)
    z = np.hstack([(x - mean) / sd, np.ones((len(x), 1))])
    beta = np.zeros(z.shape[1])
    reg = np.full(z.shape[1], float(l2))
    reg[-1] = 0.0
    for _ in range(MAX_ITER):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ beta, -30, 30)))
        grad = z.T @ (w * (p - y)) + reg * beta
        hess = (z * (w * p * (1 - p))[:, None]).T @ z + np.diag(reg) + 1e-9 * np.eye(len(beta))
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < TOL:
            break
    return Logistic(beta[:-1], float(beta[-1]), np.asarray(mean, float), sd)


def feature_matrix(table: pd.DataFrame, classes: Sequence[str],
                   features: Sequence[str] = FEATURES) -> tuple[np.ndarray, list[str]]:
    """(n, F) inputs from an audit table: each of ``features`` it has (all-NaN columns left out), missing
    values at the column's median plus a 0/1 missing indicator where any is missing; ``p_given`` is
    read from the ``p_<given label>`` columns; then the given class one-hot. Returns (matrix, names)."""
    n = len(table)
    cols, names = [], []
    given = table["given_label"].astype(object).where(table["given_label"].notna(), "").astype(str).to_numpy()
    for f in features:
        if f == "p_given":
            v = np.full(n, np.nan)
            for c in classes:
                if f"p_{c}" in table.columns:
                    hit = given == c
                    v[hit] = pd.to_numeric(table[f"p_{c}"], errors="coerce").to_numpy(dtype=float)[hit]
        elif f in table.columns:
            v = pd.to_numeric(table[f], errors="coerce").to_numpy(dtype=float)
        else:
            continue
        ok = np.isfinite(v)
        if not ok.any():
            continue
        cols.append(np.where(ok, v, np.median(v[ok])))
        names.append(f)
        if not ok.all():
            cols.append((~ok).astype(float))
            names.append(f"{f} missing")
    for c in classes:
        cols.append((given == c).astype(float))
        names.append(f"class {c}")
    return (np.stack(cols, axis=1) if cols else np.zeros((n, 0))), names


def sample_weights(is_spot: np.ndarray, n_population: int, weighting: str = DEFAULT_WEIGHTING) -> np.ndarray:
    """Per reviewed row: a queue card stands for itself; with ``population`` weighting the spot checks
    share the weight of every row the queue did not show (``n_population`` scored rows minus the queue
    cards). Rescaled to sum to the number of reviewed rows, so ``L2`` means the same at any size."""
    spot = np.asarray(is_spot, bool)
    w = np.ones(len(spot))
    if weighting == "population" and spot.any():
        w[spot] = max(int(n_population) - int((~spot).sum()), int(spot.sum())) / spot.sum()
    elif weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, not {weighting!r}")
    return w * len(w) / w.sum() if len(w) else w


def folds_of(y: np.ndarray, k: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Fold of each row, stratified by ``y``: each verdict's rows dealt round-robin in a seeded random order."""
    y = np.asarray(y, bool)
    out = np.zeros(len(y), np.int64)
    rng = np.random.default_rng(seed)
    for v in (False, True):
        idx = np.flatnonzero(y == v)
        out[rng.permutation(idx)] = np.arange(len(idx)) % k
    return out


def cross_validated(x: np.ndarray, y: np.ndarray, w: np.ndarray, mean: np.ndarray, sd: np.ndarray,
                    k: int = FOLDS, l2: float = L2) -> np.ndarray:
    """Out-of-fold logits of the reviewed rows (each predicted by the fit on the other folds)."""
    fold = folds_of(y, k)
    out = np.full(len(y), np.nan)
    for f in range(k):
        test = fold == f
        if test.any() and (~test).any() and len(np.unique(y[~test])) == 2:
            out[test] = fit_logistic(x[~test], y[~test], w[~test], l2, mean, sd).logit(x[test])
    return out


@dataclass
class RerankFit:
    """What the re-ranker made of the reviewed rows, and whether it orders the queue."""

    used: bool
    why: str  # the decision in a sentence (what was measured, or what was missing)
    n_reviewed: int  # reviewed rows the fit could use (scored about the label the verdict is on)
    n_errors: int
    n_spot_checks: int
    cv_auroc: float | None  # the re-ranker's, out of fold, on the reviewed rows
    hand_auroc: float | None  # the hand-made queue key's, on the same rows
    weighting: str = DEFAULT_WEIGHTING
    features: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)  # per standardised input
    probability: np.ndarray | None = None  # (n,) P(label wrong) for every row (NaN: unscored), when fitted

    def stats(self) -> dict:
        def r(v):
            return None if v is None or not np.isfinite(v) else round(float(v), 4)
        return {"used": self.used, "why": self.why, "n_reviewed": self.n_reviewed, "n_errors": self.n_errors,
                "n_spot_checks": self.n_spot_checks, "cv_auroc": r(self.cv_auroc), "hand_auroc": r(self.hand_auroc),
                "weighting": self.weighting, "min_reviewed": MIN_REVIEWED, "l2": L2,
                "weights": {f: r(v) for f, v in zip(self.features, self.weights)}}


def fit(x: np.ndarray, scored: np.ndarray, reviewed: np.ndarray, is_error: np.ndarray, is_spot: np.ndarray,
        hand_key: np.ndarray, *, weighting: str = DEFAULT_WEIGHTING, min_reviewed: int = MIN_REVIEWED,
        l2: float = L2, margin: float | None = None, names: Sequence[str] = ()) -> RerankFit:
    """Fit the re-ranker on the reviewed rows and decide whether it orders the queue.

    Parameters
    ----------
    x : (n, F) inputs of every row (``feature_matrix``).
    scored : (n,) bool, the row has a score (the queue can show it).
    reviewed : (n,) bool, a reviewer decided the row *and* its inputs are about the label decided on.
    is_error, is_spot : (n,) bool, the verdict (relabelled or dropped) and whether it was a spot check
        (meaningful on reviewed rows only).
    hand_key : (n,) the hand-made queue key, low = review first.

    Returns
    -------
    RerankFit; ``probability`` is set whenever a fit was possible, ``used`` only when the fit's
    cross-validated AUROC beats the hand-made key's on the same rows.
    """
    rev = np.asarray(reviewed, bool) & np.asarray(scored, bool)
    y, spot = np.asarray(is_error, bool)[rev], np.asarray(is_spot, bool)[rev]
    base = dict(n_reviewed=int(rev.sum()), n_errors=int(y.sum()), n_spot_checks=int(spot.sum()), weighting=weighting)
    pop = np.asarray(scored, bool)
    w = sample_weights(spot, int(pop.sum()), weighting)
    # measured with the spot checks standing for the rows nobody reviewed: the queue cards alone were
    # picked by the hand-made key, which would flatter it
    w_eval = sample_weights(spot, int(pop.sum()), "population")
    hand = auroc(y, -np.asarray(hand_key, float)[rev], w_eval) if rev.any() else float("nan")
    n_min = min(int(y.sum()), int((~y).sum()))
    if rev.sum() < min_reviewed or n_min < MIN_PER_CLASS:
        return RerankFit(False, f"{int(rev.sum())} reviewed rows ({int(y.sum())} wrong, {int((~y).sum())} right): the "
                                f"re-ranker needs {min_reviewed}, with {MIN_PER_CLASS} of each verdict; the hand-made "
                                "order stays", cv_auroc=None, hand_auroc=hand, **base)
    mean, sd = x[pop].mean(axis=0), x[pop].std(axis=0)
    cv = auroc(y, cross_validated(x[rev], y, w, mean, sd, l2=l2), w_eval)
    model = fit_logistic(x[rev], y, w, l2, mean, sd)
    prob = np.full(len(x), np.nan)
    prob[pop] = 1.0 / (1.0 + np.exp(-np.clip(model.logit(x[pop]), -30, 30)))
    margin = AUROC_MARGIN if margin is None else margin
    used = bool(np.isfinite(cv) and (not np.isfinite(hand) or cv > hand - margin))
    close = used and np.isfinite(hand) and cv <= hand
    why = (f"re-ranker AUROC {cv:.3f} (cross-validated) against the hand-made order's {hand:.3f} on the same "
           f"{int(rev.sum())} reviewed rows" + (f", within the {margin:g} allowed (on reviewed rows this comparison "
                                                "underrates the re-ranker: benchmarks/RESULTS.md)" if close else "")
           + (": the re-ranker orders the queue" if used else ": the hand-made order stays"))
    return RerankFit(used, why, cv_auroc=cv, hand_auroc=hand, features=list(names),
                     weights=[float(v) for v in model.weights], probability=prob, **base)


def hand_order_key(label_score: np.ndarray, held_out_p: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    """Today's queue as one key, low first: the flagged rows by the queue key (``review_calibration.
    queue_key``: the held-out p(given) where every flagged row has one), then the other rows by label
    score. Returned as the flagged rows' key in [−2, −1) and the others' in [0, 1]."""
    flagged = np.asarray(flagged, bool)
    key = rc.queue_key(label_score, held_out_p, flagged)
    return np.where(flagged, np.clip(np.asarray(key, float), 0, 1) - 2.0, np.asarray(label_score, float))


def review_rank(key: np.ndarray, eligible: np.ndarray, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """1-based place of each eligible row with a finite key, ``key`` ascending (ties by ``tiebreak``,
    default the row position); NaN elsewhere."""
    key = np.asarray(key, float)
    ok = np.asarray(eligible, bool) & np.isfinite(key)
    tb = np.arange(len(key)) if tiebreak is None else np.asarray(tiebreak)
    idx = np.flatnonzero(ok)
    order = idx[np.lexsort((tb[idx], key[idx]))]
    out = np.full(len(key), np.nan)
    out[order] = np.arange(1, len(order) + 1)
    return out


# The re-ranked order mixes flagged and unflagged rows (the report lists the unflagged ones it puts among the
# first cards as "next in the re-ranked queue"); keeping the flagged rows first found fewer errors per card.
FLAGGED_FIRST = False


def queue_key(prob_wrong: np.ndarray, flagged: np.ndarray, flagged_first: bool = FLAGGED_FIRST) -> np.ndarray:
    """A P(label wrong) (or any high-first priority) as a queue key, low first; the flagged rows ahead
    of the others with ``flagged_first``."""
    k = -np.asarray(prob_wrong, float)
    if not flagged_first:
        return k
    span = np.nanmax(np.abs(k)) + 1.0 if np.isfinite(k).any() else 1.0
    return np.where(np.asarray(flagged, bool), k - 2.0 * span, k)


def unflagged_first_cards(rank: np.ndarray, flagged: np.ndarray, reviewed: np.ndarray) -> np.ndarray:
    """Positions of the rows the queue puts among its first cards without a flag: as many first cards
    as there are open (unreviewed) label issues. Under the hand-made order those are the label issues
    themselves, so none; a re-ranked queue can put unflagged rows there."""
    rank = np.asarray(rank, dtype=float)
    flagged = np.asarray(flagged, bool)
    n_open = int((flagged & ~np.asarray(reviewed, bool)).sum())
    return np.flatnonzero(np.isfinite(rank) & (rank <= n_open) & ~flagged)


@dataclass
class QueueOrder:
    """The audit's review queue: each row's place (``rank``: 1 first, NaN for reviewed and unscored
    rows), the order used, and the re-ranker's fit (None when not tried)."""

    rank: np.ndarray
    order: str  # "score" (the hand-made order), "rerank" or "unambiguous"
    asked: str  # the --queue-order option
    fit: RerankFit | None

    def stats(self) -> dict:
        return {"order": self.order, "asked": self.asked, "n_ranked": int(np.isfinite(self.rank).sum()),
                **({"rerank": self.fit.stats()} if self.fit is not None else {})}


def order_queue(audit: pd.DataFrame, classes: Sequence[str], verdicts: pd.DataFrame | None,
                asked: str = "auto", tiebreak: np.ndarray | None = None, rule_flags: np.ndarray | None = None,
                flagged_first: bool = FLAGGED_FIRST, **fit_options) -> QueueOrder:
    """The review queue of an audit table (its label_score, retrain_p_given, is_label_issue,
    is_reviewed, p_<class> and ``FEATURES`` columns).

    ``verdicts``: the reviewed rows the re-ranker may learn from (sample_id, action, spot_check), those
    whose scores are about the label the reviewer decided on. ``asked``: one of ``QUEUE_ORDERS``.
    ``rule_flags``: the threshold rule's flags before reviewed rows were unflagged (default the table's):
    the hand-made order is measured on the reviewed rows by the key it gave them before review."""
    if asked not in QUEUE_ORDERS:
        raise ValueError(f"queue order must be one of {QUEUE_ORDERS}, not {asked!r}")
    n = len(audit)

    def num(name: str) -> np.ndarray:
        return pd.to_numeric(audit[name], errors="coerce").to_numpy(dtype=float) if name in audit.columns \
            else np.full(n, np.nan)

    def flag(name: str) -> np.ndarray:
        return audit[name].fillna(False).astype(bool).to_numpy() if name in audit.columns else np.zeros(n, bool)

    score = num("label_score")
    reviewed, flagged = flag("is_reviewed"), flag("is_label_issue")
    scored = np.isfinite(score)
    open_rows = scored & ~reviewed
    hand = hand_order_key(score, num("retrain_p_given"), flagged & ~reviewed)
    if asked == "unambiguous":
        given = audit["given_label"].astype(str).to_numpy()
        cidx = {c: i for i, c in enumerate(classes)}
        probs = np.stack([num(f"p_{c}") for c in classes], axis=1) if len(classes) else np.zeros((n, 0))
        gi = np.array([cidx.get(g, -1) for g in given])
        ok = gi >= 0
        pr = np.full(n, np.nan)
        pr[ok] = unambiguous_wrong(probs[ok], gi[ok])
        key = np.where(np.isfinite(pr), queue_key(pr, flagged, flagged_first), np.nan)
        return QueueOrder(review_rank(key, open_rows, tiebreak), "unambiguous", asked, None)
    if asked == "score":
        return QueueOrder(review_rank(hand, open_rows, tiebreak), "score", asked, None)
    learn = np.zeros(n, bool)
    err, spot = np.zeros(n, bool), np.zeros(n, bool)
    if verdicts is not None and len(verdicts):
        v = verdicts.set_index(verdicts["sample_id"].astype(str))
        ids = audit["sample_id"].astype(str)
        hit = ids.isin(v.index).to_numpy() & reviewed
        learn[hit] = True
        err[hit] = (v["action"].reindex(ids[hit]) != "keep").to_numpy()
        if "spot_check" in v.columns:
            spot[hit] = v["spot_check"].reindex(ids[hit]).fillna(False).astype(bool).to_numpy()
    before = flagged if rule_flags is None else np.asarray(rule_flags, bool)
    x, names = feature_matrix(audit, classes)
    # the threshold rule's verdict is an input too (as it was before review: a reviewed row is unflagged)
    x, names = np.hstack([x, before[:, None].astype(float)]), names + ["flagged by the rule"]
    hand_then = hand_order_key(score, num("retrain_p_given"), before)
    fitted = fit(x, scored, learn, err, spot, hand_then, names=names, **fit_options)
    if fitted.used:
        key = queue_key(fitted.probability, flagged, flagged_first)
        return QueueOrder(review_rank(key, open_rows, tiebreak), "rerank", asked,
                          fitted)
    return QueueOrder(review_rank(hand, open_rows, tiebreak), "score", asked, fitted)

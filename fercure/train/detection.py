"""A run's fits → per-sample detection signals, the planted-flip self-check and the model-strength
probe (pure functions over arrays; ``fercure.stages.train`` does the files).

The first model(s) train on all samples but a stratified probe (``holdout``), with a few labels
flipped on purpose (``plant_rate``). Scores are always about the *given* label:

- a trained, unplanted sample: its training dynamics (mean, spread of p(given) over epochs, area
  under the margin, forgetting events);
- a planted sample: it was trained with another label, so its dynamics describe that label; its
  given label is scored from the mean over epochs of the training-time distribution instead;
- a probe sample: the first model's held-out, mirror-averaged p(given).

The retrain (optional) drops the most suspect share by that first score, and always the probe
and the planted samples, trains a second model on the given labels of the rest, and scores what it
dropped by the second model's held-out prediction and the rest by its dynamics;
``retrain_p_given`` holds that second opinion.

Every row is judged the same way, within its estimator group (``GROUPS``): a row is a *suspect*
when its group's own score puts it in the lowest ``retrain_drop`` share of that group, and the
retrain rule flags a suspect the held-out second model contradicts. The groups' scores: trained
rows, the first models' mean p(given); probe rows, the first models' held-out p(given); planted
rows, the second model's held-out p(given). A planted row's flipped label never leaves the
training run: every column about it comes from the second model, which never saw the flip (and
without a retrain the planted rows are left unscored), and the kNN vote counts given labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from fercure import embedding_map
from fercure import strength
from fercure.dynamics_signals import fine_alignment
from fercure.metrics import auroc
from fercure.train import signals as sg
from fercure.train.dynamics import summarize
from fercure.train.records import FitRecord


@dataclass
class RunPlan:
    given: np.ndarray  # (N,) given labels
    train_labels: np.ndarray  # (N,) labels the first models train on (planted flips applied)
    planted: np.ndarray  # (N,) bool
    holdout: np.ndarray  # (N,) bool: the probe the first models never see


def plan_run(given: np.ndarray, num_classes: int, config: Any, reviewed: np.ndarray | None = None) -> RunPlan:
    """``reviewed``: samples whose label a person decided (``--trusted``): never planted."""
    given = np.asarray(given, dtype=np.int64)
    holdout = sg.holdout_mask(given, config.holdout, seed=config.seed)
    if holdout.all():  # a tiny set: train on everything rather than on nothing
        holdout[:] = False
    exclude = holdout if reviewed is None else holdout | np.asarray(reviewed, bool)
    train_labels, planted = sg.plant_flips(given, config.plant_rate, num_classes, exclude=exclude,
                                           seed=config.seed)
    return RunPlan(given, train_labels, planted, holdout)


def first_stage_scores(plan: RunPlan, members: Sequence[FitRecord], num_classes: int) -> np.ndarray:
    """The first models' score of every sample's given label (mean p(given) over epochs; held-out
    p(given) for the probe; see the module docstring for planted samples)."""
    score = np.full(len(plan.given), np.nan)
    score[members[0].trained] = summarize([m.dynamics for m in members])["mean_p_given"]
    pl, ho = plan.planted, plan.holdout
    score[pl] = _mean_probs_full(members, len(plan.given), num_classes)[pl, plan.given[pl]]
    probs = np.mean([m.probs for m in members], axis=0)
    score[ho] = probs[ho, plan.given[ho]]
    return score


def _mean_probs_full(members: Sequence[FitRecord], n: int, num_classes: int) -> np.ndarray:
    """(N,C) mean over epochs (and members) of the training-time distribution; NaN rows for the
    samples the first models did not train on."""
    out = np.full((n, num_classes), np.nan)
    out[members[0].trained] = np.mean([m.mean_probs for m in members], axis=0)
    return out


# Estimator groups: which model's view scores a row's given label (see the module docstring).
GROUPS = ("trained", "probe", "planted")


def estimator_group(plan: RunPlan) -> np.ndarray:
    """(N,) index into ``GROUPS`` of every sample."""
    return np.where(plan.holdout, 1, np.where(plan.planted, 2, 0)).astype(np.int64)


def lowest_share_per_group(score: np.ndarray, group: np.ndarray, share: float) -> np.ndarray:
    """The ``share`` of each group with the lowest score (round(share × group size) per group,
    ties by position; NaN scores are never picked): every group is judged against itself, so a
    group scored by a harsher or kinder estimator is not over- or under-picked."""
    score, group = np.asarray(score, float), np.asarray(group)
    out = np.zeros(len(score), dtype=bool)
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        cand = members[np.isfinite(score[members])]
        k = min(int(round(share * len(members))), len(cand))
        if k > 0:
            out[cand[np.argsort(score[cand], kind="stable")[:k]]] = True
    return out


def suspects(score: np.ndarray, plan: RunPlan, share: float) -> np.ndarray:
    """The trained (not probe, not planted) samples in the lowest ``share`` of them by the first-stage score."""
    trained = estimator_group(plan) == 0
    return lowest_share_per_group(np.where(trained, score, np.nan), trained.astype(int), share) & trained


def retrain_excluded(score: np.ndarray, plan: RunPlan, share: float) -> np.ndarray:
    """What the second model does not train on: the trained samples' suspects, the probe (held
    out of both models, so it has two independent held-out views) and the planted samples (so a
    model that never trained on their flipped label can speak about them)."""
    return suspects(score, plan, share) | plan.holdout | plan.planted


def _margin(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """p(label) − the largest other p, per row (NaN rows stay NaN)."""
    c = probs.shape[1]
    own = probs[np.arange(len(labels)), labels]
    return own - np.where(np.eye(c, dtype=bool)[labels], -np.inf, probs).max(axis=1)


def aggregate(plan: RunPlan, members: Sequence[FitRecord], retrain: FitRecord | None,
              num_classes: int, config: Any) -> tuple[dict[str, np.ndarray], dict, dict]:
    """Per-sample signal columns (about the given label), the self-check and the model strength."""
    n, c = len(plan.given), num_classes
    given = plan.given
    trained = members[0].trained  # positions the first models trained on
    summ = summarize([m.dynamics for m in members])  # about the *training* labels of `trained`
    tl = plan.train_labels
    pl, ho = plan.planted, plan.holdout

    def at_trained(values: np.ndarray) -> np.ndarray:
        return _at(n, trained, values)

    mean_p_train = at_trained(summ["mean_p_given"])
    std_train = at_trained(np.sqrt(summ["var_p_given"]))
    std_p = std_train.copy()  # about the given label: planted and probe samples have none
    std_p[pl] = np.nan
    aum_train = at_trained(summ["aum"])
    predicted = members[0].dynamics["predicted"]
    forget_given = at_trained(sg.forgetting_events(predicted, given[trained]))
    forget_train = at_trained(sg.forgetting_events(predicted, tl[trained]))
    eval_probs = np.mean([m.probs for m in members], axis=0)
    # The second model never trained on a planted sample (``retrain_excluded``): its held-out view
    # is the only one free of the flip. Without a retrain a planted sample is left unscored.
    rp = retrain.probs if retrain is not None else np.full((n, c), np.nan)
    # the first member's embedding: members are trained apart, so their feature spaces differ and
    # an average of embeddings would mean nothing. Neighbours vote with their *given* labels (no
    # flip is counted); a planted sample's own place in that space was learnt with its flip.
    emb = members[0].embedding
    # The kNN runs where training ran (`--device cpu` never wakes a GPU). The fusion fit also needs
    # the vote on the labels the first model trained on: same neighbours, searched once.
    fit_fusion = bool(config.knn) and pl.sum() >= 10
    knn, knn_tl, neighbours = np.full((n, c), np.nan), None, None
    if config.knn:
        votes, neighbours = sg.knn_votes_and_neighbours(emb, [given, tl] if fit_fusion else [given], c, k=config.knn,
                                                        device=getattr(config, "device", "auto"))
        knn, knn_tl = votes[0], (votes[1] if fit_fusion else None)
    knn[pl] = np.nan

    # about the given label: probe samples held out, planted samples by the second model
    mean_p = first_stage_scores(plan, members, c)
    mean_p[pl] = rp[pl, given[pl]]
    aum = aum_train.copy()
    aum[pl] = _margin(rp[pl], given[pl])
    aum[ho] = _margin(eval_probs[ho], given[ho])
    knn_agree = knn[np.arange(n), given]
    nan_planted = lambda v: np.where(pl, np.nan, v)  # noqa: E731

    cols: dict[str, np.ndarray] = {
        "mean_p_given": mean_p, "var_p_given": std_p ** 2, "aum": aum,
        "last_p_given": nan_planted(at_trained(np.mean([m.dynamics["p_given"][-1] for m in members], axis=0))),
        "importance_weight": nan_planted(at_trained(summ["importance_weight"])),
        "forgetting": nan_planted(forget_given), "knn_agreement": knn_agree, "knn_probs": knn,
        # FINE: alignment with the given class's principal direction of the same embedding (planted
        # rows' places in it were learnt with their flip, as for the kNN)
        "fine_alignment": nan_planted(fine_alignment(emb, given, c)),
        "planted": pl.copy(), "probe": ho.copy(),
        # kept beside the predictions (embedding.parquet): the audit's group cards and the report's map
        "embedding_components": embedding_map.principal_components(emb),
    }
    if neighbours is not None:
        cols["neighbour_index"], cols["neighbour_similarity"] = neighbours.index, neighbours.similarity
    if "p_given_eval" in members[0].dynamics:
        pe = at_trained(np.mean([m.dynamics["p_given_eval"].mean(axis=0) for m in members], axis=0))
        pe[pl] = np.nan
        pe[ho] = eval_probs[ho, given[ho]]
        cols["mean_p_given_eval"] = pe

    # ---- fusion, fitted on planted flips (features about the training label) vs the rest
    knn_train = knn_tl[np.arange(n), tl] if knn_tl is not None else None
    on_train = {"mean_p": mean_p_train, "std": std_train, "aum": aum_train, "knn": knn_train, "forget": forget_train}
    on_given = {"mean_p": mean_p, "std": std_p, "aum": aum, "knn": knn_agree, "forget": forget_given}
    cols["fusion_quality"], fusion, fit_rows = _fusion_step(plan, trained, on_train, on_given, c)

    # ---- the retrain's second opinion
    suspect_score = mean_p.copy()  # trained: in-sample; probe: first model held out; planted: second model held out
    if retrain is not None:
        cols.update(_retrain_columns(retrain, given, rp))
    cols["retrain_suspect"] = _retrain_suspects(plan, suspect_score, rp, retrain is not None, config.retrain_drop)

    self_check = _self_check(pl, fit_rows, mean_p_train, knn_train, config.plant_rate, fusion)
    strength = model_strength(eval_probs[ho], given[ho], c)
    strength["planted_auroc"] = self_check.get("auroc_mean_p")
    strength.update(verdict_of(strength, self_check))
    return cols, self_check, strength


def _at(n: int, positions: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` (one per trained position) on all ``n`` samples, NaN for the rest."""
    out = np.full(n, np.nan)
    out[positions] = values
    return out


def _fusion_step(plan: RunPlan, trained: np.ndarray, on_train: dict[str, np.ndarray | None],
                 on_given: dict[str, np.ndarray], c: int) -> tuple[np.ndarray, dict, np.ndarray]:
    """The fused quality score: a logistic fit of planted flips vs the rest on features about the
    *training* label (``on_train``; its ``knn`` None when there is no kNN or too few planted), applied
    to the same features about the *given* label. Returns the column (NaN on planted rows and when
    unfitted), the fit's record, and the trained rows with finite features (the self-check's rows)."""
    n, pl, tl, given = len(plan.given), plan.planted, plan.train_labels, plan.given
    xf = None
    fit_rows = np.zeros(n, dtype=bool)
    fit_rows[trained] = True
    fusion = {"features": list(sg.FUSION_FEATURES), "fitted": False}
    quality = np.full(n, np.nan)
    if on_train["knn"] is not None:
        feats_train = {"mean_p_given": on_train["mean_p"], "std_p_given": on_train["std"],
                       "aum": on_train["aum"], "knn_agreement": on_train["knn"],
                       "class_adjusted": sg.class_adjusted(on_train["mean_p"], tl, c), "forgetting": -on_train["forget"]}
        xf = sg.fusion_features(feats_train)
        fit_rows &= np.isfinite(xf).all(axis=1)
    if xf is not None and pl[fit_rows].sum() >= 10:
        std_p, forget_given, mean_p = on_given["std"], on_given["forget"], on_given["mean_p"]
        feats_given = {"mean_p_given": mean_p, "std_p_given": np.where(np.isfinite(std_p), std_p, np.nanmean(std_p)),
                       "aum": on_given["aum"], "knn_agreement": on_given["knn"],
                       "class_adjusted": sg.class_adjusted(mean_p, given, c),
                       "forgetting": -np.where(np.isfinite(forget_given), forget_given, np.nanmean(forget_given))}
        w, b, mu, sd = sg.fit_logistic(xf[fit_rows], pl[fit_rows].astype(float))
        xg = sg.fusion_features(feats_given)
        prior = float(pl[fit_rows].mean())
        logit = sg.predict_logit(np.nan_to_num(xg, nan=0.0), w, b, mu, sd) - np.log(prior / (1 - prior))
        quality = np.where(pl, np.nan, 1.0 / (1.0 + np.exp(np.clip(logit, -30, 30))))
        fusion.update(fitted=True, weights=[float(v) for v in w], bias=b, n_planted=int(pl[fit_rows].sum()))
    return quality, fusion, fit_rows


def _retrain_columns(retrain: FitRecord, given: np.ndarray, rp: np.ndarray) -> dict[str, np.ndarray]:
    """The second model's p(given) (in-sample where it trained, held out where it did not), which rows
    it held out, and its class distributions."""
    n = len(given)
    kept = retrain.trained
    dropped = np.ones(n, dtype=bool)
    dropped[kept] = False
    s2 = np.full(n, np.nan)
    s2[kept] = summarize([retrain.dynamics])["mean_p_given"]
    s2[dropped] = rp[dropped, given[dropped]]
    return {"retrain_p_given": s2, "retrain_held_out": dropped, "retrain_probs": rp}


def _retrain_suspects(plan: RunPlan, suspect_score: np.ndarray, rp: np.ndarray, has_retrain: bool,
                      drop: float) -> np.ndarray:
    """The rows the two-step rule calls suspect: the lowest ``drop`` share per estimator group; the
    planted rows' suspects picked so that they are flagged at the other rows' rate (see inside)."""
    given, pl = plan.given, plan.planted
    suspect = lowest_share_per_group(suspect_score, estimator_group(plan), drop)
    if has_retrain and pl.any():
        # A planted row has one flip-free view (the second model's), where the other rows have two
        # independent ones; picking its suspects by that view and confirming with it would over-flag
        # the planted, and a cut on that view carried over from the probe assumes the second model
        # sees the planted rows as it sees the probe, which it need not: on the FER2013 reference
        # subset its p(given) of them was less spread (first quartile 0.14 against 0.08), and the
        # probe's cut flagged them at 0.19 against 0.29 for the rest. The planted rows are a random
        # draw with the others' share of wrong labels, so they are flagged at the others' rate (the
        # two-step rule's over every row not planted): that many planted rows, those the second model
        # contradicts with its lowest p(given) — an order within the group, like every group's.
        finite = np.isfinite(rp).all(axis=1)
        disagree = np.argmax(np.nan_to_num(rp, nan=-1.0), axis=1) != given
        other = ~pl & finite
        rate = float((suspect & disagree)[other].mean()) if other.any() else 0.0
        cand = np.flatnonzero(pl & finite & disagree)
        k = min(int(round(rate * pl.sum())), len(cand))
        suspect[pl] = False
        suspect[cand[np.argsort(rp[cand, given[cand]], kind="stable")[:k]]] = True
    return suspect


def _self_check(pl: np.ndarray, rows: np.ndarray, mean_p_train: np.ndarray, knn_train: np.ndarray | None,
                plant_rate: float, fusion: dict) -> dict[str, Any]:
    """How the first score ranks the planted flips among the trained samples (``rows``): the run's
    own evidence that its scores find wrong labels."""
    self_check: dict[str, Any] = {"n_planted": int(pl.sum()), "plant_rate": float(plant_rate)}
    if pl.any():
        self_check["n_scored"] = int(rows.sum())  # the rows the AUROC ranks the flips among (its interval)
        self_check["auroc_mean_p"] = auroc(pl[rows], -mean_p_train[rows])
        self_check["auroc_knn"] = auroc(pl[rows], -knn_train[rows]) if knn_train is not None else None
        share = sg.estimate_error_share(mean_p_train[rows], pl[rows])
        self_check["estimated_error_share"] = share
        if np.isfinite(share):
            k = int(round(share * rows.sum()))
            cut = np.sort(mean_p_train[rows])[max(k - 1, 0)] if k > 0 else -np.inf
            self_check["recall_at_estimated_share"] = float((mean_p_train[rows & pl] <= cut).mean())
    self_check["fusion"] = fusion
    return self_check


def hide_flips(predictions: pd.DataFrame, plan: RunPlan, classes: Sequence[str],
               retrain_probs: np.ndarray | None) -> pd.DataFrame:
    """The predictions table with every planted row's class distributions (``p``, ``mean_p``,
    ``rel_p``) and the statistics derived from them replaced by the second model's held-out view
    (NaN without a retrain): the first models trained on the flipped label, so their view of a
    planted row would carry the flip into the audit, the report and the exports."""
    out = predictions.copy()
    pl = np.asarray(plan.planted, bool)
    if not pl.any():
        return out
    c = len(classes)
    rp = np.full((int(pl.sum()), c), np.nan) if retrain_probs is None else np.asarray(retrain_probs, float)[pl]
    for prefix in ("p", "mean_p", "rel_p"):
        for j, name in enumerate(classes):
            col = f"{prefix}_{name}"
            if col in out.columns:
                out.loc[pl, col] = rp[:, j].astype(out[col].dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = np.where(np.isfinite(rp).all(axis=1), -(np.where(rp > 0, rp * np.log(rp), 0.0)).sum(axis=1), np.nan)
    fill = {"reliability": rp.max(axis=1), "uncertainty_entropy": ent,
            "uncertainty_mutual_info": np.zeros(len(rp)), "relabel_count": np.zeros(len(rp))}
    for col, v in fill.items():
        if col in out.columns:
            out.loc[pl, col] = np.asarray(v).astype(out[col].dtype, copy=False) if out[col].dtype.kind == "f" \
                else np.nan_to_num(np.asarray(v)).astype(out[col].dtype)
    if "scn_label" in out.columns:
        out.loc[pl, "scn_label"] = out.loc[pl, "given_label"]
    return out


def model_strength(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Held-out accuracy on the probe against the given (noisy) labels, and chance: the share of
    the probe's most frequent class (what always guessing it scores)."""
    m = len(labels)
    if m == 0:
        return {"n_holdout": 0, "holdout_accuracy": None, "chance_accuracy": None}
    acc = float((probs.argmax(axis=1) == labels).mean())
    chance = float(np.bincount(labels, minlength=num_classes).max() / m)
    return {"n_holdout": m, "holdout_accuracy": acc, "chance_accuracy": chance,
            "standard_error": float(np.sqrt(max(acc * (1 - acc), 1e-12) / m))}


def verdict_of(s: dict[str, Any], self_check: dict[str, Any] | None = None) -> dict[str, str]:
    """ok / weak / too_weak (``fercure.strength.verdict``), with the sentence the training log shows:
    the ranking judged by the planted flips' AUROC and its interval, the suggestions not yet measured
    (no reviewed cards at training time). The audit judges again with the reviewed rows."""
    sc = self_check or {}
    n_pl = int(sc.get("n_planted") or 0)
    ranking = strength.ranking_strength(s.get("planted_auroc"), n_pl, int(sc.get("n_scored") or 0) - n_pl)
    return strength.verdict(ranking, strength.suggestion_strength(np.zeros(0, bool)), s)

"""Dataset health: the share of wrong labels per class and overall, class imbalance, and the
classes the model does worst on (pure functions, numpy in, records out).

Named as cleanlab users know it (``cleanlab.dataset.health_summary``): per class the estimated
*label noise* (share of its given labels that are wrong) and *label quality* (1 − noise), and one
``overall_label_health_score`` = 1 − the estimated share of wrong labels in the dataset.

The estimate is confident learning's: the confident joint on the audit distribution, each row
calibrated to its class size (``fercure.audit.counting.noise_rate_counts`` before rounding), so class j's
share is off_j / row_j. Its interval is a percentile bootstrap over the rows (the thresholds, the
joint and the shares recomputed on each resample), with a fixed seed: the same inputs give the
same interval. It is only as good as the probabilities: in-sample probabilities of a model that
memorised its labels put it near zero.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np

from fercure.audit.counting import confident_joint, per_class_thresholds

BOOTSTRAP = 200
LEVEL = 0.95
# largest / smallest class: past this the small class's flags rest on few samples
IMBALANCE_RATIO = 10.0
Z95 = 1.959963984540054


@dataclass(frozen=True)
class ClassHealth:
    name: str
    n: int  # scored samples labelled with this class
    label_noise: float | None  # estimated share of its given labels that are wrong
    label_noise_interval: tuple[float | None, float | None]
    label_quality: float | None  # 1 − label_noise
    agreement: float | None  # share whose most probable class is the given one
    agreement_interval: tuple[float | None, float | None]  # Wilson
    underperforming: bool  # its agreement's upper bound lies below the dataset's agreement
    imbalanced: bool  # IMBALANCE_RATIO × fewer samples than the largest class (or none)


@dataclass(frozen=True)
class HealthSummary:
    n_scored: int
    overall_label_health_score: float | None  # 1 − the estimated share of wrong labels
    overall_interval: tuple[float | None, float | None]
    agreement: float | None  # share of scored rows whose most probable class is the given one
    classes: tuple[ClassHealth, ...]
    method: str  # how the figures were estimated, in a sentence
    caveat: str = ""  # what the estimate cannot tell apart, in a sentence

    @property
    def underperforming_classes(self) -> list[str]:
        return [c.name for c in self.classes if c.underperforming]

    @property
    def imbalanced_classes(self) -> list[str]:
        return [c.name for c in self.classes if c.imbalanced]

    def as_dict(self) -> dict:
        """JSON-ready: the figures, the per-class rows by class name, the dataset-level issues."""
        out = asdict(self)
        out["classes"] = {c["name"]: {k: v for k, v in c.items() if k != "name"} for c in out["classes"]}
        out["underperforming_classes"] = self.underperforming_classes
        out["imbalanced_classes"] = self.imbalanced_classes
        said = [f"{what}: {', '.join(names)}" for what, names in (("imbalanced", self.imbalanced_classes),
                                                                  ("underperforming", self.underperforming_classes))
                if names]
        out["dataset_issues"] = "; ".join(said) or "none"  # the two lists in words (the terminal shows it)
        return out


def noise_shares(probs: np.ndarray, given: np.ndarray, n_classes: int) -> np.ndarray:
    """(K + 1,) the calibrated confident joint's share of wrong labels per class, then overall
    (NaN for a class whose row of the joint is empty)."""
    t = per_class_thresholds(probs, given, n_classes)
    joint = confident_joint(probs, given, t, n_classes).astype(float)
    sizes = np.bincount(given, minlength=n_classes).astype(float)
    row = joint.sum(axis=1)
    off = row - np.diag(joint)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(row > 0, off / row, np.nan)
    wrong = np.nansum(np.where(np.isfinite(share), share * sizes, 0.0))
    return np.append(share, wrong / sizes.sum() if sizes.sum() else np.nan)


def wilson(k: int, n: int, z: float = Z95) -> tuple[float | None, float | None]:
    """Wilson score interval of a binomial share k / n (None, None when n = 0)."""
    if n <= 0:
        return None, None
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return float(max(0.0, mid - half)), float(min(1.0, mid + half))


def health_summary(probs: np.ndarray, given: np.ndarray, classes: list[str], *, source: str = "the audit distribution",
                   n_boot: int = BOOTSTRAP, seed: int = 0) -> HealthSummary:
    """The health of the rows with finite probabilities; ``given`` class indices (−1: unknown, left out).
    ``source``: what the probabilities are, in words, for the ``method`` sentence."""
    probs = np.asarray(probs, dtype=float)
    given = np.asarray(given, dtype=np.int64)
    k = len(classes)
    ok = np.isfinite(probs).all(axis=1) & (given >= 0) if len(given) else np.zeros(0, bool)
    p, y = probs[ok], given[ok]
    n = len(y)
    point = noise_shares(p, y, k) if n else np.full(k + 1, np.nan)
    boot = np.full((n_boot, k + 1), np.nan)
    rng = np.random.default_rng(seed)
    for b in range(n_boot if n else 0):
        pick = rng.integers(0, n, n)
        boot[b] = noise_shares(p[pick], y[pick], k)
    alpha = (1 - LEVEL) / 2
    with warnings.catch_warnings():  # an empty class's all-NaN column warns; NaN is the answer
        warnings.simplefilter("ignore", RuntimeWarning)
        lo = np.nanquantile(boot, alpha, axis=0) if n else np.full(k + 1, np.nan)
        hi = np.nanquantile(boot, 1 - alpha, axis=0) if n else np.full(k + 1, np.nan)
    hit = (np.argmax(p, axis=1) == y) if n else np.zeros(0, bool)
    overall_agree = float(hit.mean()) if n else None
    sizes = np.bincount(y, minlength=k)
    biggest = sizes.max() if k else 0
    rows = []
    for j, c in enumerate(classes):
        m = y == j
        a_lo, a_hi = wilson(int(hit[m].sum()), int(m.sum()))
        rows.append(ClassHealth(
            name=c, n=int(m.sum()), label_noise=_f(point[j]), label_noise_interval=(_f(lo[j]), _f(hi[j])),
            label_quality=_f(1 - point[j]),
            agreement=float(hit[m].mean()) if m.any() else None, agreement_interval=(a_lo, a_hi),
            underperforming=bool(a_hi is not None and overall_agree is not None and a_hi < overall_agree),
            imbalanced=bool(biggest > 0 and sizes[j] * IMBALANCE_RATIO <= biggest)))
    return HealthSummary(
        n_scored=n, overall_label_health_score=_f(1 - point[k]), overall_interval=(_f(1 - hi[k]), _f(1 - lo[k])),
        agreement=overall_agree, classes=tuple(rows),
        caveat=("the confident joint counts the model's own mistakes as wrong labels too: the lower the "
                "agreement, the more the share of wrong labels is overstated (benchmarks/RESULTS.md)"),
        method=(f"confident joint on {source}, calibrated to class sizes; {LEVEL:.0%} percentile "
                f"bootstrap over {n:,} scored rows ({n_boot} resamples); agreement = the most probable class is "
                f"the given one, Wilson interval; underperforming = that interval lies below the dataset's "
                f"agreement; imbalanced = at least {IMBALANCE_RATIO:g}x fewer samples than the largest class"))


def _f(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None

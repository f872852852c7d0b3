"""ROC curves, AUC and DeLong confidence intervals (DeLong, DeLong & Clarke-Pearson, Biometrics 1988).

AUC = P(score of a positive > score of a negative) + ½·P(tie). DeLong's structural components are
V10(xᵢ) = mean_j ψ(xᵢ, yⱼ) for each positive and V01(yⱼ) = mean_i ψ(xᵢ, yⱼ) for each negative, with
ψ(x, y) = 1 if x > y, ½ if x = y, 0 otherwise; Var(AUC) = S10/m + S01/n with S the sample variances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class AucResult:
    auc: float
    low: float
    high: float
    variance: float
    n_pos: int
    n_neg: int

    def as_dict(self) -> dict:
        return {"auc": self.auc, "ci95": [self.low, self.high], "variance": self.variance,
                "n_tampered": self.n_pos, "n_genuine": self.n_neg}


def _split(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=float)
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in shape")
    if not labels.any() or labels.all():
        raise ValueError("need at least one positive and one negative")
    return scores[labels], scores[~labels]


def structural_components(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(V10 per positive, V01 per negative), computed by sorting (O((m+n) log n))."""
    neg_sorted, pos_sorted = np.sort(negatives), np.sort(positives)
    below = np.searchsorted(neg_sorted, positives, side="left")
    ties = np.searchsorted(neg_sorted, positives, side="right") - below
    v10 = (below + 0.5 * ties) / len(negatives)
    above = len(positives) - np.searchsorted(pos_sorted, negatives, side="right")
    ties = np.searchsorted(pos_sorted, negatives, side="right") - np.searchsorted(pos_sorted, negatives, side="left")
    v01 = (above + 0.5 * ties) / len(positives)
    return v10, v01


def auc_score(labels, scores) -> float:
    positives, negatives = _split(labels, scores)
    return float(structural_components(positives, negatives)[0].mean())


def delong_auc(labels, scores, level: float = 0.95) -> AucResult:
    """AUC with its DeLong variance and a normal confidence interval clipped to [0, 1]."""
    positives, negatives = _split(labels, scores)
    v10, v01 = structural_components(positives, negatives)
    auc = float(v10.mean())
    s10 = v10.var(ddof=1) if len(v10) > 1 else 0.0
    s01 = v01.var(ddof=1) if len(v01) > 1 else 0.0
    variance = float(s10 / len(v10) + s01 / len(v01))
    from scipy import stats  # 1-2 s of import that tampering, which only needs robust_sigma, never pays

    half = stats.norm.ppf(0.5 + level / 2) * np.sqrt(variance)
    return AucResult(auc, float(max(0.0, auc - half)), float(min(1.0, auc + half)), variance,
                     len(positives), len(negatives))


def delong_paired_test(labels, scores_a, scores_b) -> tuple[float, float]:
    """Two detectors scored on the same samples: (AUC_a − AUC_b, two-sided p-value) by DeLong's test."""
    pos_a, neg_a = _split(labels, scores_a)
    pos_b, neg_b = _split(labels, scores_b)
    (v10_a, v01_a), (v10_b, v01_b) = structural_components(pos_a, neg_a), structural_components(pos_b, neg_b)
    v10, v01 = np.stack([v10_a, v10_b]), np.stack([v01_a, v01_b])
    cov = np.cov(v10) / v10.shape[1] + np.cov(v01) / v01.shape[1]
    diff = float(v10[0].mean() - v10[1].mean())
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 0:
        return diff, 1.0 if diff == 0 else 0.0
    from scipy import stats

    return diff, float(2 * stats.norm.sf(abs(diff) / np.sqrt(var)))


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate, thresholds), from (0, 0) to (1, 1); score ≥ threshold is positive."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=float)
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(labels)[last_of_value]
    fps = (last_of_value + 1) - tps
    tpr = np.r_[0.0, tps / max(1, labels.sum())]
    fpr = np.r_[0.0, fps / max(1, (~labels).sum())]
    return fpr, tpr, np.r_[np.inf, scores[last_of_value]]


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray, str]], path, title: str = "") -> None:
    """One ROC figure with a curve per entry {label: (fpr, tpr, legend text)}; written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from medfake.io.atomic import atomic_file

    figure = Figure(figsize=(4.5, 4.5), dpi=110)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
    for fpr, tpr, legend in curves.values():
        ax.step(fpr, tpr, where="post", lw=1.5, label=legend)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    with atomic_file(path, overwrite=True) as tmp:
        figure.savefig(tmp, format="png")


MAD_TO_SIGMA = 1.4826  # σ of a normal distribution per unit of median absolute deviation


def robust_sigma(values) -> float:
    """σ of a normal sample from its median absolute deviation (1.4826·MAD): blind to a few outliers.

    The deviations are taken in the values' own precision (float32 maps stay float32), as the detectors did
    before this helper existed, so their results did not move by a bit."""
    values = np.asarray(values).ravel()
    if values.size == 0:
        return float("nan")
    return MAD_TO_SIGMA * float(np.median(np.abs(values - np.median(values))))

"""Detection metrics as the papers report them: a video's score is the mean of its frames'
uncalibrated p_fake; AUROC, AP, EER (brentq on the ROC), TPR at fixed FPRs and accuracy over
videos (scikit-learn, scipy), with bootstrap intervals over videos."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from engines.errors import UserError

FPR_POINTS = (0.001, 0.01, 0.05)
BOOTSTRAP_ROUNDS = 1000


class MetricsError(UserError, ValueError):
    """Metrics asked of data that cannot give them (e.g. one class only)."""


def video_means(frame_scores: np.ndarray, owners: np.ndarray, videos: int) -> np.ndarray:
    """Per video number 0..videos-1 the mean of its frames' scores (NaN for a video with none)."""
    sums = np.bincount(owners, weights=frame_scores, minlength=videos)
    counts = np.bincount(owners, minlength=videos)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


@dataclass(frozen=True)
class RankingMetrics:
    auroc: float
    ap: float
    n: int
    positives: int

    def as_dict(self) -> dict[str, float | int]:
        return {"auroc": self.auroc, "ap": self.ap, "n": self.n, "positives": self.positives}


def _checked(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    keep = np.isfinite(scores)
    labels, scores = labels[keep], scores[keep]
    if len(np.unique(labels)) < 2:
        raise MetricsError(
            f"AUROC and AP need real and fake videos; got {int((labels == 0).sum())} real and "
            f"{int((labels == 1).sum())} fake"
        )
    return labels, scores


def ranking_metrics(labels: np.ndarray, scores: np.ndarray) -> RankingMetrics:
    """AUROC and AP of ``scores`` against ``labels`` (1 = fake)."""
    labels, scores = _checked(labels, scores)
    return RankingMetrics(
        float(roc_auc_score(labels, scores)),
        float(average_precision_score(labels, scores)),
        len(labels),
        int(labels.sum()),
    )


def equal_error_rate(labels: np.ndarray, scores: np.ndarray) -> float:
    """The FPR at which FPR = 1 - TPR, found with brentq on the interpolated ROC."""
    labels, scores = _checked(labels, scores)
    fpr, tpr, _ = roc_curve(labels, scores)
    tpr_at = interp1d(fpr, tpr)
    return float(brentq(lambda x: 1.0 - x - float(tpr_at(x)), 0.0, 1.0))


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, target: float) -> float:
    """TPR at ``target`` FPR, linearly interpolated on the ROC."""
    labels, scores = _checked(labels, scores)
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.interp(target, fpr, tpr))


def accuracy(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """Share of videos on the right side of ``threshold`` (>= threshold: fake)."""
    labels, scores = _checked(labels, scores)
    return float(np.mean((scores >= threshold) == (labels == 1)))


def video_report(
    labels: np.ndarray, scores: np.ndarray, *, threshold: float = 0.5
) -> dict[str, float | int | dict[str, float]]:
    """Every video-level number of the papers' protocol, from the per-video scores."""
    ranking = ranking_metrics(labels, scores)
    return {
        "auroc": ranking.auroc,
        "ap": ranking.ap,
        "eer": equal_error_rate(labels, scores),
        "tpr_at_fpr": {str(p): tpr_at_fpr(labels, scores, p) for p in FPR_POINTS},
        "accuracy_at_0.5": accuracy(labels, scores, 0.5),
        "accuracy_at_threshold": accuracy(labels, scores, threshold),
        "threshold": threshold,
        "n": ranking.n,
        "fake": ranking.positives,
    }


def bootstrap_intervals(
    labels: np.ndarray, scores: np.ndarray, *, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0,
    names: Sequence[str] = ("auroc", "ap", "eer"),
) -> dict[str, list[float]]:
    """95% percentile intervals over videos resampled with replacement (resamples with one
    class only are drawn again)."""
    labels, scores = _checked(labels, scores)
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {name: [] for name in names}
    functions = {
        "auroc": lambda y, s: float(roc_auc_score(y, s)),
        "ap": lambda y, s: float(average_precision_score(y, s)),
        "eer": equal_error_rate,
    }
    n = len(labels)
    drawn = 0
    while drawn < rounds:
        pick = rng.integers(0, n, n)
        y, s = labels[pick], scores[pick]
        if y.min() == y.max():
            continue
        drawn += 1
        for name in names:
            values[name].append(functions[name](y, s))
    return {name: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
            for name, v in values.items()}

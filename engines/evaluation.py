"""Video-level detection metrics as the papers report them: a video's score is the mean of its
frames' uncalibrated p_fake; AUROC and AP over videos (scikit-learn)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


class MetricsError(ValueError):
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


def ranking_metrics(labels: np.ndarray, scores: np.ndarray) -> RankingMetrics:
    """AUROC and AP of ``scores`` against ``labels`` (1 = fake)."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    keep = np.isfinite(scores)
    labels, scores = labels[keep], scores[keep]
    if len(np.unique(labels)) < 2:
        raise MetricsError(
            f"AUROC and AP need real and fake videos; got {int((labels == 0).sum())} real and "
            f"{int((labels == 1).sum())} fake"
        )
    return RankingMetrics(
        float(roc_auc_score(labels, scores)),
        float(average_precision_score(labels, scores)),
        len(labels),
        int(labels.sum()),
    )

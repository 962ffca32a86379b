"""A detector on a prepared crop set, as the papers evaluate: per video the mean of the
uncalibrated softmax p_fake of its frames' largest face; video-level ranking metrics with
bootstrap intervals, frame-level AUROC, the calibrated ECE, and a per-manipulation breakdown
(each manipulation's fakes against all reals)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.calibrated import CalibratedScorer
from engines.calibration import expected_calibration_error
from engines.metrics import bootstrap_intervals, ranking_metrics, video_means, video_report
from engines.training.crops import PreparedSet, PreparedVideo

SCORE_CHUNK = 512


@dataclass(frozen=True)
class PreparedScores:
    """Every crop of a split through one scorer."""

    videos: list[PreparedVideo]
    logits: np.ndarray
    p_fake: np.ndarray
    """Calibrated, per crop."""
    raw_p_fake: np.ndarray
    """Uncalibrated softmax, per crop."""
    owners: np.ndarray
    """Per crop the number of its video in ``videos``."""

    @property
    def video_labels(self) -> np.ndarray:
        return np.array([v.target for v in self.videos])

    @property
    def frame_labels(self) -> np.ndarray:
        return self.video_labels[self.owners]

    def video_scores(self) -> np.ndarray:
        return video_means(self.raw_p_fake, self.owners, len(self.videos))


def score_prepared(
    prepared: PreparedSet, split: str, scorer: CalibratedScorer,
    progress: Callable[[int, int], None] | None = None,
) -> PreparedScores:
    """Score every crop of ``split`` (videos without a face are left out); ``progress`` gets
    the videos done and their number after each one (ViT-L/14 on a CPU takes minutes)."""
    videos = prepared.split(split)
    if not videos:
        raise ValueError(f"{prepared.root} has no {split!r} videos with a face")
    logits, p_fake, raw, owners = [], [], [], []
    for number, video in enumerate(videos):
        crops = prepared.load(video).crops
        for start in range(0, len(crops), SCORE_CHUNK):
            scores = scorer.score(crops[start : start + SCORE_CHUNK])
            logits.append(scores.logits)
            p_fake.append(scores.p_fake)
            raw.append(scores.raw_p_fake)
            owners.append(np.full(len(scores.p_fake), number, np.int64))
        if progress is not None:
            progress(number + 1, len(videos))
    return PreparedScores(videos, np.concatenate(logits), np.concatenate(p_fake),
                          np.concatenate(raw), np.concatenate(owners))


def evaluate(
    scores: PreparedScores, *, threshold: float = 0.5, bootstrap_rounds: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The report ``dfstream eval --json`` prints."""
    labels = scores.video_labels
    per_video = scores.video_scores()
    frame = ranking_metrics(scores.frame_labels, scores.raw_p_fake)
    manipulations: dict[str, Any] = {}
    for name in sorted({v.manipulation for v in scores.videos if v.label == "fake"}):
        keep = np.array([v.label == "real" or v.manipulation == name for v in scores.videos])
        metrics = ranking_metrics(labels[keep], per_video[keep])
        manipulations[name or "unnamed"] = {"auroc": metrics.auroc, "ap": metrics.ap,
                                            "fake_videos": metrics.positives}
    return {
        "videos_evaluated": len(scores.videos),
        "crops": len(scores.raw_p_fake),
        "video": {**video_report(labels, per_video, threshold=threshold),
                  "bootstrap_95": bootstrap_intervals(labels, per_video,
                                                      rounds=bootstrap_rounds, seed=seed)},
        "frame": {"auroc": frame.auroc, "ap": frame.ap, "n": frame.n},
        "ece": expected_calibration_error(scores.p_fake, scores.frame_labels),
        "ece_uncalibrated": expected_calibration_error(scores.raw_p_fake, scores.frame_labels),
        "per_manipulation": manipulations,
        "videos": [
            {"id": v.id, "label": v.target, "p_fake": float(per_video[i]),
             "frames": int((scores.owners == i).sum()), "manipulation": v.manipulation}
            for i, v in enumerate(scores.videos)
        ],
    }

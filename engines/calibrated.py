"""A crop scorer with its calibration behind it: one call gives raw logits and calibrated p_fake.

Calibration belongs to the detector bundle, so it travels with the scorer instead of beside it:
no caller pairs the two by hand, and every path (live, ``score``, training, evaluation) gets the
same p_fake for the same crop. The raw logits stay available because evaluation follows the
papers on uncalibrated softmax scores (calibration can reorder video means).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from engines.calibration import Calibrator
from engines.interfaces import CROP_SIZE, CropScorer


@dataclass(frozen=True)
class CropScores:
    """Scores of N crops."""

    logits: np.ndarray
    """(N, 2) float32 head outputs, class 1 fake."""
    p_fake: np.ndarray
    """(N,) float64 calibrated probability of fake."""

    @property
    def raw_p_fake(self) -> np.ndarray:
        """(N,) float64 uncalibrated softmax p_fake (what the papers average per video)."""
        return special.softmax(self.logits.astype(np.float64), axis=1)[:, 1]


class CalibratedScorer:
    """Scores any number of crops in chunks of the engine's ``max_batch``, then calibrates."""

    def __init__(self, scorer: CropScorer, calibrator: Calibrator) -> None:
        self.scorer = scorer
        self.calibrator = calibrator

    @property
    def max_batch(self) -> int:
        return self.scorer.max_batch

    def score(self, crops: np.ndarray) -> CropScores:
        """(N, 224, 224, 3) uint8 RGB crops -> their logits and calibrated p_fake."""
        if len(crops) == 0:
            return CropScores(np.empty((0, 2), np.float32), np.empty(0, np.float64))
        step = self.scorer.max_batch
        logits = np.concatenate(
            [self.scorer.score(crops[i : i + step]) for i in range(0, len(crops), step)]
        ).astype(np.float32, copy=False)
        return CropScores(logits, self.calibrator.p_fake(logits))

    def warm_up(self) -> None:
        """One call, so the first real crop does not pay for lazy initialisation."""
        self.scorer.score(np.zeros((1, CROP_SIZE, CROP_SIZE, 3), np.uint8))

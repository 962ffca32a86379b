"""A crop scorer with its calibration behind it: one call gives raw logits and calibrated p_fake.

Calibration belongs to the detector bundle, so it travels with the scorer instead of beside it:
no caller pairs the two by hand, and every path (live, ``score``, training, evaluation) gets the
same p_fake for the same crop. The raw logits stay available because evaluation follows the
papers on uncalibrated softmax scores (calibration can reorder video means).

It also absorbs a GPU running out of memory: a chunk that raises ``torch.OutOfMemoryError`` is
retried at half the size (down to one crop), and after OOM_RECOVERY_CHUNKS chunks without one
the size doubles again towards the engine's ``max_batch``, so a transient squeeze (another
process on the GPU, a fragmented allocator) costs throughput for a while, never frames.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special

from engines.calibration import Calibrator
from engines.interfaces import CROP_SIZE, CropScorer

log = logging.getLogger(__name__)

OOM_RECOVERY_CHUNKS = 200
"""Chunks scored without running out of memory before the chunk size is doubled again."""


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
        self.chunk = scorer.max_batch
        """Crops per engine call now: ``max_batch``, less after running out of memory."""
        self.out_of_memory = 0
        """How often a chunk ran out of memory (and was retried smaller)."""
        self._calm = 0

    @property
    def max_batch(self) -> int:
        return self.scorer.max_batch

    def score(self, crops: np.ndarray) -> CropScores:
        """(N, 224, 224, 3) uint8 RGB crops -> their logits and calibrated p_fake."""
        if len(crops) == 0:
            return CropScores(np.empty((0, 2), np.float32), np.empty(0, np.float64))
        parts, start = [], 0
        while start < len(crops):
            step = self.chunk
            try:
                parts.append(self.scorer.score(crops[start : start + step]))
            except torch.OutOfMemoryError:
                if step == 1:
                    raise
                self._shrink(step)
                continue
            start += step
            self._settle()
        logits = np.concatenate(parts).astype(np.float32, copy=False)
        return CropScores(logits, self.calibrator.p_fake(logits))

    def _shrink(self, step: int) -> None:
        self.chunk, self._calm = max(1, step // 2), 0
        self.out_of_memory += 1
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.warning("the scorer ran out of memory on %d crops; scoring %d at a time for a while",
                    step, self.chunk)

    def _settle(self) -> None:
        if self.chunk >= self.scorer.max_batch:
            return
        self._calm += 1
        if self._calm >= OOM_RECOVERY_CHUNKS:
            self.chunk, self._calm = min(self.scorer.max_batch, self.chunk * 2), 0

    def warm_up(self) -> None:
        """One call, so the first real crop does not pay for lazy initialisation."""
        self.scorer.score(np.zeros((1, CROP_SIZE, CROP_SIZE, 3), np.uint8))

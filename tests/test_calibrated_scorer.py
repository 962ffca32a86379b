"""The calibrated scorer under memory pressure: an engine that raises torch.OutOfMemoryError
above a batch size (as a GPU does) costs throughput for a while, never crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines import calibrated
from engines.calibrated import CalibratedScorer
from engines.calibration import Calibrator
from engines.interfaces import CROP_SIZE


class Cramped:
    """A real crop scorer (a fixed function of the pixels) that runs out of memory on more
    than ``fits`` crops at once."""

    def __init__(self, max_batch: int, fits: int) -> None:
        self.max_batch = max_batch
        self.fits = fits
        self.calls: list[int] = []

    def score(self, crops: np.ndarray) -> np.ndarray:
        self.calls.append(len(crops))
        if len(crops) > self.fits:
            raise torch.OutOfMemoryError(f"CUDA out of memory ({len(crops)} crops)")
        mean = crops.reshape(len(crops), -1).mean(1) / 255.0
        return np.stack([1 - mean, mean], 1).astype(np.float32)


def crops(n: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (n, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)


def test_out_of_memory_halves_the_chunk_and_loses_no_crop() -> None:
    batch = crops(20)
    roomy = CalibratedScorer(Cramped(32, fits=32), Calibrator()).score(batch)
    engine = Cramped(32, fits=5)
    scorer = CalibratedScorer(engine, Calibrator())
    cramped = scorer.score(batch)
    assert np.array_equal(cramped.logits, roomy.logits)  # every crop, in order
    assert scorer.chunk == 4 and scorer.out_of_memory == 3  # 32 -> 16 -> 8 -> 4
    assert engine.calls[:4] == [20, 16, 8, 4]


def test_the_chunk_grows_back_once_memory_is_there_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(calibrated, "OOM_RECOVERY_CHUNKS", 3)
    engine = Cramped(16, fits=4)
    scorer = CalibratedScorer(engine, Calibrator())
    scorer.score(crops(8))
    assert scorer.chunk == 4
    engine.fits = 16  # the squeeze is over
    for _ in range(6):
        scorer.score(crops(16))
    assert scorer.chunk == 16


def test_a_single_crop_that_does_not_fit_is_an_error() -> None:
    scorer = CalibratedScorer(Cramped(8, fits=0), Calibrator())
    with pytest.raises(torch.OutOfMemoryError):
        scorer.score(crops(2))

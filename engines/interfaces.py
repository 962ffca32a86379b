"""The two small contracts between the service and its models: a face detector, a crop scorer.

A new backend (TensorRT, ONNX Runtime, compiled torch) implements one of these and nothing in
the service changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

CROP_SIZE = 224
"""Side of the square uint8 RGB crops every scorer takes."""


@dataclass(frozen=True)
class FaceDetection:
    """One face in one image, in that image's pixel coordinates."""

    box: np.ndarray
    """(4,) float32: x1, y1, x2, y2."""
    score: float
    landmarks: np.ndarray
    """(5, 2) float32: left eye, right eye, nose, left mouth corner, right mouth corner."""

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])


class FaceDetector(Protocol):
    """Finds faces in RGB uint8 images of any sizes, all in one batched call."""

    name: str
    device: str

    def detect(self, images: Sequence[np.ndarray]) -> list[list[FaceDetection]]:
        """One list of detections per image, highest score first."""
        ...


class CropScorer(Protocol):
    """Scores aligned face crops: (N, 224, 224, 3) uint8 RGB in, (N, 2) float32 logits out.

    Class 1 is fake. Normalisation happens inside the engine, so only uint8 crosses to it.
    """

    name: str
    device: str
    max_batch: int

    def score(self, crops: np.ndarray) -> np.ndarray:
        """Logits for up to ``max_batch`` crops (a larger N is split internally)."""
        ...

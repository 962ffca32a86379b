"""The two crop styles side by side on a real face: pixel differences between the fast crop
and the authors' reference crop of the same detections, their cost, and (with a bundle) how
far the detector's p_fake moves between them.

The face is the astronaut photograph (a real face, public domain), at several sizes, places
and in-plane rotations on a 1280x720 frame.
"""

from __future__ import annotations

import time
from typing import Any

import cv2
import numpy as np

from engines.align import plan_crop
from engines.calibrated import CalibratedScorer
from engines.interfaces import CROP_SIZE, FaceDetector
from stream.samples import FacePlacement, compose_frame

SCALES = (0.35, 0.6, 1.0)
ANGLES = (-15.0, 0.0, 10.0)


def sample_frames() -> list[np.ndarray]:
    """The astronaut at each scale and angle, rotated about the frame centre."""
    frames = []
    for scale in SCALES:
        for angle in ANGLES:
            frame = compose_frame(1280, 720, FacePlacement(400, 60, scale))
            rotation = cv2.getRotationMatrix2D((640, 360), angle, 1.0)
            frames.append(cv2.warpAffine(frame, rotation, (1280, 720)))
    return frames


def _timed_crops(image: np.ndarray, detections: list[Any], style: str,
                 margin: float) -> tuple[list[np.ndarray | None], float]:
    started = time.perf_counter()
    crops: list[np.ndarray | None] = []
    for det in detections:
        plan = plan_crop(det.box, det.landmarks, det.score, size=CROP_SIZE, margin=margin,
                         style=style)  # type: ignore[arg-type]
        crops.append(None if plan is None else plan.apply(image))
    return crops, time.perf_counter() - started


def run_crop_comparison(
    detector: FaceDetector, *, margin: float = 1.3, scorer: CalibratedScorer | None = None
) -> dict[str, Any]:
    fast_crops, reference_crops = [], []
    fast_s = reference_s = 0.0
    for image in sample_frames():
        detections = [d for d in detector.detect([image])[0] if d.score >= 0.5]
        if not detections:
            continue
        top = [max(detections, key=lambda d: d.width * d.height)]
        fast, t_fast = _timed_crops(image, top, "fast", margin)
        reference, t_reference = _timed_crops(image, top, "reference", margin)
        fast_s += t_fast
        reference_s += t_reference
        for a, b in zip(fast, reference, strict=True):
            if a is not None and b is not None:
                fast_crops.append(a)
                reference_crops.append(b)
    if not fast_crops:
        raise RuntimeError("the face detector found the astronaut in no sample frame")
    difference = np.abs(np.stack(fast_crops).astype(np.int16)
                        - np.stack(reference_crops).astype(np.int16))
    n = len(fast_crops)
    result: dict[str, Any] = {
        "benchmark": "crops",
        "what": "fast crop vs reference crop of the same largest detection, 224x224 RGB uint8",
        "faces": n,
        "pixel_abs_difference": {
            "mean": round(float(difference.mean()), 3),
            "p99": round(float(np.percentile(difference, 99)), 3),
            "max": int(difference.max()),
        },
        "ms_per_crop": {"fast": round(1000 * fast_s / n, 3),
                        "reference": round(1000 * reference_s / n, 3)},
        "ratio_reference_vs_fast_time": round(reference_s / fast_s, 2) if fast_s else None,
    }
    if scorer is not None:
        p_fast = scorer.score(np.stack(fast_crops)).raw_p_fake
        p_reference = scorer.score(np.stack(reference_crops)).raw_p_fake
        delta = np.abs(p_fast - p_reference)
        result["p_fake_abs_difference"] = {"mean": round(float(delta.mean()), 5),
                                           "max": round(float(delta.max()), 5)}
    return result

"""Face crops for the scorer: 5-point similarity alignment, or a plain box crop as fallback;
or the authors' reference crop (``reference_plan``).

The landmark template (fractions of the crop side, from the method) is for a tight face; the
crop keeps ``margin`` times that side around the same centre, so with margin 1.3 the eyes of
every face land on the same two pixels of the 224x224 crop.

Coordinates are those of the detector: pixel (i, j) covers [j, j + 1) x [i, i + 1), so a box
(0, 0, W, H) is the whole image. A ``CropPlan`` holds the 2x3 matrix from frame coordinates to
crop coordinates and knows which frame region it reads, so the caller converts only that region
of a full-resolution frame to RGB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from engines.interfaces import CROP_SIZE

TEMPLATE = np.array(
    [[0.34, 0.46], [0.66, 0.46], [0.50, 0.64], [0.37, 0.82], [0.63, 0.82]], dtype=np.float64
)
"""Left eye, right eye, nose, left and right mouth corners, as fractions of the crop side."""
DEFAULT_MARGIN = 1.3

_READ_PAD = 3
"""Extra source pixels read around the crop's footprint, for the interpolation kernel."""

Alignment = Literal["landmarks", "box", "none"]
"""How a crop was aligned; ``none``: no crop (a reference-style fit that failed)."""
CropStyle = Literal["fast", "reference"]

REFERENCE_WARP_SIZE = 256
"""The authors' code warps to 256x256 and lets CLIPProcessor resize that to 224."""


def template_points(size: int = CROP_SIZE, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """(5, 2) positions of the landmarks in an aligned crop of ``size`` with ``margin``."""
    if size < 1:
        raise ValueError(f"crop size must be positive, got {size}")
    if not 1.0 <= margin <= 4.0:
        raise ValueError(f"margin must lie in [1, 4], got {margin}")
    return ((TEMPLATE - 0.5) / margin + 0.5) * size


@dataclass(frozen=True)
class CropPlan:
    """How one face becomes one crop: a similarity from frame pixels to crop pixels."""

    matrix: np.ndarray
    """(2, 3) float64, frame coordinates -> crop coordinates."""
    size: int
    alignment: Alignment
    final_size: int | None = None
    """When set, the warped ``size`` crop is resized to this with PIL's bicubic filter, which
    antialiases as CLIPProcessor does; the warp then reads the frame without a prefilter."""

    @property
    def scale(self) -> float:
        """Crop pixels per frame pixel."""
        return math.sqrt(abs(float(np.linalg.det(self.matrix[:, :2]))))

    @property
    def shrink(self) -> int:
        """Integer factor the source is area-averaged by before the warp (1: none)."""
        if self.final_size is not None or self.scale <= 0:
            return 1
        return max(1, math.floor(1.0 / self.scale))

    def source_box(self) -> tuple[int, int, int, int]:
        """The frame region (x1, y1, x2, y2; x2, y2 exclusive) the crop reads, unclipped.

        Its corners lie on multiples of ``shrink``, so that a region gives the same crop as the
        whole frame.
        """
        inverse = cv2.invertAffineTransform(self.matrix)
        side = self.size
        corners = np.array([[0, 0, 1], [side, 0, 1], [0, side, 1], [side, side, 1]], np.float64)
        points = corners @ inverse.T
        k = self.shrink
        pad = _READ_PAD * k
        x1, y1 = (np.floor((points.min(axis=0) - pad) / k) * k).astype(int)
        x2, y2 = (np.ceil((points.max(axis=0) + pad) / k) * k).astype(int)
        return int(x1), int(y1), int(x2), int(y2)

    def apply(self, region: np.ndarray, x0: int = 0, y0: int = 0) -> np.ndarray:
        """The crop from ``region``, an RGB array whose top-left pixel is frame pixel (x0, y0).

        Frame pixels outside ``region`` read as black. A strong downscale first averages
        ``shrink`` x ``shrink`` blocks on the frame's grid, so the crop is not aliased (the
        scorer is sensitive to high-frequency artefacts) and a region read through
        ``source_box`` gives the same crop as the whole frame.
        """
        k = self.shrink
        if k > 1:
            skip_x, skip_y = -x0 % k, -y0 % k
            region = region[skip_y:, skip_x:]
            x0, y0 = x0 + skip_x, y0 + skip_y
            height, width = (region.shape[0] // k) * k, (region.shape[1] // k) * k
            if height >= k and width >= k:
                region = cv2.resize(
                    region[:height, :width], (width // k, height // k),
                    interpolation=cv2.INTER_AREA,
                )
            else:
                k = 1
        # Region coordinate u is frame coordinate (x0, y0) + k * u.
        matrix = self.matrix @ np.array([[k, 0, x0], [0, k, y0], [0, 0, 1]], np.float64)
        # OpenCV samples pixel centres: shift into and out of that convention.
        matrix[:, 2] += matrix[:, :2] @ np.array([0.5, 0.5]) - 0.5
        warped = cv2.warpAffine(
            np.ascontiguousarray(region), matrix, (self.size, self.size),
            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0),
        )
        if self.final_size is None or self.final_size == self.size:
            return warped
        from PIL import Image

        resized = Image.fromarray(warped).resize(
            (self.final_size, self.final_size), Image.Resampling.BICUBIC
        )
        return np.asarray(resized)


def landmark_plan(
    landmarks: np.ndarray, size: int = CROP_SIZE, margin: float = DEFAULT_MARGIN
) -> CropPlan | None:
    """The least-squares similarity taking the five landmarks to the template, or None.

    Every point counts as an inlier (a huge RANSAC threshold), so the fit is a plain least-squares
    similarity over all five, which keeps crops steady from frame to frame.
    """
    points = np.asarray(landmarks, np.float64).reshape(5, 2)
    if not np.isfinite(points).all():
        return None
    matrix, _ = cv2.estimateAffinePartial2D(
        points, template_points(size, margin), method=cv2.RANSAC,
        ransacReprojThreshold=1e9, refineIters=50,
    )
    if matrix is None or not np.isfinite(matrix).all():
        return None
    plan = CropPlan(matrix, size, "landmarks")
    return plan if plan.scale > 1e-6 else None


def reference_plan(
    landmarks: np.ndarray, size: int = CROP_SIZE, margin: float = DEFAULT_MARGIN
) -> CropPlan | None:
    """The authors' crop: a similarity fitted with LMEDS (an off landmark is dropped rather
    than bending the whole crop), warped bilinearly to 256x256 with a black border, then
    resized to ``size`` with antialiased bicubic; None when the fit fails (no box fallback)."""
    points = np.asarray(landmarks, np.float64).reshape(5, 2)
    if not np.isfinite(points).all():
        return None
    matrix, _ = cv2.estimateAffinePartial2D(
        points, template_points(REFERENCE_WARP_SIZE, margin), method=cv2.LMEDS
    )
    if matrix is None or not np.isfinite(matrix).all():
        return None
    plan = CropPlan(matrix, REFERENCE_WARP_SIZE, "landmarks", final_size=size)
    return plan if plan.scale > 1e-6 else None


def box_plan(box: np.ndarray, size: int = CROP_SIZE, margin: float = DEFAULT_MARGIN) -> CropPlan:
    """A square crop centred on the box, ``margin`` times its longer side, upright."""
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box).reshape(4))
    side = max(x2 - x1, y2 - y1, 1.0) * margin
    scale = size / side
    left, top = (x1 + x2) / 2 - side / 2, (y1 + y2) / 2 - side / 2
    matrix = np.array([[scale, 0.0, -scale * left], [0.0, scale, -scale * top]], np.float64)
    return CropPlan(matrix, size, "box")


def landmarks_reliable(
    box: np.ndarray, landmarks: np.ndarray, score: float, min_score: float
) -> bool:
    """The rule for trusting landmarks: a confident detection with every point inside its box."""
    if score < min_score:
        return False
    x1, y1, x2, y2 = np.asarray(box, np.float64).reshape(4)
    points = np.asarray(landmarks, np.float64).reshape(5, 2)
    return bool(
        np.isfinite(points).all()
        and (points[:, 0] >= x1).all() and (points[:, 0] <= x2).all()
        and (points[:, 1] >= y1).all() and (points[:, 1] <= y2).all()
    )


def plan_crop(
    box: np.ndarray,
    landmarks: np.ndarray,
    score: float,
    *,
    size: int = CROP_SIZE,
    margin: float = DEFAULT_MARGIN,
    min_landmark_score: float = 0.9,
    style: CropStyle = "fast",
) -> CropPlan | None:
    """``fast``: aligned on the landmarks when they are reliable, else the plain box crop.
    ``reference``: the authors' crop, or None when the landmarks give no similarity."""
    if style == "reference":
        return reference_plan(landmarks, size, margin)
    if landmarks_reliable(box, landmarks, score, min_landmark_score):
        plan = landmark_plan(landmarks, size, margin)
        if plan is not None:
            return plan
    return box_plan(box, size, margin)


def crop_face(
    image: np.ndarray,
    box: np.ndarray,
    landmarks: np.ndarray,
    score: float,
    *,
    size: int = CROP_SIZE,
    margin: float = DEFAULT_MARGIN,
    min_landmark_score: float = 0.9,
) -> tuple[np.ndarray, Alignment]:
    """The crop of one face from a whole RGB image, and how it was aligned."""
    plan = plan_crop(
        box, landmarks, score, size=size, margin=margin, min_landmark_score=min_landmark_score
    )
    assert plan is not None  # the fast style always has the box to fall back on
    return plan.apply(image), plan.alignment

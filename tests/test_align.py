"""5-point alignment and box crops: geometry to the pixel, region crops, the fallback rule."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engines.align import (
    TEMPLATE,
    box_plan,
    crop_face,
    landmark_plan,
    landmarks_reliable,
    plan_crop,
    template_points,
)

SIZE = 224


def similarity(angle_deg: float, scale: float, centre: tuple[float, float]) -> np.ndarray:
    matrix = cv2.getRotationMatrix2D((0.0, 0.0), angle_deg, scale)
    matrix[:, 2] = centre
    return matrix


def dotted_frame(
    landmarks: np.ndarray, shape: tuple[int, int], radius: float, seed: int = 0
) -> np.ndarray:
    """A noisy dark frame with a bright anti-aliased dot centred on each landmark."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 40, (*shape, 3)).astype(np.uint8)
    for x, y in landmarks:
        # Landmark (x, y) is a position; the pixel it falls in is centred at (x - .5, y - .5).
        cv2.circle(frame, (round((x - 0.5) * 16), round((y - 0.5) * 16)), round(radius * 16),
                   (255, 255, 255), -1, lineType=cv2.LINE_AA, shift=4)
    return frame


def dot_centres(crop: np.ndarray) -> np.ndarray:
    weight = crop[:, :, 0].astype(np.float64) * (crop[:, :, 0] > 100)
    count, labels = cv2.connectedComponents((weight > 0).astype(np.uint8))
    centres = []
    for label in range(1, count):
        ys, xs = np.nonzero(labels == label)
        w = weight[ys, xs]
        centres.append(((xs * w).sum() / w.sum() + 0.5, (ys * w).sum() / w.sum() + 0.5))
    return np.array(centres)


def test_template_with_margin() -> None:
    points = template_points(SIZE, 1.3)
    expected_left_eye = ((0.34 - 0.5) / 1.3 + 0.5) * SIZE
    assert points[0, 0] == pytest.approx(expected_left_eye)
    assert points[0, 1] == points[1, 1]  # eyes level
    np.testing.assert_allclose(template_points(SIZE, 1.0), TEMPLATE * SIZE)
    with pytest.raises(ValueError, match="margin"):
        template_points(SIZE, 0.5)


@pytest.mark.parametrize(
    ("angle", "scale", "shape"),
    [(0.0, 1.0, (480, 640)), (23.0, 1.7, (720, 1280)), (-35.0, 3.4, (1080, 1920)),
     (12.0, 0.6, (360, 640))],
)
def test_aligned_crop_puts_the_landmarks_on_the_template(
    angle: float, scale: float, shape: tuple[int, int]
) -> None:
    template = template_points(SIZE, 1.3)
    centre = (shape[1] * 0.45, shape[0] * 0.55)
    matrix = similarity(angle, scale, centre)
    landmarks = (template - SIZE / 2) @ matrix[:, :2].T + matrix[:, 2]
    frame = dotted_frame(landmarks, shape, radius=max(2.0, 1.5 * scale))
    crop, alignment = crop_face(frame, np.array([0, 0, shape[1], shape[0]]), landmarks, 0.99)
    assert alignment == "landmarks" and crop.shape == (SIZE, SIZE, 3) and crop.dtype == np.uint8
    found = dot_centres(crop)
    assert len(found) == 5
    for point in template:
        assert np.linalg.norm(found - point, axis=1).min() <= 2.0  # the bound
        assert np.linalg.norm(found - point, axis=1).min() <= 0.5  # what it achieves


def test_a_region_crop_equals_the_whole_frame_crop() -> None:
    template = template_points(SIZE, 1.3)
    for angle, scale, centre in [(15.0, 3.7, (900.0, 500.0)), (-8.0, 1.2, (60.0, 40.0)),
                                 (30.0, 0.8, (1900.0, 1000.0))]:
        matrix = similarity(angle, scale, centre)
        landmarks = (template - SIZE / 2) @ matrix[:, :2].T + matrix[:, 2]
        frame = dotted_frame(landmarks, (1080, 1920), radius=3, seed=1)
        plan = landmark_plan(landmarks)
        assert plan is not None
        x1, y1, x2, y2 = plan.source_box()
        x1c, y1c = max(0, x1), max(0, y1)
        region = frame[y1c:y2, x1c:x2]  # clipped to the frame like Frame.region_rgb
        assert region.size < frame.size
        difference = np.abs(plan.apply(region, x1c, y1c).astype(int) - plan.apply(frame))
        assert difference.max() <= 1


def test_strong_downscale_is_antialiased() -> None:
    # Fine stripes far above the crop's Nyquist rate must average out, not alias.
    stripes = np.zeros((2000, 2000, 3), np.uint8)
    stripes[:, ::2] = 255
    plan = box_plan(np.array([200.0, 200.0, 1700.0, 1700.0]))
    assert plan.shrink >= 2
    crop = plan.apply(stripes)
    inner = crop[40:180, 40:180].astype(float)
    assert abs(inner.mean() - 127.5) < 3 and inner.std() < 3


def test_box_crop_is_a_square_with_margin_around_the_box() -> None:
    box = np.array([100.0, 50.0, 180.0, 150.0])  # 80 x 100
    plan = box_plan(box, SIZE, 1.3)
    assert plan.alignment == "box"
    corners = np.array([[100.0, 50.0, 1.0], [180.0, 150.0, 1.0]]) @ plan.matrix.T
    side = 100 * 1.3
    expected = SIZE / side * np.array([[100 - (140 - side / 2), 50 - (100 - side / 2)],
                                       [180 - (140 - side / 2), 150 - (100 - side / 2)]])
    np.testing.assert_allclose(corners, expected)
    assert plan.scale == pytest.approx(SIZE / side)


def test_the_fallback_rule() -> None:
    box = np.array([100.0, 100.0, 200.0, 220.0])
    good = np.array([[130, 150], [170, 150], [150, 175], [135, 200], [165, 200]], np.float64)
    assert landmarks_reliable(box, good, 0.99, 0.9)
    assert not landmarks_reliable(box, good, 0.85, 0.9)
    outside = good.copy()
    outside[1, 0] = 230
    assert not landmarks_reliable(box, outside, 0.99, 0.9)
    assert not landmarks_reliable(box, np.full((5, 2), np.nan), 0.99, 0.9)
    assert plan_crop(box, good, 0.99).alignment == "landmarks"
    assert plan_crop(box, good, 0.85, min_landmark_score=0.9).alignment == "box"
    assert plan_crop(box, outside, 0.99).alignment == "box"
    degenerate = np.full((5, 2), 150.0)
    assert landmark_plan(degenerate) is None
    assert plan_crop(box, degenerate, 0.99).alignment == "box"


def test_crop_near_the_frame_edge_is_filled_black() -> None:
    frame = np.full((100, 100, 3), 200, np.uint8)
    crop, _ = crop_face(frame, np.array([0.0, 0.0, 40.0, 40.0]), np.zeros((5, 2)), 0.0)
    assert crop[0, 0].tolist() == [0, 0, 0]  # outside the frame
    assert crop[SIZE // 2, SIZE // 2].tolist() == [200, 200, 200]


def test_the_reference_crop_puts_the_landmarks_on_the_template_and_drops_an_outlier() -> None:
    from engines.align import reference_plan

    target = template_points(256)
    # Landmarks of a face in the frame: the template moved, scaled and rotated.
    angle = np.deg2rad(12.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    frame_points = (target - 128) @ rotation.T * 0.7 + np.array([300.0, 200.0])
    off = frame_points.copy()
    off[2] += 40.0  # the nose badly off: LMEDS ignores it, a least-squares fit would not
    for points in (frame_points, off):
        plan = reference_plan(points)
        assert plan is not None and plan.size == 256 and plan.final_size == 224
        mapped = np.c_[points, np.ones(5)] @ plan.matrix.T
        eyes_and_mouth = [0, 1, 3, 4]
        np.testing.assert_allclose(mapped[eyes_and_mouth], target[eyes_and_mouth], atol=0.5)
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    crop = reference_plan(frame_points).apply(image)  # type: ignore[union-attr]
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    assert reference_plan(np.full((5, 2), np.nan)) is None  # no box fallback

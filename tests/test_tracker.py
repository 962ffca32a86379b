"""IoU tracker: stable ids on the sample videos' real motion, confirmation, ageing, streams."""

from __future__ import annotations

import numpy as np
import pytest

from stream.samples import face_placement
from stream.tracker import IoUTracker, StreamTrackers, box_iou


def path_boxes(width: int, height: int, fps: float, seconds: float = 2.0,
               video_fps: int = 30) -> list[tuple[float, np.ndarray]]:
    """The face boxes of ``write_face_video`` sampled at ``fps``: (time, box)."""
    count = round(seconds * video_fps)
    step = max(1, round(video_fps / fps))
    return [(index / video_fps,
             np.array(face_placement(index, count, width, height).face_box()))
            for index in range(0, count, step)]


def shifted(box: np.ndarray, dx: float) -> np.ndarray:
    return box + np.array([dx, 0.0, dx, 0.0])


def test_box_iou() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], float)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]], float)
    np.testing.assert_allclose(box_iou(a, b), [[1 / 3, 0], [0, 0]])


@pytest.mark.parametrize("fps", [30, 10, 5])
@pytest.mark.parametrize(("width", "height"), [(640, 360), (1280, 720)])
def test_the_sample_videos_face_keeps_one_id(width: int, height: int, fps: float) -> None:
    tracker = IoUTracker(iou_threshold=0.3, min_hits=2, max_age_s=1.0)
    ids = set()
    for index, (t, box) in enumerate(path_boxes(width, height, fps)):
        (match,) = tracker.update(box[None], t)
        ids.add(match.track_id)
        assert match.confirmed == (index >= 1)
    assert ids == {1}


def test_prediction_keeps_a_fast_face_that_plain_iou_would_lose() -> None:
    tracker = IoUTracker(iou_threshold=0.3, min_hits=1, max_age_s=1.0)
    box = np.array([0.0, 0.0, 100.0, 100.0])
    x, step = 0.0, 30.0
    for frame in range(8):
        moved = shifted(box, x)
        (match,) = tracker.update(moved[None], frame * 0.2)
        assert match.track_id == 1, f"lost at frame {frame}"
        x += step
        step = min(step * 1.5, 65.0)  # ends at 65 px per sample: plain IoU 0.21 < 0.3
    assert box_iou(box, shifted(box, 65))[0, 0] < 0.3


def test_a_one_off_detection_never_gets_confirmed_or_reused() -> None:
    tracker = IoUTracker(min_hits=2, max_age_s=5.0)
    first = tracker.update(np.array([[0, 0, 50, 50]], float), 0.0)[0]
    assert not first.confirmed
    assert tracker.update(np.empty((0, 4)), 0.2) == []
    again = tracker.update(np.array([[0, 0, 50, 50]], float), 0.4)[0]
    assert again.track_id != first.track_id  # the tentative track was dropped at its miss


def test_a_confirmed_track_survives_a_gap_shorter_than_max_age() -> None:
    tracker = IoUTracker(min_hits=2, max_age_s=1.0)
    box = np.array([[100, 100, 180, 200]], float)
    tracker.update(box, 0.0)
    assert tracker.update(box, 0.2)[0].confirmed
    for t in (0.4, 0.6, 1.0):
        assert tracker.update(np.empty((0, 4)), t) == []
    assert tracker.update(box, 1.15)[0].track_id == 1  # 0.95 s since last seen
    for t in (1.4, 2.0):
        tracker.update(np.empty((0, 4)), t)
    assert tracker.update(box, 2.3)[0].track_id == 2  # 1.15 s: expired


def test_two_faces_keep_their_ids_whatever_the_order() -> None:
    tracker = IoUTracker(min_hits=1)
    left, right = np.array([10, 10, 90, 110], float), np.array([400, 10, 480, 110], float)
    first = [m.track_id for m in tracker.update(np.stack([left, right]), 0.0)]
    for i in range(1, 6):
        shift = np.array([3 * i, 0, 3 * i, 0], float)
        swapped = tracker.update(np.stack([right + shift, left + shift]), i * 0.2)
        assert [m.track_id for m in swapped] == first[::-1]


def test_a_clock_that_goes_back_starts_new_tracks() -> None:
    tracker = IoUTracker(min_hits=1)
    box = np.array([[0, 0, 50, 50]], float)
    assert tracker.update(box, 10.0)[0].track_id == 1
    assert tracker.update(box, 0.0)[0].track_id == 2  # a reconnect or a looped file


def test_streams_have_their_own_ids() -> None:
    trackers = StreamTrackers(min_hits=1)
    box = np.array([[0, 0, 50, 50]], float)
    assert trackers.update("a", box, 0.0)[0].track_id == 1
    assert trackers.update("b", box + 300, 0.0)[0].track_id == 1
    assert trackers.update("a", box, 0.2)[0].track_id == 1
    trackers.forget("a")
    assert "a" not in trackers and "b" in trackers
    assert trackers.update("a", box, 0.4)[0].track_id == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [({"iou_threshold": 0.0}, "iou_threshold"), ({"min_hits": 0}, "min_hits"),
     ({"max_age_s": 0.0}, "max_age_s"), ({"max_speed": -1.0}, "max_speed")],
)
def test_bad_options_are_refused(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IoUTracker(**options)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        StreamTrackers(**options)  # type: ignore[arg-type]


def test_a_jump_beyond_max_speed_is_a_new_face() -> None:
    tracker = IoUTracker(min_hits=1, max_speed=10.0)
    box = np.array([[0.0, 0.0, 50.0, 50.0]])
    tracker.update(box, 0.0)
    # 2 face sizes in 0.25 s = 8 sizes/s: within the gate although IoU is 0.
    assert tracker.update(shifted(box, 100), 0.25)[0].track_id == 1
    # x=-100 is 16 sizes/s from the last box and 24 from the predicted one (x=200).
    assert tracker.update(shifted(box, -100), 0.5)[0].track_id == 2


def test_iou_only_when_distance_matching_is_off() -> None:
    tracker = IoUTracker(min_hits=1, max_speed=0.0)
    box = np.array([[0.0, 0.0, 50.0, 50.0]])
    tracker.update(box, 0.0)
    assert tracker.update(shifted(box, 60), 0.2)[0].track_id == 2


def test_distance_gate_scales_with_time_and_refuses_other_sizes() -> None:
    tracker = IoUTracker(min_hits=1, max_speed=10.0)
    box = np.array([[0.0, 0.0, 50.0, 50.0]])
    tracker.update(box, 0.0)
    assert tracker.update(shifted(box, 200), 0.1)[0].track_id == 2  # 40 sizes/s
    tracker = IoUTracker(min_hits=1, max_speed=10.0)
    tracker.update(box, 0.0)
    assert tracker.update(np.array([[80.0, 0.0, 200.0, 120.0]]), 0.25)[0].track_id == 2

"""IoU face tracker: stable track ids per stream, on stream time.

Analysis samples each stream at a few frames per second, so ages are in seconds of the frames'
presentation time, not in frame counts, and a track's box is carried forward by its measured
velocity before it is matched (a face moves far between samples at 5 fps). Where IoU with the
predicted or the last box fails (no velocity yet, or a turn), a detection of similar size within
``max_speed`` face sizes per second of either centre still continues the track. Matching
is optimal (Hungarian), IoU matches preferred to distance matches. A new
track is tentative until ``min_hits`` detections; a tentative track that misses once is dropped
(one-off false positives never get a confirmed id); a confirmed one survives ``max_age_s``
without detections.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

_NO_MATCH = 1e9
_SIZE_CHANGE = 1.5
"""Most a face's size may change between a track's first two detections."""


def _areas(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def _centres(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, :2] + boxes[:, 2:]) / 2


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of boxes x1 y1 x2 y2."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    left = np.maximum(a[:, None, 0], b[None, :, 0])
    top = np.maximum(a[:, None, 1], b[None, :, 1])
    right = np.minimum(a[:, None, 2], b[None, :, 2])
    bottom = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


@dataclass
class Track:
    id: int
    box: np.ndarray
    first_seen: float
    last_seen: float
    hits: int = 1
    confirmed: bool = False
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))
    """Box corners' speed in pixels per second."""

    def predicted(self, t: float) -> np.ndarray:
        return self.box + self.velocity * max(0.0, t - self.last_seen)


@dataclass(frozen=True)
class TrackMatch:
    """The track a detection was given."""

    track_id: int
    confirmed: bool
    hits: int


class IoUTracker:
    """Tracks of one stream."""

    def __init__(
        self,
        iou_threshold: float = 0.3,
        min_hits: int = 2,
        max_age_s: float = 1.0,
        max_speed: float = 15.0,
        velocity_smoothing: float = 0.5,
        first_id: int = 1,
    ) -> None:
        if not 0 < iou_threshold < 1:
            raise ValueError(f"iou_threshold must lie in (0, 1), got {iou_threshold}")
        if min_hits < 1:
            raise ValueError(f"min_hits must be at least 1, got {min_hits}")
        if max_age_s <= 0:
            raise ValueError(f"max_age_s must be positive, got {max_age_s}")
        if max_speed < 0:
            raise ValueError(f"max_speed must not be negative, got {max_speed}")
        if not 0 <= velocity_smoothing < 1:
            raise ValueError(f"velocity_smoothing must lie in [0, 1), got {velocity_smoothing}")
        self.iou_threshold = iou_threshold
        self.min_hits = min_hits
        self.max_age_s = max_age_s
        self.max_speed = max_speed
        self.velocity_smoothing = velocity_smoothing
        self._next_id = first_id
        self._tracks: list[Track] = []
        self._last_t: float | None = None

    @property
    def tracks(self) -> list[Track]:
        return list(self._tracks)

    def update(self, boxes: np.ndarray, t: float) -> list[TrackMatch]:
        """Assign each box (N, 4) seen at stream time ``t`` (seconds) to a track."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if self._last_t is not None and t < self._last_t:
            # The stream's clock went back (a reconnect or a looped file): start afresh.
            self._tracks = []
        self._last_t = t
        self._tracks = [tr for tr in self._tracks if t - tr.last_seen <= self.max_age_s]

        assigned: dict[int, Track] = {}
        if self._tracks and len(boxes):
            cost = self._costs(boxes, t)
            rows, cols = linear_sum_assignment(cost)
            for row, col in zip(rows, cols, strict=True):
                if cost[row, col] < _NO_MATCH:
                    assigned[int(col)] = self._tracks[row]

        matched_ids = {id(tr) for tr in assigned.values()}
        # A tentative track that was not seen again is dropped at once.
        survivors = [tr for tr in self._tracks if id(tr) in matched_ids or tr.confirmed]
        results = []
        for index, box in enumerate(boxes):
            track = assigned.get(index)
            if track is None:
                track = Track(self._next_id, box.copy(), first_seen=t, last_seen=t)
                self._next_id += 1
                survivors.append(track)
            else:
                self._observe(track, box, t)
            track.confirmed = track.confirmed or track.hits >= self.min_hits
            results.append(TrackMatch(track.id, track.confirmed, track.hits))
        self._tracks = survivors
        return results

    def _costs(self, boxes: np.ndarray, t: float) -> np.ndarray:
        """(tracks, boxes): 1 - IoU for IoU matches, 1 + distance in face sizes for distance
        matches, ``_NO_MATCH`` otherwise."""
        # A face is where its motion predicts, or (after a turn) still near where it was.
        predicted = np.stack([tr.predicted(t) for tr in self._tracks])
        last = np.stack([tr.box for tr in self._tracks])
        iou = np.maximum(box_iou(predicted, boxes), box_iou(last, boxes))
        cost = np.where(iou >= self.iou_threshold, 1.0 - iou, _NO_MATCH)
        sizes = np.sqrt(_areas(last))[:, None]
        det_sizes = np.sqrt(_areas(boxes))[None, :]
        offsets = np.minimum(
            np.linalg.norm(_centres(predicted)[:, None, :] - _centres(boxes)[None], axis=2),
            np.linalg.norm(_centres(last)[:, None, :] - _centres(boxes)[None], axis=2),
        )
        distance = offsets / np.maximum(sizes, 1e-6)
        elapsed = np.array([max(0.0, t - tr.last_seen) for tr in self._tracks])[:, None]
        ratio = det_sizes / np.maximum(sizes, 1e-6)
        near = (
            (distance <= self.max_speed * elapsed)
            & (ratio >= 1 / _SIZE_CHANGE) & (ratio <= _SIZE_CHANGE)
        )
        return np.where((cost == _NO_MATCH) & near, 1.0 + distance, cost)

    def _observe(self, track: Track, box: np.ndarray, t: float) -> None:
        dt = t - track.last_seen
        if dt > 0:
            measured = (box - track.box) / dt
            if track.hits == 1:
                track.velocity = measured
            else:
                a = self.velocity_smoothing
                track.velocity = a * track.velocity + (1 - a) * measured
        track.box = box.copy()
        track.last_seen = t
        track.hits += 1


class StreamTrackers:
    """One IoU tracker per stream, created on first use; ids are unique within a stream."""

    def __init__(
        self,
        iou_threshold: float = 0.3,
        min_hits: int = 2,
        max_age_s: float = 1.0,
        max_speed: float = 15.0,
    ) -> None:
        self.iou_threshold = iou_threshold
        self.min_hits = min_hits
        self.max_age_s = max_age_s
        self.max_speed = max_speed
        self._new()  # validate the options now, not at the first frame
        self._trackers: dict[str, IoUTracker] = {}

    def _new(self) -> IoUTracker:
        return IoUTracker(self.iou_threshold, self.min_hits, self.max_age_s, self.max_speed)

    def update(self, stream_id: str, boxes: np.ndarray, t: float) -> list[TrackMatch]:
        tracker = self._trackers.get(stream_id)
        if tracker is None:
            tracker = self._trackers[stream_id] = self._new()
        return tracker.update(boxes, t)

    def forget(self, stream_id: str) -> None:
        """Drop a stream's tracks (the stream was removed)."""
        self._trackers.pop(stream_id, None)

    def __contains__(self, stream_id: str) -> bool:
        return stream_id in self._trackers

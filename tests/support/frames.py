"""Frames and frame sources for tests of the analysis path and its scheduling.

``ListSource`` is a real ``FrameSource``: a latest-frame mailbox refilled from a list of frames
whenever analysis takes one, so a stream always has a frame ready (or none once the list is
spent) without any dependence on decoding speed or timing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from engines.backends import create_scorer
from engines.calibrated import CalibratedScorer
from engines.calibration import Calibrator
from engines.clip_detector import random_detector
from stream.samples import FacePlacement, compose_frame
from stream.sources.base import Frame, SourceStats, SourceStatus


class CorruptFrame(Frame):
    """A frame whose picture cannot be converted, as a damaged decoder output would be."""

    def detection_image(self, max_side: int) -> tuple[np.ndarray, float]:
        raise RuntimeError("corrupt picture")


def crowd(width: int = 640, height: int = 360) -> np.ndarray:
    """The astronaut four times, large to small, on one frame."""
    picture = None
    for place in (FacePlacement(20, 40, 0.5), FacePlacement(330, 40, 0.45),
                  FacePlacement(20, 200, 0.4), FacePlacement(400, 220, 0.35)):
        picture = compose_frame(width, height, place, backdrop=picture)
    assert picture is not None
    return picture


def tiny_scorer(calibrator: Calibrator, max_batch: int) -> CalibratedScorer:
    """A random-weight ``tiny`` CLIP scorer on the CPU (scores mean nothing)."""
    engine = create_scorer(random_detector("tiny"), backend="torch", device="cpu",
                           max_batch=max_batch)
    return CalibratedScorer(engine, calibrator)


def rgb_frame(stream: str, rgb: np.ndarray, seq: int = 0, pts: float = 0.0) -> Frame:
    return Frame(stream, seq, pts, time.time(), rgb=rgb)


class ListSource:
    """Hands out its pictures in order, one at a time, as frames of ``stream_id``.

    ``pictures`` are RGB arrays or ready frames; ``repeat`` cycles through them without end.
    """

    def __init__(
        self,
        stream_id: str,
        pictures: Sequence[np.ndarray | Frame],
        *,
        fps: float = 5.0,
        repeat: bool = False,
        on_frame: Callable[[], None] | None = None,
    ) -> None:
        self.stream_id = stream_id
        self._pictures = list(pictures)
        self._fps = fps
        self._repeat = repeat
        self.on_frame = on_frame
        self._lock = threading.Lock()
        self._next = 0
        self.taken = 0
        self._running = False

    def start(self) -> None:
        with self._lock:
            self._running = True
        if self.on_frame is not None:
            self.on_frame()

    def stop(self) -> None:
        with self._lock:
            self._running = False

    def take(self) -> Frame | None:
        with self._lock:
            if not self._running or (
                not self._repeat and self._next >= len(self._pictures)
            ):
                return None
            seq = self._next
            item = self._pictures[seq % len(self._pictures)]
            self._next += 1
            self.taken += 1
            more = self._repeat or self._next < len(self._pictures)
        if isinstance(item, Frame):
            frame = item
        else:
            frame = Frame(self.stream_id, seq, seq / self._fps, time.time(), rgb=item)
        if more and self.on_frame is not None:
            self.on_frame()  # the next one is ready at once
        return frame

    def stats(self) -> SourceStats:
        with self._lock:
            status = SourceStatus.LIVE if self._running else SourceStatus.STOPPED
            return SourceStats(stream_id=self.stream_id, status=status, url="list:",
                               frames_delivered=self.taken, frames_taken=self.taken)

"""The hand-over between one reader thread and analysis: a slot for the newest frame only.

Live video is worth analysing only while fresh. When analysis falls behind, the frame waiting in
the slot is replaced by the newer one (and counted as superseded) instead of queueing up
latency. For offline evaluation a reader may instead wait until the slot is free, so that no
sampled frame is lost.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from stream.sources.base import Frame


class LatestFrameMailbox:
    """A size-1 mailbox with counters of frames taken and superseded."""

    def __init__(self) -> None:
        self._frame: Frame | None = None
        self._cond = threading.Condition()
        self._closed = False
        self.superseded = 0
        self.taken = 0

    def put(self, frame: Frame) -> None:
        """Leave ``frame`` in the slot, replacing (and counting) an untaken older one."""
        with self._cond:
            if self._closed:
                return
            if self._frame is not None:
                self.superseded += 1
            self._frame = frame

    def wait_free(self, stopped: Callable[[], bool]) -> bool:
        """Block until analysis took the waiting frame; False if ``stopped()`` or closed first."""
        with self._cond:
            while self._frame is not None and not self._closed:
                if stopped():
                    return False
                self._cond.wait(0.1)
            return not self._closed and not stopped()

    def take(self) -> Frame | None:
        """The waiting frame (emptying the slot), or None; never blocks."""
        with self._cond:
            frame, self._frame = self._frame, None
            if frame is not None:
                self.taken += 1
                self._cond.notify_all()
            return frame

    def close(self) -> None:
        """Drop any waiting frame and release a reader blocked in ``wait_free``."""
        with self._cond:
            self._closed = True
            self._frame = None
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False

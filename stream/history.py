"""A stream's recent scores in memory: what the dashboard's timeline shows when it opens.

Live scores go out on Redis Pub/Sub, which keeps nothing, and a stream's state hash holds only
the latest frame; so each stream keeps its last ``window_s`` of (time, p_stream, state) here,
served by ``GET /api/streams/{id}/history``. It is bounded: at most one point per ``spacing_s``
(the live feed sends no more than that either), except that a change of state or between face
and no face is always kept, and never more than ``max_points`` in all. It lives and dies with the
stream in this process: nothing of it goes to Redis.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import NamedTuple

WINDOW_S = 120.0
SPACING_S = 0.25
MAX_POINTS = 2000


class HistoryPoint(NamedTuple):
    at: float
    """When the frame was scored (seconds since the epoch, the service's clock)."""
    p_stream: float | None
    """None: no face within the rolling window."""
    state: str


class ScoreHistory:
    """The last ``window_s`` of one stream's scores; thread-safe (the score thread adds, the
    API reads)."""

    def __init__(
        self, window_s: float = WINDOW_S, spacing_s: float = SPACING_S,
        max_points: int = MAX_POINTS,
    ) -> None:
        self.window_s = window_s
        self.spacing_s = spacing_s
        self._points: deque[HistoryPoint] = deque(maxlen=max_points)
        self._lock = threading.Lock()

    def add(self, at: float, p_stream: float | None, state: str) -> None:
        point = HistoryPoint(at, p_stream, state)
        with self._lock:
            if self._points:
                last = self._points[-1]
                same_kind = (last.p_stream is None) == (p_stream is None) and last.state == state
                if same_kind and at - last.at < self.spacing_s:
                    return
            self._points.append(point)
            self._trim(at)

    def points(self, now: float) -> list[HistoryPoint]:
        """The points within ``window_s`` before ``now``, oldest first."""
        with self._lock:
            self._trim(now)
            return list(self._points)

    def _trim(self, now: float) -> None:
        since = now - self.window_s
        while self._points and self._points[0].at < since:
            self._points.popleft()

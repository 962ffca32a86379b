"""Events per second over a short sliding window (frames in, frames out)."""

from __future__ import annotations

import time
from collections import deque


class RateMeter:
    """Counts events and reports their rate over the last ``window_s`` seconds.

    Not thread-safe: its owner marks and reads it under its own lock.
    """

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()

    def mark(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._times.append(now)
        self._trim(now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        return len(self._times) / max(now - self._times[0], 1e-6)

    def clear(self) -> None:
        self._times.clear()

    def _trim(self, now: float) -> None:
        horizon = now - self.window_s
        while self._times and self._times[0] < horizon:
            self._times.popleft()

"""Which decoded frames go to analysis, and when: a monotonic media clock per stream, the
analysis fps cap on that clock, and real-time pacing for files replayed as live."""

from __future__ import annotations

import time


class MediaClock:
    """Turns each session's raw pts into one strictly increasing timeline per stream.

    A reconnect or a loop restarts the source's own timestamps (often at zero); this clock
    continues where the previous session ended, one frame interval later, so ``Frame.pts`` never
    goes back. The first session keeps the source's own times (a file's pts is its position).
    """

    def __init__(self, frame_interval_s: float = 1 / 30) -> None:
        self.frame_interval_s = frame_interval_s
        self._offset: float | None = 0.0
        self._last: float | None = None

    def new_session(self, frame_interval_s: float | None = None) -> None:
        if frame_interval_s is not None and frame_interval_s > 0:
            self.frame_interval_s = frame_interval_s
        if self._last is not None:
            self._offset = None  # fixed by the session's first timestamp

    def peek(self, raw: float | None) -> float:
        """The time ``raw`` would get, without moving the clock."""
        return self._place(raw)[0]

    def advance(self, raw: float | None) -> float:
        """The time of the next frame (raw pts in seconds, or None when the source has none)."""
        value, self._offset = self._place(raw)
        self._last = value
        return value

    def _place(self, raw: float | None) -> tuple[float, float | None]:
        last = self._last
        step = self.frame_interval_s
        if raw is None:
            return (0.0 if last is None else last + step), self._offset
        offset = self._offset
        if offset is None or (last is not None and raw + offset <= last):
            # New session, or the source's clock jumped back: continue one frame later.
            offset = (last + step - raw) if last is not None else 0.0
        return raw + offset, offset


class FpsCap:
    """Admits frames at most ``fps`` times per second of media time, on a fixed grid.

    The grid keeps the long-run rate exact (a 30 fps source sampled at 5 fps gives every 6th
    frame); after a gap longer than one period the grid restarts at the next frame.
    """

    def __init__(self, fps: float) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.period_s = 1.0 / fps
        self._tolerance = self.period_s * 1e-3
        self._next: float | None = None

    def would_admit(self, t: float) -> bool:
        return self._next is None or t >= self._next - self._tolerance

    def admit(self, t: float) -> bool:
        """Whether the frame at media time ``t`` is taken; moves the grid if it is."""
        if not self.would_admit(t):
            return False
        due = self._next
        if due is None or t - due >= self.period_s:
            self._next = t + self.period_s
        else:
            self._next = due + self.period_s
        return True


class RealtimePacer:
    """Replays a file as live: a frame is released when its media time comes round."""

    MAX_LAG_S = 1.0
    """Further behind than this (slow decode, a long pause) and the pacer starts afresh
    instead of rushing to catch up."""

    def __init__(self) -> None:
        self._anchor: tuple[float, float] | None = None  # (wall clock, media time)

    def restart(self) -> None:
        self._anchor = None

    def wait_s(self, t: float, now: float | None = None) -> float:
        """Seconds to wait before releasing the frame at media time ``t`` (0 if due)."""
        now = time.monotonic() if now is None else now
        if self._anchor is None:
            self._anchor = (now, t)
            return 0.0
        wall0, t0 = self._anchor
        delay = wall0 + (t - t0) - now
        if delay < -self.MAX_LAG_S or t < t0:
            self._anchor = (now, t)
            return 0.0
        return max(0.0, delay)

"""Which decoded frames go to analysis, and when: a monotonic media clock per stream, the
analysis fps cap on that clock, and real-time pacing for files replayed as live."""

from __future__ import annotations

import time


class MediaClock:
    """Turns each session's raw pts into one strictly increasing timeline per stream.

    A reconnect or a loop restarts the source's own timestamps (often at zero); this clock
    continues one frame interval after the latest time it has seen, so ``Frame.pts`` never goes
    back. The first session keeps the source's own times (a file's pts is its position).
    """

    def __init__(self, frame_interval_s: float = 1 / 30) -> None:
        self.frame_interval_s = frame_interval_s
        self._offset: float | None = 0.0
        self._last: float | None = None  # the latest time handed out
        self._latest: float | None = None  # the latest time handed out or looked at

    def new_session(self, frame_interval_s: float | None = None) -> None:
        if frame_interval_s is not None and frame_interval_s > 0:
            self.frame_interval_s = frame_interval_s
        if self._latest is not None:
            self._offset = None  # fixed by the session's first timestamp

    def peek(self, raw: float) -> float:
        """Where a packet's ``raw`` pts lies on the timeline (its frame may be decoded later,
        or never); the clock is not moved."""
        value = raw + self._anchor(raw)
        self._latest = value if self._latest is None else max(self._latest, value)
        return value

    def advance(self, raw: float | None) -> float:
        """The time of the next frame (raw pts in seconds, or None when the source has none)."""
        step = self.frame_interval_s
        if raw is None:
            value = 0.0 if self._last is None else self._last + step
        else:
            value = raw + self._anchor(raw)
            if self._last is not None and value <= self._last:
                # The source's clock jumped back within a session: continue one frame later.
                self._offset = self._last + step - raw
                value = self._last + step
        self._last = value
        self._latest = value if self._latest is None else max(self._latest, value)
        return value

    def _anchor(self, raw: float) -> float:
        if self._offset is None:
            latest = self._latest
            self._offset = 0.0 if latest is None else latest + self.frame_interval_s - raw
        return self._offset


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
    MAX_LEAD_S = 5.0
    """A frame due further ahead than this is a timestamp jump, not a pause to wait out."""

    def __init__(self) -> None:
        self._anchor: tuple[float, float] | None = None  # (wall clock, media time)

    def wait_s(self, t: float, now: float | None = None) -> float:
        """Seconds to wait before releasing the frame at media time ``t`` (0 if due)."""
        now = time.monotonic() if now is None else now
        if self._anchor is None:
            self._anchor = (now, t)
            return 0.0
        wall0, t0 = self._anchor
        delay = wall0 + (t - t0) - now
        if delay < -self.MAX_LAG_S or delay > self.MAX_LEAD_S or t < t0:
            self._anchor = (now, t)
            return 0.0
        return max(0.0, delay)

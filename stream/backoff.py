"""Reconnect delays: exponential, capped, with jitter so that many streams that fail together
(a switch reboots, a media server or Redis restarts) do not all come back in the same instant."""

from __future__ import annotations

import random


class Backoff:
    """Delays base, 2*base, 4*base ... up to cap, each scaled by a random factor in [0.5, 1]."""

    def __init__(self, base_s: float, cap_s: float, *, rng: random.Random | None = None) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError(f"need 0 < base ({base_s}) <= cap ({cap_s})")
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """Count one more failure in a row and return how long to wait before retrying."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(self.failures, 62))
        self.failures += 1
        return ceiling * self._rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        """The source works again: the next failure starts from the base delay."""
        self.failures = 0

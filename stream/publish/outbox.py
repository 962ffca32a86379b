"""The event outbox: every event in order, numbered, until Redis has acknowledged it.

Bounded: when full, the oldest event goes (the publisher counts and logs it as an incident).
Not thread-safe on its own: the publisher holds its lock around every call.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(slots=True)
class Outgoing:
    number: int
    """This publisher's sequence number of the event (the exactly-once high-water mark)."""
    payload: bytes


class Outbox:
    def __init__(self, size: int) -> None:
        self.size = size
        self.last_number = 0
        """The number of the newest event added."""
        self._items: deque[Outgoing] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, payload: bytes) -> Outgoing | None:
        """Queue an event under the next number; the oldest event if it had to go."""
        self.last_number += 1
        lost = self._items.popleft() if len(self._items) >= self.size else None
        self._items.append(Outgoing(self.last_number, payload))
        return lost

    def head(self, count: int) -> list[Outgoing]:
        """The oldest ``count`` events, left in place until ``settle``."""
        return [self._items[i] for i in range(min(len(self._items), count))]

    def oldest_number(self) -> int | None:
        return self._items[0].number if self._items else None

    def settle(self, written: int) -> None:
        """Drop every event numbered up to ``written``: Redis has it."""
        while self._items and self._items[0].number <= written:
            self._items.popleft()

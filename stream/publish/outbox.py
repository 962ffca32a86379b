"""The event outbox: every event in order, numbered, until Redis has acknowledged it.

Bounded: when full, the oldest event goes (the publisher counts and logs it as an incident).
Not thread-safe on its own: the publisher holds its lock around every call.

Exactly once across reconnects: an event whose write was sent but not acknowledged is sent
again, so a write must be idempotent. Each publisher numbers its events (1, 2, 3 ...) and writes
them through a Lua script that, atomically, skips a number at or below the publisher's high-water
mark, XADDs, moves the mark and PUBLISHes. Explicit stream entry ids would give the same
guarantee for a single writer, but several workers append to the one events Stream: an entry id
from one worker's counter or clock can fall below another's latest entry and be refused as if it
were a duplicate, losing the event. Server-generated ids plus a per-publisher mark have no such
failure.
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

"""JPEGs of one kind (evidence crops, heatmaps) waiting for the publisher's writer.

Keyed by alert: the latest JPEG of an alert replaces one not yet written, and at most ``limit``
wait while Redis is unreachable; beyond that the oldest are dropped, counted and logged. Not
thread-safe by itself: the publisher holds its lock around every call.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

log = logging.getLogger("dfstream.publish")


class PendingImages:
    def __init__(self, kind: str, key: Callable[[str], str], limit: int) -> None:
        self.kind = kind
        self.key = key
        """The Redis key of an event id's JPEG (a ``RedisKeys`` method)."""
        self.limit = limit
        self._pending: OrderedDict[str, bytes] = OrderedDict()
        self.written = 0
        self.dropped = 0

    def __bool__(self) -> bool:
        return bool(self._pending)

    def put(self, event_id: str, jpeg: bytes) -> None:
        self._pending.pop(event_id, None)
        self._pending[event_id] = bytes(jpeg)
        while len(self._pending) > self.limit:
            dropped, _ = self._pending.popitem(last=False)
            self.dropped += 1
            log.error("%s for %s dropped: Redis has been unreachable too long", self.kind,
                      dropped)

    def items(self) -> list[tuple[str, bytes]]:
        """What to send this tick (settle the replies with ``settle``)."""
        return list(self._pending.items())

    def settle(self, sent: list[tuple[str, bytes]], replies: list[Any]) -> None:
        """Count the replies to ``sent``; each is done either way (a refused SET is not retried),
        unless a newer JPEG of its alert came meanwhile."""
        for (event_id, jpeg), reply in zip(sent, replies, strict=True):
            if isinstance(reply, Exception):
                log.error("%s %s not written, dropped: %s", self.kind, event_id, reply)
                self.dropped += 1
            else:
                self.written += 1
            if self._pending.get(event_id) is jpeg:
                del self._pending[event_id]

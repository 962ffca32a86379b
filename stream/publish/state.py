"""The state hashes waiting to be written: status fields as they come, and each stream's latest
score, written at most every ``interval_s`` (a flush writes them at once), so a stream analysed
at 30 fps costs Redis a few hash writes a second, not thirty.

Not thread-safe on its own: the publisher holds its lock around every call.
"""

from __future__ import annotations

import math
import time
from typing import Any

from stream.publish import encoding
from stream.scoring import ScoreResult

Fields = dict[str, Any]
Latest = tuple[ScoreResult, int, float]
"""A stream's latest score, with its epoch and when it was published."""


class StateWrites:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.fields: dict[str, Fields] = {}
        self.latest: dict[str, Latest] = {}
        self.written_at: dict[str, float] = {}
        self.flush_asked = False
        self.submitted = 0
        """Published frames whose state has been queued."""
        self.done = 0
        """Published frames whose state has been written (or superseded by a written one)."""

    def queue_fields(self, stream: str, fields: Fields) -> None:
        pending = self.fields.get(stream)
        if pending is None:
            self.fields[stream] = fields
        else:
            pending.update(fields)

    def queue_score(self, stream: str, latest: Latest) -> None:
        self.latest[stream] = latest
        self.submitted += 1

    def due_at(self) -> float:
        """When the earliest pending score state may be written (inf: none pending)."""
        if self.flush_asked and self.latest:
            return 0.0
        return min(
            (self.written_at.get(s, -math.inf) + self.interval_s for s in self.latest),
            default=math.inf,
        )

    def take(self) -> tuple[dict[str, Fields], dict[str, Latest], int | None]:
        """What to write now: the status fields, the streams whose score state is due (its
        interval has passed, a status change goes with it, or a flush asked for everything),
        and the count of published frames the write covers when it leaves nothing pending."""
        fields, self.fields = self.fields, {}
        now = time.monotonic()
        force, self.flush_asked = self.flush_asked, False
        due: dict[str, Latest] = {}
        for stream in list(self.latest):
            last = self.written_at.get(stream, -math.inf)
            if force or stream in fields or now - last >= self.interval_s:
                due[stream] = self.latest.pop(stream)
        return fields, due, None if self.latest else self.submitted

    @staticmethod
    def hashes(fields: dict[str, Fields], due: dict[str, Latest]) -> dict[str, Fields]:
        """The hash fields per stream; status changes (online, offline, fps) win over the
        score of the same write."""
        writes: dict[str, Fields] = {}
        for stream, (result, epoch, published_at) in due.items():
            writes[stream] = encoding.state_fields(result, epoch, published_at)
        for stream, values in fields.items():
            writes.setdefault(stream, {}).update(values)
        return writes

    def restore(self, fields: dict[str, Fields], due: dict[str, Latest]) -> None:
        """A write that may not have landed: queue it again under anything newer."""
        for stream, values in fields.items():
            self.fields[stream] = {**values, **self.fields.get(stream, {})}
        for stream, latest in due.items():
            self.latest.setdefault(stream, latest)

    def written(self, due: dict[str, Latest], covers: int | None) -> None:
        at = time.monotonic()
        for stream in due:
            self.written_at[stream] = at
        if covers is not None:
            self.done = max(self.done, covers)

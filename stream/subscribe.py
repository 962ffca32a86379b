"""Reading the events Stream without loss: from the last id seen, across lost connections.

Pub/Sub drops whatever is sent while a listener is away; the ``events`` Stream keeps it. An
``EventFeed`` remembers the id of the last entry it returned and always asks for what comes
after it, so a reconnect (or a restart that kept ``last_id``) misses nothing and repeats nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from stream.backoff import Backoff
from stream.redis_contract import RedisKeys, connect
from stream.sources.urls import redact

log = logging.getLogger("dfstream.subscribe")


@dataclass(frozen=True, slots=True)
class StreamEvent:
    id: str
    """The Stream entry id: pass it back as ``last_id`` to resume after this event."""
    event: dict[str, Any]


class EventFeed:
    """Events in Stream order from ``last_id`` on (``"$"``: only those after the first read,
    ``"0"``: everything kept)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "dfstream:",
        last_id: str = "$",
        count: int = 500,
        reconnect_base_s: float = 0.2,
        reconnect_cap_s: float = 5.0,
        socket_timeout_s: float = 5.0,
        log_losses: bool = True,
    ) -> None:
        self.url = url
        self.log_losses = log_losses
        """Log each lost connection and reconnect; off for a view that shows ``last_error``."""
        self.keys = RedisKeys(prefix)
        self.last_id = last_id
        self.count = count
        self.reconnects = 0
        self.last_error: str | None = None
        self._timeout_s = socket_timeout_s
        self._backoff = Backoff(reconnect_base_s, reconnect_cap_s)
        self._client: aioredis.Redis | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def read(self, block_ms: int = 1000) -> list[StreamEvent]:
        """The next events after ``last_id``, waiting up to ``block_ms`` (0: not at all). A lost
        connection is retried with backoff and gives an empty list meanwhile, never an error."""
        try:
            client = await self._connected()
            reply: Any = await client.xread(
                {self.keys.events: self.last_id}, count=self.count,
                block=block_ms if block_ms > 0 else None,
            )
        except (RedisError, OSError) as exc:
            await self._lost(exc)
            return []
        events = [self._decode(entry_id, fields) for _, entries in reply for entry_id, fields in
                  entries]
        if events:
            self.last_id = events[-1].id
        return events

    async def latest(self, n: int) -> list[StreamEvent]:
        """The last ``n`` events already in the Stream, oldest first; the feed then continues
        after them. For a view that starts with recent history."""
        try:
            client = await self._connected()
            entries: Any = await client.xrevrange(self.keys.events, count=n)
        except (RedisError, OSError) as exc:
            await self._lost(exc)
            return []
        events = [self._decode(entry_id, fields) for entry_id, fields in reversed(entries)]
        if events:
            self.last_id = events[-1].id
        return events

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _connected(self) -> aioredis.Redis:
        if self._client is not None:
            return self._client
        client = connect(self.url, timeout_s=self._timeout_s)
        try:
            if self.last_id == "$":
                # Pin "$" to a concrete id now, or a reconnect would skip what came meanwhile.
                top: Any = await client.xrevrange(self.keys.events, count=1)
                self.last_id = top[0][0].decode() if top else "0-0"
            else:
                await client.ping()
        except BaseException:
            await client.aclose()
            raise
        if self.last_error is not None:
            self.reconnects += 1
            if self.log_losses:
                log.info("events feed reconnected to %s; resuming after %s", redact(self.url),
                         self.last_id)
        self._client = client
        self._backoff.reset()
        return client

    async def _lost(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        await self.close()
        delay = self._backoff.next_delay()
        if self.log_losses:
            log.warning("events feed lost %s (%s); retrying in %.1fs", redact(self.url),
                        self.last_error, delay)
        await asyncio.sleep(delay)

    @staticmethod
    def _decode(entry_id: bytes | str, fields: dict[bytes, bytes] | None) -> StreamEvent:
        key = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        raw = (fields or {}).get(b"event")
        try:
            event = orjson.loads(raw) if raw is not None else {}
        except orjson.JSONDecodeError:
            event = {"type": "invalid", "raw": raw.decode(errors="replace") if raw else ""}
        return StreamEvent(key, event)

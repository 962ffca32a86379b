"""Live thresholds: a default and per-stream overrides in Redis, versioned, validated, announced.

Layout of the ``{prefix}config`` hash (docs/redis.md):

- ``version``: a counter, raised by every change;
- ``thresholds``: the default, a JSON object with all six fields;
- ``thresholds:{stream}``: a stream's override, a JSON object with any subset of the fields.

A change is validated against what it produces (the default merged into every override, or the
stream's merged thresholds), then written by a Lua script that checks the version it was
computed from, that the stream is known (a field of the ``{prefix}streams`` hash, which the
service maintains), raises the version and PUBLISHes ``{"type": "thresholds", ...}`` on
``{prefix}control`` -- all or nothing. A bad value is refused before anything is written.

A running service keeps a ``ThresholdListener``; the analysis loop calls ``listener.apply(scoring)``
before each frame, so a change takes effect at the next frame and the events it decides carry
its version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.exceptions import RedisError

from engines.errors import UserError
from stream.backoff import Backoff
from stream.config import STREAM_ID_PATTERN, Settings, Thresholds
from stream.redis_contract import RedisKeys, connect
from stream.scoring import StreamScoring
from stream.sources.urls import redact

log = logging.getLogger("dfstream.thresholds")

FIELDS: tuple[str, ...] = tuple(Thresholds.model_fields)
RULES = ("hysteresis", "cusum")
Value = float | str
"""A threshold's value: a number, or for ``rule`` the rule's name."""
DEFAULT_FIELD = "thresholds"
OVERRIDE_PREFIX = "thresholds:"

# KEYS: config hash, streams hash. ARGV: expected version, field, value ('' deletes it),
# stream ('' for the default), control channel.
_WRITE = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then
  return {'conflict', current}
end
if ARGV[4] ~= '' and redis.call('HEXISTS', KEYS[2], ARGV[4]) == 0 then
  return {'unknown', current}
end
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[2])
else
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
end
local stream = cjson.null
if ARGV[4] ~= '' then stream = ARGV[4] end
redis.call('PUBLISH', ARGV[5], cjson.encode({type = 'thresholds', version = version,
                                             stream = stream}))
return {'ok', version}
"""


COMMIT_ATTEMPTS = 50
"""Optimistic writes retried this often when another change landed in between."""


async def _contention_pause(attempt: int) -> None:
    await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))


class ThresholdError(UserError, ValueError):
    """A threshold change that was refused; nothing was written."""

    def __init__(self, message: str, *, unknown_stream: bool = False) -> None:
        super().__init__(message)
        self.unknown_stream = unknown_stream
        """The change named a stream the service does not know (HTTP: 404 rather than 422)."""


class ThresholdUpdate(BaseModel):
    """A partial change, as the HTTP API takes it: the fields given are changed."""

    model_config = ConfigDict(extra="forbid")

    enter: float | None = Field(None, ge=0, le=1, description="Start an alert at or above.")
    exit: float | None = Field(None, ge=0, le=1, description="End an alert below (<= enter).")
    min_duration_s: float | None = Field(None, ge=0, le=3600, description="Time above enter.")
    hold_s: float | None = Field(None, ge=0, le=3600, description="Time below exit to clear.")
    cooldown_s: float | None = Field(None, ge=0, le=3600, description="Quiet time after alerts.")
    window_s: float | None = Field(None, gt=0, le=600, description="Rolling window per track.")
    rule: Literal["hysteresis", "cusum"] | None = Field(None, description="The alert rule.")
    cusum_prior: float | None = Field(None, gt=0, lt=1, description="cusum: zero-evidence p.")
    cusum_h: float | None = Field(None, gt=0, le=1000, description="cusum: alert at S_t >= h.")
    cusum_exit: float | None = Field(None, ge=0, le=1000, description="cusum: clear below.")

    def changes(self) -> dict[str, Value]:
        return self.model_dump(exclude_none=True)


def describe(exc: ValidationError, where: str) -> str:
    problems = []
    for err in exc.errors():
        name = ".".join(str(part) for part in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        problems.append(f"{name}: {message} (got {err['input']!r})" if name else message)
    return f"invalid thresholds for {where}: " + "; ".join(problems)


def check_changes(changes: Mapping[str, Any] | ThresholdUpdate) -> dict[str, Value]:
    """The requested fields (numbers as floats, ``rule`` a rule's name); unknown names and
    values of the wrong kind are refused."""
    if isinstance(changes, ThresholdUpdate):
        changes = changes.changes()
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise ThresholdError(f"unknown threshold field(s) {unknown}; known: {list(FIELDS)}")
    out: dict[str, Value] = {}
    for name, value in changes.items():
        if name == "rule":
            if value not in RULES:
                raise ThresholdError(f"rule must be one of {', '.join(RULES)}, got {value!r}")
            out[name] = str(value)
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ThresholdError(f"{name} must be a number, got {value!r}")
        out[name] = float(value)
    if not out:
        raise ThresholdError("no threshold given to change")
    return out


def merge(default: Thresholds, override: Mapping[str, Value], where: str) -> Thresholds:
    try:
        return Thresholds(**{**default.model_dump(), **override})
    except ValidationError as exc:
        raise ThresholdError(describe(exc, where)) from None


@dataclass(frozen=True)
class ThresholdBook:
    """One consistent reading of the thresholds configuration."""

    version: int
    default: Thresholds
    overrides: Mapping[str, Mapping[str, Value]] = field(default_factory=dict)
    default_stored: bool = False
    """False while Redis holds no default and the service's configured one applies."""

    def for_stream(self, stream: str) -> Thresholds:
        override = self.overrides.get(stream)
        if not override:
            return self.default
        return merge(self.default, override, f"stream {stream!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "default": self.default.model_dump(),
            "default_stored": self.default_stored,
            "streams": {
                stream: {"override": dict(override), "effective": self._effective(stream)}
                for stream, override in sorted(self.overrides.items())
            },
        }

    def _effective(self, stream: str) -> dict[str, Value] | None:
        try:
            return self.for_stream(stream).model_dump()
        except ThresholdError:
            return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parse_book(raw: Mapping[Any, Any], fallback: Thresholds) -> ThresholdBook:
    """The book from an HGETALL of the config hash; bad stored values raise ThresholdError."""
    fields = {_text(k): _text(v) for k, v in raw.items()}
    try:
        version = int(fields.get("version", "0"))
    except ValueError:
        raise ThresholdError(f"config version {fields['version']!r} is not an integer") from None
    default = fallback
    stored = DEFAULT_FIELD in fields
    if stored:
        data = _json_object(fields[DEFAULT_FIELD], "the default")
        try:
            default = Thresholds(**data)
        except ValidationError as exc:
            raise ThresholdError(describe(exc, "the stored default")) from None
    overrides: dict[str, dict[str, Value]] = {}
    for name, value in fields.items():
        if name.startswith(OVERRIDE_PREFIX):
            stream = name[len(OVERRIDE_PREFIX):]
            overrides[stream] = check_changes(_json_object(value, f"stream {stream!r}"))
    return ThresholdBook(version, default, overrides, stored)


def _json_object(text: str, where: str) -> dict[str, Any]:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ThresholdError(f"stored thresholds of {where} are not JSON: {text[:80]!r}") from None
    if not isinstance(data, dict):
        raise ThresholdError(f"stored thresholds of {where} are not a JSON object")
    return data


class ThresholdStore:
    """Reads and changes the thresholds in Redis (the CLI and the HTTP API use it)."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "dfstream:",
        fallback: Thresholds | None = None,
    ) -> None:
        self.client = client
        self.keys = RedisKeys(prefix)
        self.fallback = fallback or Thresholds()
        self._write = client.register_script(_WRITE)

    @classmethod
    def from_settings(cls, client: aioredis.Redis, settings: Settings) -> ThresholdStore:
        """The store under the configured prefix, the configured default as its fallback."""
        return cls(client, prefix=settings.redis.prefix, fallback=settings.scoring.thresholds)

    async def get(self) -> ThresholdBook:
        return parse_book(await self.client.hgetall(self.keys.config), self.fallback)

    async def known_streams(self) -> list[str]:
        names = await self.client.hkeys(self.keys.streams)
        return sorted(_text(n) for n in names)

    async def set(
        self, changes: Mapping[str, Any] | ThresholdUpdate, stream: str | None = None
    ) -> ThresholdBook:
        """Change the default (``stream=None``) or one stream's override; returns the book as
        this change left it."""
        values = check_changes(changes)
        if stream is not None and not re.fullmatch(STREAM_ID_PATTERN, stream):
            raise ThresholdError(f"{stream!r} is not a valid stream id")
        for attempt in range(COMMIT_ATTEMPTS):
            book = await self.get()
            overrides = dict(book.overrides)
            if stream is None:
                default = merge(book.default, values, "the default")
                for other, override in book.overrides.items():
                    merge(default, override, f"stream {other!r} with the new default")
                field_name, value = DEFAULT_FIELD, orjson.dumps(default.model_dump())
            else:
                default = book.default
                overrides[stream] = {**book.overrides.get(stream, {}), **values}
                merge(default, overrides[stream], f"stream {stream!r}")
                field_name, value = OVERRIDE_PREFIX + stream, orjson.dumps(overrides[stream])
            version = await self._commit(book.version, field_name, value, stream)
            if version is not None:
                stored = book.default_stored or stream is None
                return ThresholdBook(version, default, overrides, stored)
            await _contention_pause(attempt)
        raise ThresholdError("the thresholds kept changing under this update; try again")

    async def reset(self, stream: str) -> ThresholdBook:
        """Remove a stream's override: it follows the default again."""
        for attempt in range(COMMIT_ATTEMPTS):
            book = await self.get()
            if stream not in book.overrides:
                unknown = stream not in await self.known_streams()
                what = "is not a known stream" if unknown else "has no threshold override"
                raise ThresholdError(f"stream {stream!r} {what}", unknown_stream=unknown)
            version = await self._commit(book.version, OVERRIDE_PREFIX + stream, b"", stream)
            if version is not None:
                overrides = {k: v for k, v in book.overrides.items() if k != stream}
                return ThresholdBook(version, book.default, overrides, book.default_stored)
            await _contention_pause(attempt)
        raise ThresholdError("the thresholds kept changing under this update; try again")

    async def seed(self, default: Thresholds) -> bool:
        """Store the service's configured default unless Redis already holds one (at start-up);
        True when it was stored."""
        return bool(
            await self.client.hsetnx(
                self.keys.config, DEFAULT_FIELD, orjson.dumps(default.model_dump())
            )
        )

    async def _commit(
        self, version: int, field_name: str, value: bytes, stream: str | None
    ) -> int | None:
        """The new version, or None when the config changed since ``version`` was read."""
        status, new_version = await self._write(
            keys=[self.keys.config, self.keys.streams],
            args=[version, field_name, value, stream or "", self.keys.control],
        )
        if _text(status) == "unknown":
            known = await self.known_streams()
            raise ThresholdError(
                f"unknown stream {stream!r}; known streams: {', '.join(known) or 'none'}",
                unknown_stream=True,
            )
        return int(new_version) if _text(status) == "ok" else None


class ThresholdListener:
    """Keeps a current ``ThresholdBook`` for the running streams' scoring.

    It reads the config at start, again on each announcement on the control channel, and checks
    the version every ``poll_s`` as well, since Pub/Sub loses announcements made while the
    connection is down. With Redis unreachable the last book stays in force.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "dfstream:",
        fallback: Thresholds | None = None,
        poll_s: float = 5.0,
        reconnect_base_s: float = 0.2,
        reconnect_cap_s: float = 10.0,
        socket_timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self.keys = RedisKeys(prefix)
        self.fallback = fallback or Thresholds()
        self.poll_s = poll_s
        self.book = ThresholdBook(0, self.fallback)
        self._timeout_s = socket_timeout_s
        self._backoff = Backoff(reconnect_base_s, reconnect_cap_s)
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self._bad_streams: set[str] = set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="dfstream-thresholds")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def for_stream(self, stream: str) -> tuple[Thresholds, int]:
        """The thresholds in force for ``stream`` and the config version they come from."""
        book = self.book
        try:
            thresholds = book.for_stream(stream)
        except ThresholdError as exc:
            if stream not in self._bad_streams:
                self._bad_streams.add(stream)
                log.error("%s; using the default for it", exc)
            thresholds = book.default
        return thresholds, book.version

    def apply(self, scoring: StreamScoring) -> None:
        """Give ``scoring`` the current thresholds if they changed; cheap enough for every frame."""
        if scoring.config_version != self.book.version:
            scoring.set_thresholds(*self.for_stream(scoring.stream))

    async def wait_version(self, version: int, timeout_s: float) -> bool:
        """True once the book has reached ``version``."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.book.version >= version), timeout_s
                )
        return self.book.version >= version

    async def _run(self) -> None:
        while True:
            try:
                await self._follow()
            except (RedisError, OSError) as exc:
                delay = self._backoff.next_delay()
                log.warning("thresholds: Redis %s unreachable (%s); keeping version %d, "
                            "retrying in %.1fs", redact(self.url), exc, self.book.version, delay)
                await asyncio.sleep(delay)

    async def _follow(self) -> None:
        client = connect(self.url, timeout_s=self._timeout_s)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self.keys.control)
            await self._reload(client)
            self._backoff.reset()
            while True:
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=self.poll_s
                )
                if message is not None or await self._version(client) != self.book.version:
                    await self._reload(client)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _version(self, client: aioredis.Redis) -> int:
        raw = await client.hget(self.keys.config, "version")
        return int(raw) if raw is not None else 0

    async def _reload(self, client: aioredis.Redis) -> None:
        raw = await client.hgetall(self.keys.config)
        try:
            book = parse_book(raw, self.fallback)
        except ThresholdError as exc:
            log.error("thresholds in Redis are unusable (%s); keeping version %d",
                      exc, self.book.version)
            return
        if book.version != self.book.version:
            log.info("thresholds version %d in force", book.version)
        self._bad_streams.clear()
        async with self._changed:
            self.book = book
            self._changed.notify_all()

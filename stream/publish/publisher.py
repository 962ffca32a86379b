"""The Redis publisher: live scores, stream state, lossless events, evidence and heatmaps,
liveness.

Messages are encoded by ``encoding``, events wait in an ``Outbox``, JPEGs in ``PendingImages``,
Redis runs ``scripts``.

The analysis loop never waits on Redis. Its calls (``publish``, ``put_evidence``,
``stream_online`` ...) only encode and enqueue; one writer task sends whatever is pending as a
single pipeline per tick, so a busy second costs a few round trips, not thousands.

While Redis is unreachable:

- live scores are dropped and counted (Pub/Sub is at-most-once anyway);
- events wait in a bounded outbox, in order; when it is full the oldest is dropped, counted and
  logged as an error;
- the writer reconnects with capped, jittered exponential backoff and then replays the outbox.

Events are written exactly once across reconnects (outbox.py says how).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from stream.backoff import Backoff
from stream.config import RedisSettings
from stream.publish import encoding
from stream.publish.images import PendingImages
from stream.publish.outbox import Outbox, Outgoing
from stream.publish.scripts import PUBLISH_MANY, RELEASE_SERVICE, WRITE_EVENT
from stream.publish.state import StateWrites
from stream.redis_contract import RedisKeys, connect
from stream.scoring import AlertEvent, ScoreResult
from stream.sources.base import StreamStatus
from stream.sources.urls import redact

log = logging.getLogger("dfstream.publish")

SCORE_QUEUE_SIZE = 100_000
"""Score messages waiting for the writer; beyond this the oldest are dropped (counted)."""
EVIDENCE_PENDING = 256
"""Evidence JPEGs waiting for Redis (the latest per alert), and as many heatmaps; beyond this
the oldest are dropped."""
MAX_SCORES_PER_TICK = 4096
SCORES_PER_SCRIPT = 256
"""Score messages per PUBLISH script call; Redis runs one such call in well under a ms."""
MAX_EVENTS_PER_TICK = 256
OUTBOX_MARK_TTL_S = 7 * 24 * 3600


@dataclass
class PublisherStats:
    connected: bool = False
    scores_published: int = 0
    scores_dropped: int = 0
    """Dropped while Redis was unreachable, or because the writer fell behind."""
    events_written: int = 0
    events_deduplicated: int = 0
    """Re-sent after an unacknowledged write and found already written."""
    events_pending: int = 0
    outbox_overflow: int = 0
    """Events lost because the outbox was full; anything above 0 is an incident."""
    evidence_written: int = 0
    evidence_dropped: int = 0
    heatmaps_written: int = 0
    heatmaps_dropped: int = 0
    reconnects: int = 0
    last_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Publisher:
    """Publishes each stream's scores, state and events to Redis; see the module docstring for
    the guarantees.

    Use ``await start()`` once, then call the non-blocking methods from the analysis loop (any
    thread), and ``await close()`` at shutdown to write offline events and flush the outbox.
    """

    def __init__(
        self,
        url: str,
        settings: RedisSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
        on_latency: Callable[[Sequence[float]], None] | None = None,
        **overrides: Any,
    ) -> None:
        """``settings``: the ``redis`` section (its defaults when None); ``overrides``: any of
        its fields (e.g. ``reconnect_base_s``), validated as the section's own."""
        base = settings or RedisSettings()
        config = RedisSettings(**{**base.model_dump(), **overrides}) if overrides else base
        self.url = url
        self.config = config
        self.keys = RedisKeys(config.prefix)
        self.instance = uuid.uuid4().hex[:16]
        self._backoff = Backoff(config.reconnect_base_s, config.reconnect_cap_s)
        self._clock = clock
        self._on_latency = on_latency
        self._stats = PublisherStats()

        self._scores: deque[tuple[str, bytes, float]] = deque()
        self._states = StateWrites(config.state_interval_s)
        self._channels: dict[str, str] = {}
        self._outbox = Outbox(config.outbox_size)
        self._lock = threading.Lock()
        self._evidence = PendingImages("evidence", self.keys.evidence, EVIDENCE_PENDING)
        self._heatmaps = PendingImages("heatmap", self.keys.heatmap, EVIDENCE_PENDING)
        self._epochs: dict[str, int] = {}
        self._last_seq: dict[str, int] = {}
        self._online: set[str] = set()
        """Streams this process analyses (the liveness value lists them)."""
        self._announced: set[str] = set()
        """Streams whose ``stream.online`` was sent in their current epoch."""
        self._urls: dict[str, str | None] = {}
        self._scores_submitted = 0
        self._scores_done = 0
        self._last_overflow_log = -1e9

        self._client: aioredis.Redis | None = None
        self._shas: dict[str, str] = {}
        self._release_service: Any = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._wake: asyncio.Event | None = None
        self._progress: asyncio.Event | None = None
        self._idle = False
        self._service_due = 0.0
        self._service_changes = 0
        """Bumped whenever the liveness value changes, so that a renewal in flight does not
        push back a refresh asked for meanwhile."""
        self._started_at = clock()

    @classmethod
    def from_settings(cls, settings: RedisSettings, url: str, **kwargs: Any) -> Publisher:
        """A publisher configured from the ``redis`` section; ``url`` is the resolved URL (the
        embedded server's when the section has none)."""
        return cls(url, settings, **kwargs)

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start the writer. Returns at once: an unreachable Redis is an outage, not an error."""
        if self._task is not None:
            raise RuntimeError("publisher already started")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="dfstream-publisher")

    async def wait_connected(self, timeout_s: float) -> bool:
        """True once Redis has answered (for readiness checks and tests)."""
        deadline = time.monotonic() + timeout_s
        while not self._stats.connected:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything submitted so far is written (or counted as dropped)."""
        assert self._progress is not None, "start() the publisher first"
        target_scores = self._scores_submitted
        target_events = self._outbox.last_number
        target_state = self._states.submitted
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                oldest = self._outbox.oldest_number()
            events_done = oldest is None or oldest > target_events
            scores_done = self._scores_done >= target_scores
            state_done = self._states.done >= target_state
            images_done = not (self._evidence or self._heatmaps)
            if events_done and scores_done and state_done and images_done:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._states.flush_asked = True  # write pending state now, whatever its interval
            self._progress.clear()
            self._notify()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), min(remaining, 0.1))

    async def close(self, timeout_s: float = 5.0) -> None:
        """Write ``stream.offline`` for every online stream, flush the outbox, release the
        liveness key. Events still unwritten after ``timeout_s`` are reported as lost."""
        if self._task is None:
            return
        for stream in sorted(self._online):
            self.stream_offline(stream, reason="shutdown")
        flushed = await self.flush(timeout_s)
        if flushed and self._client is not None and self._stats.connected:
            with contextlib.suppress(RedisError, OSError):
                async with asyncio.timeout(self.config.socket_timeout_s):
                    await self._release_service(keys=[self.keys.service], args=[self.instance])
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        await self._disconnect()
        if not flushed:
            log.error(
                "publisher closed with %d event(s) not written to %s: they are lost",
                len(self._outbox), redact(self.url),
            )

    @property
    def stats(self) -> PublisherStats:
        with self._lock:
            self._stats.events_pending = len(self._outbox)
            self._stats.evidence_written = self._evidence.written
            self._stats.evidence_dropped = self._evidence.dropped
            self._stats.heatmaps_written = self._heatmaps.written
            self._stats.heatmaps_dropped = self._heatmaps.dropped
            return PublisherStats(**asdict(self._stats))

    @property
    def connected(self) -> bool:
        return self._stats.connected

    # ----------------------------------------------------------------- what the pipeline calls

    def stream_added(self, stream: str, *, epoch: int, url: str | None = None) -> None:
        """The stream is analysed by this process from now on, under fencing ``epoch``; its
        source is connecting, so its status is ``connecting`` until ``stream_online``."""
        self._epochs[stream] = epoch
        self._urls[stream] = url
        self._announced.discard(stream)
        self._online.add(stream)
        self._refresh_service()  # the liveness value lists the streams
        self._queue_state(stream, {"status": StreamStatus.CONNECTING, "epoch": epoch})

    def stream_online(self, stream: str, *, epoch: int | None = None,
                      url: str | None = None) -> None:
        """Frames of the stream arrive and are analysed: ``stream.online``, once per epoch
        (later calls in the same epoch do nothing). Without ``epoch``/``url``, those given to
        ``stream_added``."""
        if epoch is not None and epoch != self._epochs.get(stream):
            self.stream_added(stream, epoch=epoch, url=url)
        if stream in self._announced:
            return
        self._announced.add(stream)
        epoch = self._epochs.get(stream, 0)
        url = url if url is not None else self._urls.get(stream)
        self._online.add(stream)
        self._refresh_service()
        self._queue_state(stream, {"status": StreamStatus.ONLINE, "epoch": epoch})
        shown_url = redact(url) if url is not None else None  # camera passwords stay out of Redis
        self._queue_event(
            self._stream_event("stream.online", stream, status=StreamStatus.ONLINE, url=shown_url)
        )

    def stream_offline(
        self, stream: str, *, reason: str, final_events: Sequence[AlertEvent] = ()
    ) -> None:
        """The stream is no longer analysed here (stopped, failed, moved, shutdown).

        ``final_events`` are what ``StreamScoring.finish`` returned: the end of an open alert,
        written before ``stream.offline``."""
        epoch = self._epochs.get(stream, 0)
        for event in final_events:
            self._queue_event(self._alert_event(event, epoch))
        self._online.discard(stream)
        self._announced.discard(stream)
        self._refresh_service()
        self._queue_state(stream, {"status": StreamStatus.OFFLINE, "state": "clear", "alert": ""})
        self._queue_event(
            self._stream_event("stream.offline", stream, status=StreamStatus.OFFLINE, reason=reason)
        )

    def stream_status(
        self,
        stream: str,
        status: str,
        *,
        fps_in: float | None = None,
        fps_analysed: float | None = None,
        fps_dropped: float | None = None,
    ) -> None:
        """Source status (e.g. ``reconnecting``) and rates for the state hash."""
        fields: dict[str, str | int | float] = {"status": status}
        for name, value in (
            ("fps_in", fps_in), ("fps_analysed", fps_analysed), ("fps_dropped", fps_dropped)
        ):
            if value is not None:
                fields[name] = round(float(value), 3)
        self._queue_state(stream, fields)

    def publish(self, result: ScoreResult) -> None:
        """One analysed frame: its live score message, the state hash and its events."""
        submitted = time.perf_counter()  # latency counts the encoding too
        stream = result.stream
        epoch = self._epochs.get(stream, 0)
        published_at = self._clock()
        self._last_seq[stream] = result.seq
        for event in result.events:
            self._queue_event(self._alert_event(event, epoch))
        payload = None
        if self._stats.connected:
            payload = encoding.score_message(result, epoch, published_at)
        channel = self._channels.get(stream) or self._channels.setdefault(
            stream, self.keys.scores(stream)
        )
        with self._lock:
            self._states.queue_score(stream, (result, epoch, published_at))
            if payload is None:
                self._stats.scores_dropped += 1
            else:
                if len(self._scores) >= SCORE_QUEUE_SIZE:
                    self._scores.popleft()
                    self._stats.scores_dropped += 1
                    self._scores_done += 1
                self._scores_submitted += 1
                self._scores.append((channel, payload, submitted))
        self._notify()

    def put_evidence(self, event_id: str, jpeg: bytes) -> None:
        """The JPEG of an alert's peak crop (``ScoreResult.evidence``); the latest one wins."""
        with self._lock:
            self._evidence.put(event_id, jpeg)
        self._notify()

    def put_heatmap(self, event_id: str, jpeg: bytes) -> None:
        """The JPEG of the detector's heatmap over that crop (stream/heatmaps.py); the latest
        one wins. Same TTL as the evidence."""
        with self._lock:
            self._heatmaps.put(event_id, jpeg)
        self._notify()

    # ----------------------------------------------------------------- encoding

    def _alert_event(self, event: AlertEvent, epoch: int) -> dict[str, Any]:
        return encoding.alert_event(event, epoch, self.keys)

    def _stream_event(self, kind: str, stream: str, **extra: Any) -> dict[str, Any]:
        return encoding.stream_event(
            kind, stream, now=self._clock(), seq=self._last_seq.get(stream, 0),
            epoch=self._epochs.get(stream, 0), **extra,
        )

    def _queue_state(self, stream: str, fields: dict[str, str | int | float]) -> None:
        fields["updated_at"] = self._clock()
        with self._lock:
            self._states.queue_fields(stream, fields)
        self._notify()

    def _queue_event(self, payload: dict[str, Any]) -> None:
        data = encoding.encode(payload)
        with self._lock:
            lost = self._outbox.add(data)
            if lost is not None:
                self._stats.outbox_overflow += 1
                self._log_overflow(lost)
        self._notify()

    def _log_overflow(self, lost: Outgoing) -> None:
        now = time.monotonic()
        if now - self._last_overflow_log < 5.0:
            return
        self._last_overflow_log = now
        log.error(
            "EVENT OUTBOX FULL (%d events, Redis %s unreachable): dropping the oldest events; "
            "%d lost so far, latest %s. Raise redis.outbox_size or restore Redis.",
            self._outbox.size, redact(self.url), self._stats.outbox_overflow,
            lost.payload[:120].decode(errors="replace"),
        )

    def _refresh_service(self) -> None:
        self._service_changes += 1
        self._service_due = 0.0

    def _notify(self) -> None:
        # Called from any thread; wakes the writer only when it sleeps. The writer marks itself
        # idle before it re-checks for work, so no item can slip between the two.
        if not self._idle or self._wake is None or self._loop is None:
            return
        self._idle = False
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    # ----------------------------------------------------------------- the writer

    def _has_work(self) -> bool:
        pending = (self._scores or self._states.fields or self._outbox or self._evidence
                   or self._heatmaps)
        now = time.monotonic()
        return bool(pending) or (
            self._stats.connected and (now >= self._service_due or now >= self._states.due_at())
        )

    async def _run(self) -> None:
        assert self._wake is not None and self._progress is not None
        while True:
            if self._client is None:
                try:
                    await self._connect()
                except (RedisError, OSError) as exc:
                    await self._outage(exc)
                    continue
            try:
                wrote = await self._write_tick()
            except (RedisError, OSError) as exc:
                await self._outage(exc)
                continue
            except Exception as exc:  # a bug must not stop publishing for good
                log.exception("publisher tick failed")
                await self._outage(exc)
                continue
            if wrote:
                self._progress.set()
                await asyncio.sleep(0)  # let the analysis loop run between ticks
                continue
            self._idle = True
            self._wake.clear()
            if self._has_work():
                self._idle = False
                continue
            wait_s = max(0.0, min(self._service_due, self._states.due_at()) - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)
            self._idle = False

    async def _connect(self) -> None:
        client = connect(self.url, timeout_s=self.config.socket_timeout_s, per_reply_timeout=False)
        try:
            async with asyncio.timeout(self.config.socket_timeout_s):
                await client.ping()
        except BaseException:
            await client.aclose()
            raise
        self._client = client
        # Loaded once per connection and then called by sha: a pipeline holding registered
        # scripts would ask SCRIPT EXISTS before every execute, a second round trip per tick.
        async with asyncio.timeout(self.config.socket_timeout_s):
            for name, source in (("write_event", WRITE_EVENT), ("publish_many", PUBLISH_MANY)):
                self._shas[name] = _text(await client.script_load(source))
        self._release_service = client.register_script(RELEASE_SERVICE)
        if self._stats.last_error is not None:
            self._stats.reconnects += 1
            log.warning("Redis %s is back; replaying %d event(s)", redact(self.url),
                        len(self._outbox))
        self._stats.connected = True
        self._service_due = 0.0
        self._backoff.reset()

    async def _outage(self, exc: BaseException) -> None:
        was_connected = self._stats.connected
        self._stats.connected = False
        self._stats.last_error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            dropped = len(self._scores)
            self._scores.clear()
            self._stats.scores_dropped += dropped
            self._scores_done += dropped
        await self._disconnect()
        delay = self._backoff.next_delay()
        kind = "refused the write" if isinstance(exc, ResponseError) else "unreachable"
        if was_connected or self._backoff.failures == 1:
            log.error(
                "Redis %s %s (%s): live scores are dropped, events kept in the outbox "
                "(%d pending); retrying in %.1fs",
                redact(self.url), kind, self._stats.last_error, len(self._outbox), delay,
            )
        assert self._progress is not None
        self._progress.set()
        await asyncio.sleep(delay)

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _write_tick(self) -> bool:
        """Send everything pending as one pipeline; False when there was nothing to send."""
        client = self._client
        assert client is not None
        with self._lock:
            events = self._outbox.head(MAX_EVENTS_PER_TICK)
            images = [(buffer, buffer.items()) for buffer in (self._evidence, self._heatmaps)]
            states, latest, state_covers = self._states.take()
            count = min(len(self._scores), MAX_SCORES_PER_TICK)
            scores = [self._scores.popleft() for _ in range(count)]
        renew = time.monotonic() >= self._service_due
        service_changes = self._service_changes
        if not (events or any(sent for _, sent in images) or states or latest or scores or renew):
            return False
        state_writes = StateWrites.hashes(states, latest)
        pipe = client.pipeline(transaction=False)
        for buffer, sent in images:
            for event_id, jpeg in sent:
                pipe.set(buffer.key(event_id), jpeg, ex=self.config.evidence_ttl_s)
        mark = self.keys.outbox_mark(self.instance)
        write_event, publish_many = self._shas["write_event"], self._shas["publish_many"]
        for item in events:
            pipe.evalsha(write_event, 2, self.keys.events, mark, item.number, item.payload,
                         self.config.events_maxlen, self.keys.events, OUTBOX_MARK_TTL_S)
        for stream, fields in state_writes.items():
            pipe.hset(self.keys.state(stream), mapping=fields)  # type: ignore[arg-type]
        for first in range(0, len(scores), SCORES_PER_SCRIPT):
            args: list[str | bytes] = []
            for channel, payload, _ in scores[first : first + SCORES_PER_SCRIPT]:
                args += (channel, payload)
            pipe.evalsha(publish_many, 0, *args)
        if renew:
            ttl = max(1, round(self.config.service_ttl_s))
            pipe.set(self.keys.service, self._service_value(), ex=ttl)
        try:
            # One deadline for the whole tick (the client has no per-reply timer, see connect).
            async with asyncio.timeout(self.config.socket_timeout_s):
                replies = await pipe.execute(raise_on_error=False)
        except BaseException:
            # Unknown whether any of it landed: state goes again (newer fields win), the events
            # stay in the outbox (their writes are idempotent), the scores are lost.
            with self._lock:
                self._states.restore(states, latest)
                self._stats.scores_dropped += len(scores)
                self._scores_done += len(scores)
            raise
        done = time.perf_counter()
        with self._lock:
            self._states.written(latest, state_covers)
        failure = self._settle(images, events, replies)
        with self._lock:
            self._stats.scores_published += len(scores)
            self._scores_done += len(scores)
        if renew and self._service_changes == service_changes:
            self._service_due = time.monotonic() + self.config.service_ttl_s / 3
        if self._on_latency is not None and scores:
            self._on_latency([done - submitted for _, _, submitted in scores])
        if failure is None:
            failure = next((r for r in replies if isinstance(r, NoScriptError)), None)
        if failure is not None:
            raise failure  # NOSCRIPT (the server's scripts were flushed): reconnect reloads
        return True

    def _settle(
        self,
        images: list[tuple[PendingImages, list[tuple[str, bytes]]]],
        events: list[Outgoing],
        replies: list[Any],
    ) -> Exception | None:
        """Account for the replies; the first event write that failed, if any."""
        failure: Exception | None = None
        first = 0
        with self._lock:
            for buffer, sent in images:
                buffer.settle(sent, replies[first : first + len(sent)])
                first += len(sent)
            event_replies = replies[first : first + len(events)]
            written = 0
            for item, reply in zip(events, event_replies, strict=True):
                if isinstance(reply, Exception):
                    # Not a connection problem: e.g. the events key holds another type. Keep the
                    # event and everything after it, in order, and retry after a backoff.
                    failure = reply
                    break
                written = item.number
                if not reply:  # the script's false: already written before (nil or RESP3 false)
                    self._stats.events_deduplicated += 1
                else:
                    self._stats.events_written += 1
            self._outbox.settle(written)
        return failure

    def _service_value(self) -> bytes:
        return encoding.service_value(
            self.instance, self._started_at, self._clock(), sorted(self._online)
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value



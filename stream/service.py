"""One running service process: engines, Redis, the pipeline and the streams it analyses.

``Service.start()`` loads and warms the engines (so that readiness means "can score now"),
connects the publisher (an unreachable Redis is an outage to ride out, not a start-up error),
and starts the configured streams. The HTTP API and the CLI commands drive it; it never raises
on bad stream input, which stays inside that stream's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from importlib.metadata import version as dist_version
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from engines import stream_calibrations
from engines.clip_detector import LNCLIPDetector
from engines.deepfake_detector import DetectorInfo, load_model
from stream.analysis import Analyser, CropPolicy
from stream.backoff import Backoff
from stream.config import Settings, StreamSpec
from stream.heatmaps import HeatmapWorker
from stream.metrics import ServiceMetrics
from stream.pipeline import Pipeline, StreamSlot
from stream.publish.publisher import Publisher
from stream.redis_contract import RedisKeys, connect
from stream.redis_server import EmbeddedRedis
from stream.scoring import StreamScoring
from stream.sources.base import DropCause, FrameSource
from stream.sources.pyav import PyAVSource
from stream.sources.urls import UrlRefused, check_url, redact
from stream.thresholds import (
    ThresholdError,
    ThresholdListener,
    ThresholdStore,
    ThresholdUpdate,
)
from stream.webrtc.sessions import WhipSessions

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 1.0


class Service:
    """Everything one process runs; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.version = dist_version("dfstream")
        self.metrics = ServiceMetrics()
        self.keys = RedisKeys(settings.redis.prefix)
        self.redis_url: str = settings.redis.url or ""
        self.embedded_redis: EmbeddedRedis | None = None
        self.detector_info: DetectorInfo | None = None
        self.analyser: Analyser | None = None
        self.publisher: Publisher | None = None
        self.listener: ThresholdListener | None = None
        self.pipeline: Pipeline | None = None
        self.heatmaps: HeatmapWorker | None = None
        self.whip: WhipSessions | None = None
        self._client: aioredis.Redis | None = None
        self._thresholds: ThresholdStore | None = None
        self._warm = False
        self._status_task: asyncio.Task[None] | None = None
        self._waiting: dict[str, StreamSpec] = {}
        """Configured streams waiting for Redis to answer (their epoch needs it)."""
        self._waiting_task: asyncio.Task[None] | None = None
        self._scores_dropped = 0
        """The publisher's count of dropped live scores that the metrics have seen."""
        self._streams_lock = asyncio.Lock()
        self._started_at = time.time()
        self._superseded: dict[str, int] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start everything; on failure, release what was started (no orphan redis-server)."""
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        settings = self.settings
        loop = asyncio.get_running_loop()
        # Loading engines takes seconds: off the event loop, so health checks still answer.
        # One after the other: torch's ONNX exporter keeps global state.
        analyser, detector_info = await loop.run_in_executor(
            None, Analyser.load, settings, CropPolicy.live(settings.pipeline)
        )
        self.analyser, self.detector_info = analyser, detector_info
        await loop.run_in_executor(None, self._warm_up)
        if not self.redis_url:
            self.embedded_redis = EmbeddedRedis().start()
            self.redis_url = self.embedded_redis.url
            log.info("no redis.url configured: embedded redis-server at %s", self.redis_url)
        self._client = connect(self.redis_url, timeout_s=settings.redis.socket_timeout_s)
        self._thresholds = ThresholdStore.from_settings(self._client, settings)
        with contextlib.suppress(RedisError, OSError):
            await self._thresholds.seed(settings.scoring.thresholds)
        self.listener = ThresholdListener(
            self.redis_url,
            prefix=settings.redis.prefix,
            fallback=settings.scoring.thresholds,
            reconnect_base_s=settings.redis.reconnect_base_s,
            reconnect_cap_s=settings.redis.reconnect_cap_s,
        )
        await self.listener.start()
        self.publisher = Publisher.from_settings(settings.redis, self.redis_url)
        await self.publisher.start()
        self.metrics.watch_sources(self._source_stats)
        if settings.scoring.heatmap:
            self.heatmaps = HeatmapWorker(self._heatmap_model, self.publisher.put_heatmap)
        self.pipeline = Pipeline(
            analyser,
            self.publisher,
            settings.pipeline,
            thresholds=self.listener,
            metrics=self.metrics,
            heatmaps=self.heatmaps,
        )
        self.pipeline.start()
        if settings.webrtc.enabled:
            self.whip = WhipSessions(
                self, settings.webrtc, settings.ingest, self.pipeline.notify, self.metrics
            )
        self._status_task = asyncio.create_task(self._report_status(), name="dfstream-status")
        for spec in settings.streams:
            await self._start_configured(spec)
        if self._waiting:
            self._waiting_task = asyncio.create_task(
                self._start_when_redis_answers(), name="dfstream-waiting-streams"
            )

    async def _start_configured(self, spec: StreamSpec) -> bool:
        """Start a configured stream; one that needs Redis (for its epoch) waits for it."""
        try:
            await self.add_stream(spec)
        except (KeyError, ValueError) as exc:
            log.error("configured stream %s not started: %s", spec.id, exc)
        except RedisError as exc:
            if spec.id not in self._waiting:
                log.warning("configured stream %s waits for Redis: %s", spec.id, exc)
            self._waiting[spec.id] = spec
            return False
        self._waiting.pop(spec.id, None)
        return True

    async def _start_when_redis_answers(self) -> None:
        backoff = Backoff(self.settings.redis.reconnect_base_s, self.settings.redis.reconnect_cap_s)
        while self._waiting:
            await asyncio.sleep(backoff.next_delay())
            for spec in list(self._waiting.values()):
                if not await self._start_configured(spec):
                    break

    def _heatmap_model(self) -> LNCLIPDetector:
        """A CPU torch copy of the very detector the scorer runs (its bundle, pinned: another
        one installed since start-up must not explain this one's scores)."""
        assert self.detector_info is not None
        config = self.settings.detector
        if self.detector_info.bundle_path is not None:
            config = config.model_copy(update={"bundle": self.detector_info.bundle_path})
        model, _ = load_model(config)
        return model

    def _warm_up(self) -> None:
        """Run each engine once so the first real frame does not pay for lazy initialisation."""
        assert self.analyser is not None
        self.analyser.warm_up()
        self._warm = True

    async def close(self) -> None:
        """Graceful shutdown: streams stopped, open alerts ended, outbox flushed, offline events
        written, liveness released."""
        for task in (self._status_task, self._waiting_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.whip is not None:
            await self.whip.close()
        if self.pipeline is not None:
            for slot in self.pipeline.slots():
                await self.remove_stream(slot.source.stream_id, reason="shutdown")
            await asyncio.get_running_loop().run_in_executor(None, self.pipeline.stop)
        if self.heatmaps is not None:  # before the publisher: their JPEGs go out with it
            await asyncio.get_running_loop().run_in_executor(None, self.heatmaps.close)
        if self.publisher is not None:
            await self.publisher.close()
        if self.listener is not None:
            await self.listener.close()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
        if self.embedded_redis is not None:
            self.embedded_redis.close()

    # -- streams ------------------------------------------------------------------------------

    def has_stream(self, stream_id: str) -> bool:
        return self.pipeline is not None and self.pipeline.slot(stream_id) is not None

    async def add_stream(
        self, spec: StreamSpec, source: FrameSource | None = None
    ) -> dict[str, Any]:
        """Start analysing ``spec``, read from its URL or from ``source`` (a WHIP session's).
        KeyError: the id is taken; ValueError: the URL is refused; RedisError: Redis is
        unreachable (nothing is started)."""
        assert self.pipeline is not None and self.publisher is not None
        if source is None:
            try:
                check_url(spec.url, self.settings.ingest)
            except UrlRefused as exc:
                raise ValueError(str(exc)) from None
        calibration = None
        if spec.calibration is not None:
            assert self.detector_info is not None
            try:
                calibration = stream_calibrations.load(spec.calibration)
                calibration.check_weights(self.detector_info.weights_id)
            except stream_calibrations.StreamCalibrationError as exc:
                raise ValueError(f"stream {spec.id!r}: {exc}") from None
        async with self._streams_lock:
            if self.pipeline.slot(spec.id) is not None:
                raise KeyError(f"stream {spec.id!r} already exists")
            epoch = await self._next_epoch(spec.id)
            if source is None:
                source = PyAVSource.from_spec(
                    spec, self.settings.ingest, on_frame=self.pipeline.notify
                )
            assert self.listener is not None
            thresholds, version = self.listener.for_stream(spec.id)
            scoring = StreamScoring.from_settings(
                spec.id, self.settings.scoring, thresholds, version
            )
            self.pipeline.add(source, scoring, calibration)
            await self._register(spec)
            self.publisher.stream_added(spec.id, epoch=epoch, url=spec.url)
            source.start()
            self.metrics.streams.set(len(self.pipeline.slots()))
        log.info("stream %s added (%s), epoch %d", spec.id, redact(spec.url), epoch)
        found = self.get_stream(spec.id)
        assert found is not None
        return found

    async def remove_stream(
        self, stream_id: str, *, reason: str = "removed", forget: bool | None = None
    ) -> dict[str, Any] | None:
        """Stop analysing a stream: its final view (status ``offline``; no frame of it is
        analysed after it), or None when there is no such stream. ``forget`` (default: when
        removed) also drops it from the streams hash; a configured stream stopped at shutdown
        stays there."""
        assert self.pipeline is not None and self.publisher is not None
        async with self._streams_lock:
            slot = self.pipeline.remove(stream_id)
            if slot is None:
                return None
            await asyncio.get_running_loop().run_in_executor(None, slot.source.stop)
            ended = {**self._view(stream_id, slot), "status": "offline"}
            last = slot.last
            final = slot.scoring.finish(
                seq=last.seq if last else 0,
                pts=last.pts if last else 0.0,
                captured_at=last.captured_at if last else time.time(),
                now=time.time(),
            )
            self.publisher.stream_offline(stream_id, reason=reason, final_events=final)
            if forget if forget is not None else reason == "removed":
                await self._unregister(stream_id)
            # Its series go with it: streams that come and go (calls) must not pile them up.
            for per_stream in (self.metrics.frames_analysed, self.metrics.faces):
                with contextlib.suppress(KeyError):  # it never had an analysed frame
                    per_stream.remove(stream_id)
            self.metrics.streams.set(len(self.pipeline.slots()))
        log.info("stream %s stopped (%s)", stream_id, reason)
        return ended

    def list_streams(self) -> list[dict[str, Any]]:
        if self.pipeline is None:
            return []
        views = (self.get_stream(slot.source.stream_id) for slot in self.pipeline.slots())
        return sorted((v for v in views if v is not None), key=lambda v: v["id"])

    def get_stream(self, stream_id: str) -> dict[str, Any] | None:
        slot = self.pipeline.slot(stream_id) if self.pipeline is not None else None
        return None if slot is None else self._view(stream_id, slot)

    def _view(self, stream_id: str, slot: StreamSlot) -> dict[str, Any]:
        stats = slot.source.stats()
        last = slot.last
        return {
            "id": stream_id,
            "url": stats.url,
            "status": stats.status.stream_status,
            "source_status": stats.status.value,
            "last_error": slot.last_error or stats.last_error,
            "reconnects": stats.reconnects,
            "next_retry_in_s": stats.next_retry_in_s,
            "fps_in": round(stats.fps_in, 2),
            "fps_analysed": round(slot.analysed_fps(), 2),
            "frames_analysed": slot.analysed,
            "dropped": stats.dropped,
            "width": stats.width,
            "height": stats.height,
            "codec": stats.codec,
            "calibration": slot.calibration.name if slot.calibration else None,
            "state": last.state.value if last else "clear",
            "p_stream": last.p_stream if last else None,
            "faces": len(last.faces) if last else 0,
            "seq": last.seq if last else None,
            "config_version": slot.scoring.config_version,
        }

    def history(self, stream_id: str) -> dict[str, Any] | None:
        """The stream's recent scores (stream/history.py), oldest first; None: no such stream.
        ``now`` is this service's clock, so that a viewer can place the points on its own."""
        slot = self.pipeline.slot(stream_id) if self.pipeline is not None else None
        if slot is None:
            return None
        now = time.time()
        return {
            "stream": stream_id,
            "now": now,
            "window_s": slot.history.window_s,
            "points": [point._asdict() for point in slot.history.points(now)],
        }

    def _source_stats(self) -> list[Any]:
        return [slot.source.stats() for slot in self.pipeline.slots()] if self.pipeline else []

    async def _next_epoch(self, stream_id: str) -> int:
        """A fresh fencing epoch for this acquisition of the stream (fencing: docs/redis.md).
        Only Redis can give one: a made-up epoch could fall below the stream's last one, and
        subscribers would then ignore the stream's messages as a stale worker's. So without
        Redis this raises (a RedisError; the API answers 503)."""
        assert self._client is not None
        try:
            return int(await self._client.incr(self.keys.epoch(stream_id)))
        except (RedisError, OSError) as exc:
            raise RedisConnectionError(
                f"no fencing epoch for stream {stream_id!r} from Redis {redact(self.redis_url)} "
                f"({exc})"
            ) from exc

    async def _register(self, spec: StreamSpec) -> None:
        """The streams hash names the streams that thresholds may be set for."""
        assert self._client is not None
        record = spec.model_dump(mode="json")
        record["url"] = redact(spec.url)  # camera credentials stay out of Redis
        with contextlib.suppress(RedisError, OSError):
            await self._client.hset(self.keys.streams, spec.id, json.dumps(record))

    async def _unregister(self, stream_id: str) -> None:
        assert self._client is not None
        with contextlib.suppress(RedisError, OSError):
            await self._client.hdel(self.keys.streams, stream_id)

    async def _report_status(self) -> None:
        """Source status and rates into each stream's state hash, once a second."""
        assert self.publisher is not None
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            if self.pipeline is None:
                continue
            stats = self.publisher.stats
            self.metrics.outbox_depth.set(stats.events_pending)
            if stats.scores_dropped > self._scores_dropped:
                self.metrics.publish_dropped.inc(stats.scores_dropped - self._scores_dropped)
                self._scores_dropped = stats.scores_dropped
            for slot in self.pipeline.slots():
                source = slot.source.stats()
                # Frames skipped on purpose (over the fps cap, non-reference) are not drops;
                # superseded ones are: analysis did not keep up with this stream.
                superseded = source.dropped.get(DropCause.SUPERSEDED.value, 0)
                previous = self._superseded.get(source.stream_id, superseded)
                self._superseded[source.stream_id] = superseded
                self.publisher.stream_status(
                    source.stream_id,
                    source.status.stream_status,
                    fps_in=source.fps_in,
                    fps_analysed=slot.analysed_fps(),
                    fps_dropped=max(0, superseded - previous) / STATUS_INTERVAL_S,
                )

    # -- what the API reads -------------------------------------------------------------------

    async def readiness(self) -> dict[str, tuple[bool, str]]:
        checks: dict[str, tuple[bool, str]] = {
            "engines": (self._warm, "loaded and warmed up" if self._warm else "loading"),
        }
        if self._client is None:
            checks["redis"] = (False, "not connected yet")
        else:
            try:
                async with asyncio.timeout(1.0):
                    await self._client.ping()
                checks["redis"] = (True, redact(self.redis_url))
            except (RedisError, OSError, TimeoutError) as exc:
                checks["redis"] = (False, f"{redact(self.redis_url)}: {exc}")
        return checks

    def info(self) -> dict[str, Any]:
        face_detector = self.analyser.face_stage.detector if self.analyser else None
        return {
            "version": self.version,
            "started_at": self._started_at,
            "redis": {"url": redact(self.redis_url), "prefix": self.settings.redis.prefix},
            "detector": self.detector_info.as_dict() if self.detector_info else None,
            "face_detector": {
                "name": getattr(face_detector, "name", None),
                "device": getattr(face_detector, "device", None),
            },
        }

    async def get_thresholds(self, stream: str | None) -> dict[str, Any]:
        assert self._thresholds is not None
        book = await self._thresholds.get()
        view = book.to_dict()
        if stream is not None:
            if stream not in await self._thresholds.known_streams():
                raise ThresholdError(f"unknown stream {stream!r}", unknown_stream=True)
            view["stream"] = stream
            view["effective"] = book.for_stream(stream).model_dump()
        return view

    async def set_thresholds(self, update: ThresholdUpdate, stream: str | None) -> dict[str, Any]:
        assert self._thresholds is not None
        book = await self._thresholds.set(update, stream)
        return book.to_dict()

    async def recent_events(self, count: int, stream: str | None) -> list[dict[str, Any]]:
        assert self._client is not None
        try:
            entries: Any = await self._client.xrevrange(
                self.keys.events, count=count if stream is None else count * 20
            )
        except (RedisError, OSError):
            return []
        events = []
        for entry_id, fields in entries:
            raw = fields.get(b"event") or fields.get("event")
            if raw is None:
                continue
            event = json.loads(raw)
            if stream is not None and event.get("stream") != stream:
                continue
            event["id"] = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            events.append(event)
            if len(events) >= count:
                break
        return events

    async def evidence(self, event_id: str) -> bytes | None:
        return await self._image(self.keys.evidence(event_id))

    async def heatmap(self, event_id: str) -> bytes | None:
        return await self._image(self.keys.heatmap(event_id))

    async def _image(self, key: str) -> bytes | None:
        """A JPEG the publisher stored under ``key``; None when absent (expired, never made)
        or Redis is unreachable."""
        assert self._client is not None
        try:
            data = await self._client.get(key)
        except (RedisError, OSError):
            return None
        if data is None:
            return None
        return data if isinstance(data, bytes) else data.encode()

    @contextlib.asynccontextmanager
    async def subscribe_live(self) -> AsyncIterator[AsyncIterator[tuple[str, dict[str, Any]]]]:
        """Live score messages and events from Pub/Sub, for the dashboard (at-most-once)."""
        client = connect(self.redis_url, timeout_s=5.0, per_reply_timeout=False)
        pubsub = client.pubsub(ignore_subscribe_messages=True)

        async def messages() -> AsyncIterator[tuple[str, dict[str, Any]]]:
            async for message in pubsub.listen():
                if message["type"] not in ("message", "pmessage"):
                    continue
                kind = "score" if message.get("pattern") else "event"
                with contextlib.suppress(ValueError):
                    yield kind, json.loads(message["data"])

        try:
            await pubsub.psubscribe(self.keys.scores("*"))
            await pubsub.subscribe(self.keys.events)
            yield messages()
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
                await client.aclose()

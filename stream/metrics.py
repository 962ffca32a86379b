"""Prometheus metrics of one service process, in a registry of its own.

Counters that sources already keep (frames in, drops by cause, reconnects) are read at scrape
time from their stats rather than mirrored, so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from stream.sources.base import SourceStats, SourceStatus

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75, 1, 2, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class SourceCollector(Collector):
    """Per-stream ingest counters, read from the live sources when scraped."""

    def __init__(self, stats: Callable[[], Iterable[SourceStats]]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        frames = CounterMetricFamily(
            "dfstream_frames_decoded", "Frames decoded per stream", labels=["stream"]
        )
        delivered = CounterMetricFamily(
            "dfstream_frames_delivered", "Frames handed to analysis per stream", labels=["stream"]
        )
        dropped = CounterMetricFamily(
            "dfstream_frames_dropped", "Frames dropped per stream and cause",
            labels=["stream", "cause"],
        )
        reconnects = CounterMetricFamily(
            "dfstream_reconnects", "Reconnects per stream", labels=["stream"]
        )
        fps_in = GaugeMetricFamily("dfstream_fps_in", "Decoded frames/s", labels=["stream"])
        status = GaugeMetricFamily(
            "dfstream_stream_status", "1 for the stream's current status",
            labels=["stream", "status"],
        )
        for s in self._stats():
            frames.add_metric([s.stream_id], s.frames_decoded)
            delivered.add_metric([s.stream_id], s.frames_delivered)
            for cause, count in s.dropped.items():
                dropped.add_metric([s.stream_id, cause], count)
            reconnects.add_metric([s.stream_id], s.reconnects)
            fps_in.add_metric([s.stream_id], s.fps_in)
            for candidate in SourceStatus:
                status.add_metric([s.stream_id, candidate.value], float(candidate == s.status))
        yield from (frames, delivered, dropped, reconnects, fps_in, status)


class ServiceMetrics:
    """The metrics the pipeline and publisher update as they work."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames_analysed = Counter(
            "dfstream_frames_analysed", "Frames analysed per stream", ["stream"], registry=r
        )
        self.faces = Counter("dfstream_faces", "Faces scored per stream", ["stream"], registry=r)
        self.stage_seconds = Histogram(
            "dfstream_stage_seconds", "Time per batch in each stage", ["stage"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "dfstream_batch_size", "Items per batch", ["stage"], buckets=BATCH_BUCKETS, registry=r
        )
        self.end_to_end_seconds = Histogram(
            "dfstream_end_to_end_seconds", "Frame decoded to score published",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge(
            "dfstream_queue_depth", "Frames waiting between stages", ["queue"], registry=r
        )
        self.streams = Gauge("dfstream_streams", "Streams configured", registry=r)
        self.events = Counter("dfstream_events", "Events emitted", ["type"], registry=r)
        self.publish_dropped = Counter(
            "dfstream_publish_dropped", "Live score messages dropped (Redis unreachable)",
            registry=r,
        )
        self.outbox_depth = Gauge(
            "dfstream_outbox_depth", "Events waiting for Redis", registry=r
        )
        self.whip_sessions = Gauge(
            "dfstream_whip_sessions", "WebRTC publishers connected over WHIP", registry=r
        )
        self.whip_refused = Counter(
            "dfstream_whip_refused", "WHIP requests refused, by HTTP status", ["status"],
            registry=r,
        )

    def watch_sources(self, stats: Callable[[], Iterable[SourceStats]]) -> None:
        self.registry.register(SourceCollector(stats))

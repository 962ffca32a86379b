"""Soak: live streams analysed for a long while, the process's resources sampled as it goes.

Each interval samples the service process's RSS, open file descriptors and threads, Redis's
``used_memory``, the analysed fps and the decoded -> received latency of the score messages (a
subscriber in a process of its own, as in the pipeline benchmark). A leak shows as a slope: each
series gets a least-squares slope per hour and that slope relative to the series' mean, so
"flat within noise" is a number. ``rss_per_stream_mb`` is the RSS with the streams minus the
RSS of the started service before any stream, divided by the streams: it includes what analysis
holds once (batch memory), which ``memory.py`` tells apart from what each stream holds.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream.bench.pipeline import BenchConfig, Subscriber, service_settings
from stream.config import Settings, StreamSpec
from stream.redis_server import EmbeddedRedis

PREFIX = "soak:"
TARGET_RSS_PER_STREAM_MB = 30.0


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 30.0
    streams: int = 16
    interval_s: float = 30.0
    fps: float = 5.0
    width: int = 640
    height: int = 360
    video_seconds: float = 60.0
    arch: str = "tiny"
    device: str = "cpu"
    backend: str = "auto"


def _sample(service: Any, redis_client: Any, subscriber: Subscriber, since: float,
            analysed_before: int, started: float) -> tuple[dict[str, Any], int]:
    import psutil

    process = psutil.Process()
    now = time.time()
    subscriber.drain()
    streams = {slot.source.stream_id for slot in service.pipeline.slots()}
    latency = subscriber.latencies_ms(streams, since, now)
    subscriber.records.clear()
    analysed = sum(slot.analysed for slot in service.pipeline.slots())
    sample = {
        "t_s": round(now - started, 1),
        "rss_mb": round(process.memory_info().rss / 2**20, 1),
        "fds": process.num_fds(),
        "threads": process.num_threads(),
        "redis_used_mb": round(int(redis_client.info("memory")["used_memory"]) / 2**20, 2),
        "fps_analysed": round((analysed - analysed_before) / max(1e-6, now - since), 2),
        "latency_p99_ms": round(float(np.percentile(latency, 99)), 1) if latency.size else None,
    }
    return sample, analysed


def trend(samples: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    """Least-squares slope of ``key`` per hour, and relative to its mean (per hour)."""
    points = [(s["t_s"], s[key]) for s in samples if s[key] is not None]
    if len(points) < 2:
        return {"slope_per_hour": None, "relative_per_hour": None}
    t, y = np.array(points, float).T
    slope = float(np.polyfit(t / 3600.0, y, 1)[0])
    mean = float(np.mean(y))
    return {"slope_per_hour": round(slope, 3),
            "relative_per_hour": round(slope / mean, 4) if mean else None}


async def _soak(cfg: SoakConfig, base: Settings, url: str, media: Path,
                subscriber: Subscriber, progress: Callable[[str], None]) -> dict[str, Any]:
    import psutil
    import redis

    from stream.service import Service

    bench = BenchConfig(fps=cfg.fps, arch=cfg.arch, device=cfg.device, backend=cfg.backend)
    service = Service(service_settings(base, bench, url, PREFIX, batching=True))
    client = redis.Redis.from_url(url)
    try:
        await service.start()
        idle_rss = psutil.Process().memory_info().rss / 2**20
        for index in range(cfg.streams):
            await service.add_stream(StreamSpec(id=f"soak-{index:03d}", url=str(media),
                                                loop=True, realtime=True))
        started = since = time.time()
        analysed = 0
        samples: list[dict[str, Any]] = []
        end = started + cfg.minutes * 60.0
        while time.time() < end:
            await asyncio.sleep(min(cfg.interval_s, max(0.0, end - time.time())))
            sample, analysed = _sample(service, client, subscriber, since, analysed, started)
            since = sample["t_s"] + started
            samples.append(sample)
            progress(f"{sample['t_s']:.0f} s: rss {sample['rss_mb']} MB, fds {sample['fds']}, "
                     f"threads {sample['threads']}, {sample['fps_analysed']} fps, p99 "
                     f"{sample['latency_p99_ms']} ms")
        info = service.detector_info
        assert info is not None
        detector = {k: info.as_dict()[k] for k in ("arch", "backend", "device", "precision")}
    finally:
        await service.close()
        client.close()
    rss_end = samples[-1]["rss_mb"] if samples else idle_rss
    per_stream = (rss_end - idle_rss) / cfg.streams
    keys = ("rss_mb", "fds", "threads", "redis_used_mb", "latency_p99_ms", "fps_analysed")
    return {
        "benchmark": "soak",
        "samples": samples,
        "trends": {key: trend(samples, key) for key in keys},
        "rss_idle_mb": round(idle_rss, 1),
        "rss_per_stream_mb": round(per_stream, 1),
        "targets": {"rss_per_stream_mb": TARGET_RSS_PER_STREAM_MB,
                    "rss_per_stream_met": per_stream <= TARGET_RSS_PER_STREAM_MB},
        "detector": detector,
        "config": asdict(cfg),
        "machine": {"cpus": os.cpu_count()},
    }


def run(cfg: SoakConfig, base: Settings | None = None,
        progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """The soak against a fresh local redis-server; the JSON-ready results."""
    from stream.samples import write_face_video

    with tempfile.TemporaryDirectory(prefix="dfstream-soak-") as tmp, EmbeddedRedis() as server:
        progress(f"writing a {cfg.video_seconds:g} s {cfg.width}x{cfg.height} face video")
        media = write_face_video(Path(tmp) / "face.mp4", cfg.width, cfg.height,
                                 seconds=cfg.video_seconds, fps=30, gop=30)
        url = f"redis://127.0.0.1:{server.port}/0"
        subscriber = Subscriber(url, [f"{PREFIX}scores:*"]).start()
        try:
            return asyncio.run(_soak(cfg, base or Settings(), url, media, subscriber, progress))
        finally:
            subscriber.stop()

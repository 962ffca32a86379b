"""Publisher benchmark: score messages per second and publish latency against a local Redis,
with ``redis-benchmark`` on the same server in the same run as the reference.

- Throughput: realistic score messages (one or two faces, JSON included) submitted as fast as
  the loop allows, yielding to the writer every ``batch`` messages as an analysis loop does
  between batches; messages/s counts until the last one is acknowledged.
- Latency: the same messages offered at a fixed rate (the target, 50,000/s, and the service's
  own rate, e.g. 100 streams at 5 fps); each message's time from ``publish()`` to Redis's reply.
- Reference: ``redis-benchmark`` PUBLISH of a message of the same size, unpipelined and
  pipelined, 50 connections, on the same server. For latency, the plainest client in the same
  run: one awaited redis-py PUBLISH per message at the service's rate, whose p99 is this
  machine's round trip at that moment (far from zero on a busy machine).
"""

from __future__ import annotations

import asyncio
import json
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from stream.config import Thresholds
from stream.publish.publisher import Publisher
from stream.redis_contract import connect
from stream.redis_server import EmbeddedRedis
from stream.scoring import FaceScore, ScoreResult, StreamScoring

TARGET_MESSAGES_PER_S = 50_000
TARGET_P99_MS = 2.0


@dataclass(frozen=True)
class BenchConfig:
    messages: int = 200_000
    streams: int = 100
    batch: int = 256
    latency_rate: float = TARGET_MESSAGES_PER_S
    latency_seconds: float = 2.0
    service_fps: float = 5.0
    redis_benchmark_requests: int = 200_000


def score_results(streams: int, frames: int, seed: int = 0) -> list[ScoreResult]:
    """Results as the scorer makes them: per stream one or two tracked faces, some alerts."""
    rng = np.random.default_rng(seed)
    results: list[ScoreResult] = []
    thresholds = Thresholds(min_duration_s=0.4, hold_s=0.6, cooldown_s=1.0, window_s=1.0)
    now = time.time()
    for s in range(streams):
        scorer = StreamScoring(f"cam-{s:03d}", thresholds, config_version=3)
        level = rng.uniform(0.05, 0.95)
        for seq in range(frames):
            faces = []
            for track in range(1 + (s % 2)):
                x = float(rng.uniform(0, 1600))
                y = float(rng.uniform(0, 800))
                p = float(np.clip(level + rng.normal(0, 0.1), 0, 1))
                faces.append(FaceScore(track + 1, (x, y, x + 180.5, y + 220.25),
                                       float(rng.uniform(0.9, 1.0)), p))
            t = now + seq / 5
            results.append(scorer.update(seq=seq, pts=seq / 5, captured_at=t, now=t, faces=faces))
    # Interleave streams, as frames of many streams arrive in the analysis loop.
    order = sorted(range(len(results)), key=lambda i: (results[i].seq, results[i].stream))
    return [results[i] for i in order]


def _percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    ms = np.asarray(samples) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
    }


async def _throughput(url: str, results: list[ScoreResult], cfg: BenchConfig) -> dict[str, Any]:
    pub = Publisher(url)
    await pub.start()
    await pub.wait_connected(10)
    for s in range(cfg.streams):
        pub.stream_online(f"cam-{s:03d}", epoch=1)
    await pub.flush(10)
    pool = len(results)
    start = time.perf_counter()
    for i in range(cfg.messages):
        pub.publish(results[i % pool])
        if i % cfg.batch == cfg.batch - 1:
            await asyncio.sleep(0)
    flushed = await pub.flush(120)
    elapsed = time.perf_counter() - start
    stats = pub.stats
    await pub.close()
    return {
        "messages_per_s": round(cfg.messages / elapsed),
        "seconds": round(elapsed, 3),
        "dropped": stats.scores_dropped,
        "flushed": flushed,
    }


async def _latency(
    url: str, results: list[ScoreResult], rate: float, seconds: float
) -> dict[str, Any]:
    samples: list[float] = []
    pub = Publisher(url, on_latency=samples.extend)
    await pub.start()
    await pub.wait_connected(10)
    await pub.flush(10)
    pool = len(results)
    sent = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        due = int(rate * elapsed) - sent
        for _ in range(due):
            pub.publish(results[sent % pool])
            sent += 1
        await asyncio.sleep(0.0005)
    await pub.flush(30)
    achieved = sent / (time.perf_counter() - start)
    stats = pub.stats
    await pub.close()
    return {"offered_msg_s": rate, "achieved_msg_s": round(achieved), "messages": sent,
            "dropped": stats.scores_dropped, **_percentiles(samples)}


async def _bare_latency(
    url: str, results: list[ScoreResult], rate: float, seconds: float
) -> dict[str, Any]:
    """The same messages, each encoded and sent with one awaited PUBLISH: the plainest client,
    whose latency is the machine's round trip in this run."""
    client = connect(url)
    samples: list[float] = []
    start = time.perf_counter()
    for sent in range(int(rate * seconds)):
        due = start + sent / rate
        if (wait := due - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        r = results[sent % len(results)]
        t = time.perf_counter()
        message = {"v": 1, "stream": r.stream, "seq": r.seq, "p_stream": r.p_stream,
                   "faces": [{"track": f.track, "box": f.box, "p_fake": f.p_fake} for f in r.faces]}
        await client.publish(f"dfstream:scores:{r.stream}", orjson.dumps(message))
        samples.append(time.perf_counter() - t)
    await client.aclose()
    return {"offered_msg_s": rate, "messages": len(samples), **_percentiles(samples)}


def _redis_benchmark(
    port: int, payload: bytes, requests: int, pipeline: int, connections: int = 50
) -> dict[str, Any]:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise RuntimeError("redis-benchmark not found: install redis-tools (Debian: redis-server)")
    out = subprocess.run(
        [binary, "-h", "127.0.0.1", "-p", str(port), "-c", str(connections), "-n", str(requests),
         "-P", str(pipeline), "-q", "--csv", "PUBLISH", "dfstream:scores:bench",
         payload.decode()],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    row = out.strip().splitlines()[-1]
    rps, _avg, _min, p50, _p95, p99, _max = (float(v.strip('"')) for v in row.rsplit(",", 7)[1:])
    return {"publish_per_s": round(rps), "p50_ms": p50, "p99_ms": p99}


def _encode_us(message: dict[str, Any], encode: Callable[[Any], Any], n: int = 20_000) -> float:
    start = time.perf_counter()
    for _ in range(n):
        encode(message)
    return round((time.perf_counter() - start) / n * 1e6, 3)


def run(cfg: BenchConfig, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Run every phase against a fresh local redis-server; the JSON-ready results."""
    progress("building score messages")
    results = score_results(cfg.streams, max(1, 5000 // cfg.streams))
    sample = results[len(results) // 2]
    message = {
        "v": 1, "stream": sample.stream, "seq": sample.seq, "epoch": 1, "pts": sample.pts,
        "captured_at": sample.captured_at, "published_at": sample.captured_at,
        "faces": [{"track": f.track, "box": f.box, "det_score": f.det_score, "p_fake": f.p_fake,
                   "p_rolling": f.p_rolling} for f in sample.faces],
        "p_stream": sample.p_stream, "state": sample.state.value, "alert": sample.alert_id,
        "config_version": sample.config_version,
    }
    payload = orjson.dumps(message)
    with EmbeddedRedis() as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        progress(f"throughput: {cfg.messages} messages over {cfg.streams} streams")
        throughput = asyncio.run(_throughput(url, results, cfg))
        progress(f"latency at {cfg.latency_rate:.0f} msg/s for {cfg.latency_seconds}s")
        at_target = asyncio.run(_latency(url, results, cfg.latency_rate, cfg.latency_seconds))
        service_rate = cfg.streams * cfg.service_fps
        progress(f"latency at the service rate ({service_rate:.0f} msg/s)")
        at_service = asyncio.run(_latency(url, results, service_rate, cfg.latency_seconds))
        progress("redis-benchmark PUBLISH, unpipelined and pipelined (-P 16), 50 connections")
        plain = _redis_benchmark(server.port, payload, cfg.redis_benchmark_requests, 1)
        piped = _redis_benchmark(server.port, payload, cfg.redis_benchmark_requests * 4, 16)
        progress(f"baseline: one awaited redis-py PUBLISH per message at {service_rate:.0f} msg/s")
        bare = asyncio.run(_bare_latency(url, results, service_rate, cfg.latency_seconds))
        version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                 text=True).stdout.split()[2].removeprefix("v=")

    rate = throughput["messages_per_s"]
    return {
        "messages_per_s": rate,
        "p99_ms": at_target["p99_ms"],
        "p50_ms": at_target["p50_ms"],
        "throughput": throughput,
        "latency_at_target_rate": at_target,
        "latency_at_service_rate": at_service,
        "redis_benchmark": {"unpipelined": plain, "pipelined_16": piped, "connections": 50},
        "latency_baseline_redis_py": bare,
        "p99_ratio_vs_redis_py_at_service_rate": round(at_service["p99_ms"] / bare["p99_ms"], 2),
        "ratio_vs_redis_benchmark": round(rate / plain["publish_per_s"], 3),
        "ratio_vs_redis_benchmark_pipelined": round(rate / piped["publish_per_s"], 3),
        "targets": {"messages_per_s": TARGET_MESSAGES_PER_S, "p99_ms": TARGET_P99_MS},
        "meets_targets": rate >= TARGET_MESSAGES_PER_S and at_target["p99_ms"] <= TARGET_P99_MS,
        "message_bytes": len(payload),
        "encode_us": {"orjson": _encode_us(message, orjson.dumps),
                      "json": _encode_us(message, json.dumps)},
        "streams": cfg.streams,
        "transport": "tcp loopback, one connection, one pipeline per writer tick",
        "redis_server": version,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {_cpu_count()} CPU",
    }


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

"""Pipeline benchmark: how many live streams one process sustains at the analysis rate, the
latency from decode to published score at that load, and what cross-stream batching gains.

Everything on the path is the real one: generated H.264 face videos replayed as live by the
PyAV source (looped), the ``Service`` with its ``Pipeline`` (face detection, tracking, crops,
the crop scorer, scoring) and ``Publisher``, a real ``redis-server``, and a subscriber in a
separate process on ``{prefix}scores:*`` that timestamps every message as it arrives.

- Ramp: streams are added step by step (1, 2, 4, 6, 8, ...). At each step, after a warm-up,
  a window measures per stream the analysed fps and the frames superseded in its mailbox
  (analysis too slow to take them), and the latency ``received_at - captured_at`` of the
  score messages. A step is *sustained* when every stream keeps ``sustain_fraction`` of the
  analysis fps and (nearly) no frame is superseded; the ramp stops after
  ``failures_to_stop`` unsustained steps in a row.
- Batching gain: the same service settings with batching (``max_frames``, the scorer's
  ``max_batch``) against batch-1 (``max_frames=1``, scorer and detector ``max_batch=1``), same
  backends, same run. Each is saturated by streams read as fast as analysis takes them
  (lossless file sources), in alternating rounds so that machine noise falls on both alike;
  each gain is the median over rounds of batched / batch-1: analysed frames/s end to end
  (``batching_gain``), crops/s of the scorer stage alone (``scorer_batching_gain``), and the
  process's CPU time per analysed frame (``cpu_per_frame_gain``, which a busy machine disturbs
  least).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from stream.config import Settings, StreamSpec
from stream.redis_server import EmbeddedRedis

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

DEFAULT_RAMP = (1, 2, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112,
                128, 160, 192, 224, 256)
TARGET_P99_MS = 250.0
"""The target (docs/architecture.md, targets): decoded -> published p99 at 80% of capacity."""
TARGET_BATCHING_GAIN_CPU = 1.5
TARGET_BATCHING_GAIN_GPU = 3.0
LOAD_FOR_LATENCY = 0.8
DRAIN_GRACE_S = 0.3
"""Messages published just before a window closes still reach the subscriber after it."""


@dataclass(frozen=True)
class BenchConfig:
    ramp: tuple[int, ...] = DEFAULT_RAMP
    fps: float = 5.0
    width: int = 640
    height: int = 360
    video_seconds: float = 60.0
    warmup_s: float = 3.0
    window_s: float = 8.0
    sustain_fraction: float = 0.95
    max_superseded_fraction: float = 0.02
    failures_to_stop: int = 2
    max_frames: int = 16
    max_wait_ms: float = 20.0
    arch: str = "tiny"
    device: str = "auto"
    backend: str = "auto"
    gain_streams: int | None = None
    """Streams that saturate each mode of the batching comparison; default ``max_frames``."""
    gain_seconds: float = 6.0
    gain_rounds: int = 3


# -- the subscriber (a process of its own, as any client of the service) ------------------------


def _subscriber(url: str, patterns: list[str], conn: Connection) -> None:
    """Record (stream, seq, captured_at, received_at) of every score message; hand the records
    over on "drain", stop on "stop"."""
    import orjson
    import redis

    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(*patterns)
    records: list[tuple[str, int, float, float]] = []
    conn.send("ready")
    try:
        while True:
            message = pubsub.get_message(timeout=0.02)
            while message is not None:
                received = time.time()
                if message["type"] == "pmessage":
                    data = orjson.loads(message["data"])
                    records.append((data["stream"], data["seq"], data["captured_at"], received))
                message = pubsub.get_message(timeout=0)
            if conn.poll():
                command = conn.recv()
                conn.send(records)
                records = []
                if command == "stop":
                    return
    finally:
        pubsub.close()
        client.close()


class Subscriber:
    """The subscriber process and every record it has handed over so far."""

    def __init__(self, url: str, patterns: list[str]) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_subscriber, args=(url, patterns, child), name="bench-subscriber", daemon=True
        )
        self.records: list[tuple[str, int, float, float]] = []

    def start(self, timeout_s: float = 30.0) -> Subscriber:
        self._process.start()
        try:
            if not self._conn.poll(timeout_s):
                raise RuntimeError(f"the score subscriber did not start within {timeout_s:g} s")
            self._conn.recv()
        except (EOFError, RuntimeError) as exc:
            self._process.kill()
            raise RuntimeError(
                f"the score subscriber process failed to start ({exc or 'it exited'}); a script "
                "that runs the benchmark needs an `if __name__ == '__main__':` guard"
            ) from None
        return self

    def drain(self) -> None:
        self._conn.send("drain")
        self.records.extend(self._conn.recv())

    def stop(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(OSError, EOFError):
                self._conn.send("stop")
                if self._conn.poll(10):
                    self.records.extend(self._conn.recv())
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()

    def latencies_ms(self, streams: set[str], start: float, end: float) -> np.ndarray:
        return np.array([
            (received - captured) * 1000.0
            for stream, _, captured, received in self.records
            if stream in streams and start <= received <= end
        ])


# -- measuring a service ---------------------------------------------------------------------


@dataclass
class Snapshot:
    """Counters of one service at one moment."""

    at: float
    analysed: dict[str, int]
    faces: dict[str, int]
    superseded: dict[str, int]
    delivered: dict[str, int]
    batches: tuple[int, int]
    """(batches, frames in them) of the pipeline."""
    stage_seconds: dict[str, float]
    cpu_s: float


def snapshot(service: Any) -> Snapshot:
    import psutil

    pipeline = service.pipeline
    analysed, faces, superseded, delivered = {}, {}, {}, {}
    for slot in pipeline.slots():
        stats = slot.source.stats()
        sid = stats.stream_id
        analysed[sid] = slot.analysed
        faces[sid] = slot.faces
        superseded[sid] = stats.dropped.get("superseded", 0)
        delivered[sid] = stats.frames_delivered
    registry = service.metrics.registry
    stages = {
        stage: registry.get_sample_value("dfstream_stage_seconds_sum", {"stage": stage}) or 0.0
        for stage in ("detect", "score", "publish")
    }
    cpu = psutil.Process().cpu_times()
    return Snapshot(time.time(), analysed, faces, superseded, delivered, pipeline.batch_totals,
                    stages, cpu.user + cpu.system)


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {key: value - before.get(key, 0) for key, value in after.items() if key in before}


def _ms(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"p50": None, "p99": None, "max": None}
    return {
        "p50": round(float(np.percentile(values, 50)), 1),
        "p99": round(float(np.percentile(values, 99)), 1),
        "max": round(float(values.max()), 1),
    }


def measure(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    """Rates over the window between two snapshots of the same streams."""
    seconds = max(1e-6, after.at - before.at)
    analysed = _delta(after.analysed, before.analysed)
    faces = _delta(after.faces, before.faces)
    superseded = _delta(after.superseded, before.superseded)
    delivered = _delta(after.delivered, before.delivered)
    frames = sum(analysed.values())
    crops = sum(faces.values())
    batches = after.batches[0] - before.batches[0]
    batched_frames = after.batches[1] - before.batches[1]
    stage = {k: after.stage_seconds[k] - before.stage_seconds[k] for k in after.stage_seconds}
    fps = [count / seconds for count in analysed.values()]
    return {
        "seconds": round(seconds, 2),
        "frames_per_s": round(frames / seconds, 2),
        "crops_per_s": round(crops / seconds, 2),
        "fps_per_stream": {
            "min": round(min(fps), 2) if fps else 0.0,
            "mean": round(statistics.fmean(fps), 2) if fps else 0.0,
        },
        "superseded": sum(superseded.values()),
        "superseded_per_stream_max": max(superseded.values(), default=0),
        "superseded_fraction": round(
            sum(superseded.values()) / max(1, sum(delivered.values())), 4
        ),
        "frames_per_batch": round(batched_frames / batches, 2) if batches else None,
        "stage_ms_per_frame": {
            k: round(v * 1000 / frames, 3) if frames else None for k, v in stage.items()
        },
        "scorer_crops_per_s": round(crops / stage["score"], 1) if stage["score"] > 0 else None,
        "process_cpu": round((after.cpu_s - before.cpu_s) / seconds, 2),
        "cpu_ms_per_frame": round((after.cpu_s - before.cpu_s) * 1000 / frames, 2)
        if frames else None,
    }


# -- the run -----------------------------------------------------------------------------------


@dataclass
class _Run:
    cfg: BenchConfig
    progress: Progress
    media: Path
    subscriber: Subscriber
    levels: list[dict[str, Any]] = field(default_factory=list)


def service_settings(
    base: Settings, cfg: BenchConfig, url: str, prefix: str, *, batching: bool,
    scorer_backend: str | None = None,
) -> Settings:
    """The service's settings for one mode of the benchmark."""
    settings = base.model_copy(deep=True)
    settings.streams = []
    settings.redis.url = url
    settings.redis.prefix = prefix
    settings.ingest.allowed_schemes = sorted({*settings.ingest.allowed_schemes, "file"})
    settings.ingest.analysis_fps = cfg.fps
    settings.faces.device = cfg.device
    settings.detector.arch = cfg.arch  # type: ignore[assignment]
    settings.detector.device = cfg.device
    settings.detector.backend = (scorer_backend or cfg.backend)  # type: ignore[assignment]
    settings.detector.allow_untrained = True
    settings.pipeline.max_wait_ms = cfg.max_wait_ms
    if batching:
        settings.pipeline.max_frames = cfg.max_frames
    else:
        settings.pipeline.max_frames = 1
        settings.detector.max_batch = 1
        settings.faces.max_batch = 1
    return settings


async def _add_streams(
    service: Any, ids: Sequence[str], media: Path, *, realtime: bool, spread_s: float
) -> None:
    """Add streams spread over ``spread_s`` so that their frames do not all land at once (live
    cameras have no common phase)."""
    for index, stream_id in enumerate(ids):
        if index and spread_s > 0:
            await asyncio.sleep(spread_s / len(ids))
        await service.add_stream(
            StreamSpec(id=stream_id, url=str(media), loop=True, realtime=realtime)
        )


async def _remove_streams(service: Any, ids: Sequence[str]) -> None:
    for stream_id in ids:
        await service.remove_stream(stream_id)


async def _window(run: _Run, service: Any, seconds: float) -> tuple[Snapshot, Snapshot]:
    before = snapshot(service)
    await asyncio.sleep(seconds)
    after = snapshot(service)
    await asyncio.sleep(DRAIN_GRACE_S)
    run.subscriber.drain()
    return before, after


async def _ramp(run: _Run, service: Any) -> None:
    cfg = run.cfg
    ids: list[str] = []
    failures = 0
    for count in cfg.ramp:
        new = [f"live-{i:03d}" for i in range(len(ids), count)]
        await _add_streams(service, new, run.media, realtime=True, spread_s=1.0 / cfg.fps)
        ids.extend(new)
        await asyncio.sleep(cfg.warmup_s)
        before, after = await _window(run, service, cfg.window_s)
        level = {"streams": count, **measure(before, after)}
        level["latency_ms"] = _ms(run.subscriber.latencies_ms(set(ids), before.at, after.at))
        missing = [sid for sid in ids if sid not in after.analysed or sid not in before.analysed]
        level["sustained"] = (
            not missing
            and level["fps_per_stream"]["min"] >= cfg.sustain_fraction * cfg.fps
            and level["superseded_fraction"] <= cfg.max_superseded_fraction
        )
        level["load_average"] = round(os.getloadavg()[0], 2)
        run.levels.append(level)
        latency = level["latency_ms"]
        run.progress(
            f"{count:3d} streams: {level['fps_per_stream']['min']:.2f} fps/stream min "
            f"({level['fps_per_stream']['mean']:.2f} mean), superseded "
            f"{level['superseded']} ({level['superseded_fraction']:.1%}), latency p50 "
            f"{latency['p50']} p99 {latency['p99']} ms, {level['frames_per_batch']} frames/batch, "
            f"{level['process_cpu']:.2f} cores, load {level['load_average']}: "
            + ("sustained" if level["sustained"] else "NOT sustained")
        )
        failures = 0 if level["sustained"] else failures + 1
        if failures >= cfg.failures_to_stop:
            break
    run.progress(f"removing the {len(ids)} ramp streams")
    await _remove_streams(service, ids)


async def _saturated(run: _Run, service: Any, tag: str) -> dict[str, Any]:
    cfg = run.cfg
    count = cfg.gain_streams or cfg.max_frames
    ids = [f"{tag}-{i:03d}" for i in range(count)]
    await _add_streams(service, ids, run.media, realtime=False, spread_s=0.0)
    await asyncio.sleep(cfg.warmup_s)
    before, after = await _window(run, service, cfg.gain_seconds)
    await _remove_streams(service, ids)
    return {"streams": count, **measure(before, after)}


async def _batching(run: _Run, batched: Any, single: Any) -> dict[str, Any]:
    cfg = run.cfg
    rounds: dict[str, list[dict[str, Any]]] = {"batched": [], "batch1": []}
    for index in range(cfg.gain_rounds):
        order = [("batched", batched), ("batch1", single)]
        if index % 2:
            order.reverse()
        for mode, service in order:
            result = await _saturated(run, service, f"{mode}-r{index}")
            rounds[mode].append(result)
            run.progress(
                f"batching round {index + 1}/{cfg.gain_rounds}, {mode}: "
                f"{result['frames_per_s']:.1f} frames/s, {result['crops_per_s']:.1f} crops/s, "
                f"{result['frames_per_batch']} frames/batch, scorer "
                f"{result['scorer_crops_per_s']} crops/s, {result['cpu_ms_per_frame']} CPU ms "
                f"per frame, {result['process_cpu']:.2f} cores"
            )

    def median(mode: str, key: str) -> float | None:
        values = [r[key] for r in rounds[mode] if r[key] is not None]
        return round(statistics.median(values), 2) if values else None

    def gain(key: str, inverse: bool = False) -> float | None:
        """Median over rounds of batched / batch-1: the two runs of a round are adjacent in
        time, so a change in the machine's load between rounds cancels out."""
        ratios = []
        for a, b in zip(rounds["batched"], rounds["batch1"], strict=True):
            if a[key] and b[key]:
                ratios.append(b[key] / a[key] if inverse else a[key] / b[key])
        return round(statistics.median(ratios), 3) if ratios else None

    summary: dict[str, Any] = {}
    for key in ("frames_per_s", "crops_per_s", "scorer_crops_per_s", "cpu_ms_per_frame"):
        summary[key] = {
            "batched": median("batched", key), "batch1": median("batch1", key),
            "gain": gain(key, inverse=key == "cpu_ms_per_frame"),
        }
    summary["rounds"] = rounds
    return summary


def _latency_level(levels: list[dict[str, Any]], sustained: int) -> dict[str, Any] | None:
    """The step whose latency stands for the service: the largest sustained one at or below
    80% of the sustained maximum (the latency target), else the first step."""
    candidates = [
        level for level in levels
        if level["sustained"] and level["streams"] <= max(1, LOAD_FOR_LATENCY * sustained)
    ]
    if candidates:
        return max(candidates, key=lambda level: level["streams"])
    return levels[0] if levels else None


async def _run(run: _Run, base: Settings, url: str) -> dict[str, Any]:
    from stream.service import Service

    cfg = run.cfg
    run.progress(f"starting the batched service (max_frames {cfg.max_frames}, {cfg.arch})")
    batched = Service(service_settings(base, cfg, url, "bench-batched:", batching=True))
    single: Service | None = None
    try:
        await batched.start()
        info = batched.detector_info
        assert info is not None
        run.progress(f"crop scorer {info.backend} on {info.device} ({info.precision}); "
                     f"face detector {batched.info()['face_detector']['name']}")
        await _ramp(run, batched)
        run.progress("starting the batch-1 service (max_frames 1, max_batch 1)")
        single = Service(service_settings(base, cfg, url, "bench-batch1:", batching=False,
                                          scorer_backend=info.backend))
        await single.start()
        batching = await _batching(run, batched, single)
        return {"detector": info.as_dict(), "face_detector": batched.info()["face_detector"],
                "batching": batching}
    finally:
        await batched.close()
        if single is not None:
            await single.close()


def run(
    cfg: BenchConfig, base: Settings | None = None, progress: Progress = lambda _: None
) -> dict[str, Any]:
    """The whole benchmark against a fresh local redis-server; the JSON-ready results."""
    from stream.samples import write_face_video

    if not cfg.ramp or any(b <= a for a, b in zip(cfg.ramp, cfg.ramp[1:], strict=False)):
        raise ValueError(f"the ramp must be increasing stream counts, got {list(cfg.ramp)}")
    base = base or Settings()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="dfstream-bench-pipeline-") as tmp, \
            EmbeddedRedis() as server:
        progress(f"writing a {cfg.video_seconds:g} s {cfg.width}x{cfg.height} face video")
        media = write_face_video(Path(tmp) / "face.mp4", cfg.width, cfg.height,
                                 seconds=cfg.video_seconds, fps=30, gop=30)
        url = f"redis://127.0.0.1:{server.port}/0"
        subscriber = Subscriber(url, ["bench-batched:scores:*", "bench-batch1:scores:*"]).start()
        state = _Run(cfg, progress, media, subscriber)
        try:
            engines = asyncio.run(_run(state, base, url))
        finally:
            subscriber.stop()
    levels = state.levels
    sustained = max((lvl["streams"] for lvl in levels if lvl["sustained"]), default=0)
    at = _latency_level(levels, sustained)
    batching = engines["batching"]
    device = engines["detector"]["device"]
    on_gpu = device.startswith("cuda")
    gain = batching["frames_per_s"]["gain"]
    scorer_gain = batching["scorer_crops_per_s"]["gain"]
    target_gain = TARGET_BATCHING_GAIN_GPU if on_gpu else TARGET_BATCHING_GAIN_CPU
    p99 = at["latency_ms"]["p99"] if at else None
    return {
        "benchmark": "pipeline",
        "max_streams_sustained": sustained,
        "latency_ms": {**(at["latency_ms"] if at else _ms(np.array([]))),
                       "streams": at["streams"] if at else None},
        "batching_gain": gain,
        "scorer_batching_gain": scorer_gain,
        "cpu_per_frame_gain": batching["cpu_ms_per_frame"]["gain"],
        "max_frames_per_s": max((lvl["frames_per_s"] for lvl in levels), default=0.0),
        "targets": {
            "latency_p99_ms": TARGET_P99_MS,
            "latency_met": p99 is not None and p99 <= TARGET_P99_MS,
            "batching_gain": target_gain,
            "batching_met_end_to_end": gain is not None and gain >= target_gain,
            "batching_met_scorer": scorer_gain is not None and scorer_gain >= target_gain,
        },
        "levels": levels,
        "batching": batching,
        "config": asdict(cfg),
        "detector": {k: engines["detector"][k] for k in
                     ("arch", "trained", "backend", "device", "precision", "max_batch")},
        "face_detector": engines["face_detector"],
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "seconds": round(time.time() - started, 1),
    }

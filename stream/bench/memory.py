"""Memory by stream count: what one more live stream costs, apart from what the service holds
once, whatever its streams.

A soak's "RSS over streams" mixes two things: memory each stream holds (its decoder, mailbox,
tracker, scoring, history, reader thread) and memory analysis holds once but grows with the
batch sizes more streams bring (the detector's and scorer's activations, which ONNX Runtime's
arena keeps at their largest). So streams are added in steps (1, 4, 8, 16, 24, 32 by default),
each settled before the process is sampled: RSS, USS, threads, and glibc's heap figures, with
the frames per detection batch in that step. ``per_stream_mb`` is the least-squares slope of
RSS over the steps whose detection batches were full (``pipeline.max_frames``: analysis is
saturated and batch memory no longer grows); ``shared_mb`` is the rest above the idle service.
Give steps past saturation (on 2 cores with the tiny scorer, 24 and 32 streams are).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream.bench.pipeline import BenchConfig, service_settings
from stream.config import Settings, StreamSpec
from stream.redis_server import EmbeddedRedis

PREFIX = "memory:"
TARGET_RSS_PER_STREAM_MB = 30.0


@dataclass(frozen=True)
class MemoryConfig:
    steps: tuple[int, ...] = (1, 4, 8, 16, 24, 32)
    settle_s: float = 45.0
    fps: float = 5.0
    width: int = 640
    height: int = 360
    arch: str = "tiny"
    device: str = "cpu"
    backend: str = "auto"


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def glibc_heap() -> dict[str, float] | None:
    """glibc's own figures (MB): heap held in arenas, in mmapped blocks, in use and free in the
    arenas. None where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _Mallinfo2
    info = mallinfo2()
    mb = 2.0**20
    return {"arena_mb": round(info.arena / mb, 1), "mmapped_mb": round(info.hblkhd / mb, 1),
            "in_use_mb": round(info.uordblks / mb, 1),
            "free_in_arena_mb": round(info.fordblks / mb, 1)}


def _sample(pipeline: Any, streams: int, batches_before: tuple[int, int]) -> dict[str, Any]:
    import psutil

    process = psutil.Process()
    full = process.memory_full_info()
    batches, frames = pipeline.batch_totals
    done = batches - batches_before[0]
    return {
        "streams": streams,
        "rss_mb": round(full.rss / 2**20, 1),
        "uss_mb": round(full.uss / 2**20, 1),
        "threads": process.num_threads(),
        "frames_per_batch": round((frames - batches_before[1]) / done, 2) if done else None,
        "glibc": glibc_heap(),
    }


FULL = 0.9
"""A step whose detection batches average this share of ``pipeline.max_frames`` or more has
batches at their largest, so the batch memory analysis holds no longer grows."""


def fit(samples: Sequence[dict[str, Any]], idle_mb: float, max_frames: int) -> dict[str, Any]:
    """``per_stream_mb``: the slope of RSS over the steps whose batches were full (all steps if
    fewer than two were; ``batches_full`` says which); ``shared_mb``: the intercept above the
    idle service."""
    full = [s for s in samples
            if s.get("frames_per_batch") and s["frames_per_batch"] >= FULL * max_frames]
    used = full if len(full) >= 2 else list(samples)
    if len(used) < 2:
        return {"per_stream_mb": None, "shared_mb": None, "fitted_steps": [],
                "batches_full": False}
    x = np.array([s["streams"] for s in used], float)
    y = np.array([s["rss_mb"] for s in used], float)
    slope, intercept = np.polyfit(x, y, 1)
    return {"per_stream_mb": round(float(slope), 2),
            "shared_mb": round(float(intercept) - idle_mb, 1),
            "fitted_steps": [int(v) for v in x], "batches_full": used is full}


async def _measure(cfg: MemoryConfig, base: Settings, url: str, media: Path,
                   progress: Callable[[str], None]) -> dict[str, Any]:
    import psutil

    from stream.service import Service

    bench = BenchConfig(fps=cfg.fps, arch=cfg.arch, device=cfg.device, backend=cfg.backend)
    settings = service_settings(base, bench, url, PREFIX, batching=True)
    service = Service(settings)
    samples: list[dict[str, Any]] = []
    try:
        await service.start()
        pipeline = service.pipeline
        assert pipeline is not None
        idle = psutil.Process().memory_info().rss / 2**20
        added = 0
        for target in cfg.steps:
            while added < target:
                await service.add_stream(StreamSpec(id=f"mem-{added:03d}", url=str(media),
                                                    loop=True, realtime=True))
                added += 1
            await asyncio.sleep(cfg.settle_s / 3)  # the new streams' first batches
            before = pipeline.batch_totals
            await asyncio.sleep(cfg.settle_s * 2 / 3)
            samples.append(_sample(pipeline, added, before))
            progress(f"{added} streams: RSS {samples[-1]['rss_mb']} MB, "
                     f"{samples[-1]['frames_per_batch']} frames per batch")
        info = service.detector_info
        assert info is not None
        detector = {k: info.as_dict()[k] for k in ("arch", "backend", "device", "precision")}
    finally:
        await service.close()
    fitted = fit(samples, idle, settings.pipeline.max_frames)
    per_stream = fitted["per_stream_mb"]
    return {
        "benchmark": "memory",
        "rss_idle_mb": round(idle, 1),
        "samples": samples,
        **fitted,
        "max_frames": settings.pipeline.max_frames,
        "targets": {"rss_per_stream_mb": TARGET_RSS_PER_STREAM_MB,
                    "rss_per_stream_met": per_stream is not None
                    and per_stream <= TARGET_RSS_PER_STREAM_MB},
        "detector": detector,
        "config": asdict(cfg),
        "machine": {"cpus": os.cpu_count()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def run(cfg: MemoryConfig, base: Settings | None = None,
        progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """The steps against a fresh local redis-server; the JSON-ready results."""
    from stream.samples import write_face_video

    with tempfile.TemporaryDirectory(prefix="dfstream-memory-") as tmp, EmbeddedRedis() as server:
        media = write_face_video(Path(tmp) / "face.mp4", cfg.width, cfg.height, seconds=60.0,
                                 fps=30, gop=30)
        url = f"redis://127.0.0.1:{server.port}/0"
        return asyncio.run(_measure(cfg, base or Settings(), url, media, progress))

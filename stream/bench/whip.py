"""WHIP benchmark: latency from a frame sent by a WebRTC publisher to its score in Redis, and
how many concurrent publishers one process sustains at the analysis rate.

Everything is real: the service with its HTTP API under uvicorn (WHIP on), a redis-server,
aiortc publishers in a separate process sending the sample face video (VP8 or H.264, encoded
and decoded on the CPU), and beside them one RTSP camera (GStreamer) with the same video as
the same run's baseline. The publishers' process also subscribes to the scores: each score's
``pts`` names the frame it came from (the service's WHIP times start at 0 with the first frame;
the publisher's do too), so ``received - sent`` is the whole way: encode, RTP over loopback,
decode, detection, scoring, publishing. ``received - captured_at`` is the service's own part,
measured alike for the RTSP baseline. All ICE candidates are loopback ones: nothing leaves
the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from stream.config import Settings, StreamSpec
from stream.redis_server import EmbeddedRedis

Progress = Callable[[str], None]
PREFIX = "benchwhip:"
SUSTAIN_FRACTION = 0.9
PUBLISH_FPS = 15


def _publishers(conn: Connection, endpoint: str, redis_url: str, codec: str) -> None:
    """The publishers' process: commands from ``conn`` ("add", n) / ("measure", s) / "stop"."""
    import redis.asyncio as aioredis

    from stream.config import WebRTCSettings
    from stream.webrtc import rtc
    from stream.webrtc.client import LoopingTrack, WhipPublisher

    rtc.configure(WebRTCSettings(host_addresses=["127.0.0.1"]))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        records: list[tuple[str, float, float, float]] = []
        publishers: dict[str, WhipPublisher] = {}
        client = aioredis.Redis.from_url(redis_url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.psubscribe(f"{PREFIX}scores:*")

        async def listen() -> None:
            async for message in pubsub.listen():
                if message["type"] != "pmessage":
                    continue
                score = json.loads(message["data"])
                if score.get("pts") is not None and score.get("captured_at") is not None:
                    records.append((score["stream"], score["pts"], score["captured_at"],
                                    time.time()))

        listener = loop.create_task(listen())
        conn.send("ready")
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command == "stop":
                break
            verb, value = command
            if verb == "add":
                for index in range(len(publishers), len(publishers) + value):
                    stream = f"whip{index}"
                    publisher = WhipPublisher(f"{endpoint}/{stream}",
                                              LoopingTrack(fps=PUBLISH_FPS), codec=codec)
                    await publisher.start()
                    publishers[stream] = publisher
                conn.send("added")
            elif verb == "measure":
                records.clear()
                await asyncio.sleep(value)
                sent = {stream: p.track for stream, p in publishers.items()}
                rows = []
                for stream, pts, captured, received in records:
                    track = sent.get(stream)
                    sent_at = track.sent_at.get(track.index_of(pts)) if track else None
                    rows.append((stream, captured, received, sent_at))
                conn.send(rows)
        listener.cancel()
        for publisher in publishers.values():
            with contextlib.suppress(Exception):
                await publisher.close()
        await pubsub.aclose()
        await client.aclose()

    asyncio.run(main())


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "n": 0}
    array = np.asarray(values)
    return {"p50": round(float(np.percentile(array, 50)), 1),
            "p99": round(float(np.percentile(array, 99)), 1), "n": int(array.size)}


class _Server:
    """The service under uvicorn on a thread, as ``dfstream serve`` runs it."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from stream.api import create_app
        from stream.service import Service

        self.service = Service(settings)
        config = uvicorn.Config(create_app(self.service), host="127.0.0.1", port=0,
                                log_config=None, access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout_s: float = 120.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start (see the log)")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def run(base: Settings, *, steps: Sequence[int], window_s: float, warmup_s: float,
        codec: str, fps: float, arch: str, media_dir: Path,
        progress: Progress = lambda _line: None) -> dict[str, Any]:
    """Publishers ramped through ``steps``; see the module docstring."""
    from stream.rtsp_camera import RtspCamera
    from stream.samples import write_face_video

    media = media_dir / "bench_whip_480p.mp4"
    if not media.is_file():
        write_face_video(media, 640, 480, seconds=20.0, fps=PUBLISH_FPS, gop=30)
    settings = base.model_copy(deep=True)
    with EmbeddedRedis() as redis_server, RtspCamera(media) as camera:
        settings.redis.url = redis_server.url
        settings.redis.prefix = PREFIX
        settings.ingest.analysis_fps = fps
        settings.detector.arch = arch  # type: ignore[assignment]
        settings.detector.allow_untrained = True
        settings.webrtc.host_addresses = ["127.0.0.1"]
        settings.webrtc.max_sessions = max(steps) + 1
        settings.api.token = None
        settings.streams = [StreamSpec(id="rtsp0", url=camera.url)]
        server = _Server(settings)
        url = server.start()
        context = multiprocessing.get_context("spawn")
        conn, child = context.Pipe()
        process = context.Process(target=_publishers, daemon=True,
                                  args=(child, f"{url}/whip", redis_server.url, codec))
        process.start()
        try:
            if not conn.poll(60):
                raise RuntimeError("the publishers' process did not start")
            conn.recv()
            rows_out = []
            have = 0
            for count in steps:
                conn.send(("add", count - have))
                conn.recv()
                have = count
                progress(f"{count} WHIP publishers: warming up {warmup_s:g} s")
                time.sleep(warmup_s)
                conn.send(("measure", window_s))
                rows = conn.recv()
                step = _step(rows, count, window_s, fps)
                rows_out.append(step)
                progress(f"{count} publishers: min {step['fps_min']} fps, end to end p99 "
                         f"{step['end_to_end_ms']['p99']} ms, sustained {step['sustained']}")
                if not step["sustained"]:
                    break
        finally:
            with contextlib.suppress(OSError):
                conn.send("stop")
            process.join(30)
            if process.is_alive():
                process.kill()
            server.stop()
    sustained = [s["publishers"] for s in rows_out if s["sustained"]]
    return {
        "benchmark": "whip", "codec": codec, "analysis_fps": fps, "publish_fps": PUBLISH_FPS,
        "arch": arch, "resolution": "640x480", "window_s": window_s, "steps": rows_out,
        "max_sustained_publishers": max(sustained) if sustained else 0,
        "note": "publishers, service and redis-server share this machine's cores",
    }


def _step(rows: list[tuple[str, float, float, float | None]], count: int, window_s: float,
          fps: float) -> dict[str, Any]:
    whip = [r for r in rows if r[0].startswith("whip")]
    rtsp = [r for r in rows if r[0] == "rtsp0"]
    per_stream = {f"whip{i}": 0 for i in range(count)}
    for stream, *_ in whip:
        per_stream[stream] = per_stream.get(stream, 0) + 1
    fps_min = min(per_stream.values()) / window_s if per_stream else 0.0
    service = [(received - captured) * 1000 for _, captured, received, _ in whip]
    rtsp_service = [(received - captured) * 1000 for _, captured, received, _ in rtsp]
    end_to_end = [(received - sent) * 1000 for _, _, received, sent in whip if sent is not None]
    service_p = _percentiles(service)
    rtsp_p = _percentiles(rtsp_service)
    ratio = (round(service_p["p50"] / rtsp_p["p50"], 2)
             if service_p["p50"] and rtsp_p["p50"] else None)
    return {
        "publishers": count,
        "fps_min": round(fps_min, 2),
        "sustained": fps_min >= SUSTAIN_FRACTION * fps,
        "end_to_end_ms": _percentiles(end_to_end),
        "service_ms": service_p,
        "rtsp_service_ms": rtsp_p,
        "rtsp_fps": round(len(rtsp) / window_s, 2),
        "whip_vs_rtsp_service_p50": ratio,
    }

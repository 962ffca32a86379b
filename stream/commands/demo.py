"""``dfstream demo``: the whole service on a sample camera, with nothing to set up.

It writes (once; then it is cached) a video of a real face moving, serves it over loopback RTSP
with GStreamer's server as a camera that never stops, starts an embedded redis-server on a
loopback port, and runs the full service in this process: the pipeline, the HTTP API and the
dashboard. A live table shows each stream; ``dfstream watch --redis-url URL`` works from another
shell. Ctrl-C, SIGTERM or ``--duration`` shut it down gracefully.

The latency it reports is what a subscriber sees: it subscribes to the live score channels and,
for every message, takes the time it arrived minus the frame's ``captured_at`` (the wall clock
when the frame was decoded).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from stream.cli import ConfigOption, app, console, fail, settings_or_exit
from stream.commands.demo_view import ScoreProbe, untrained_banner, view
from stream.rtsp_camera import RtspCamera, RtspCameraError

if TYPE_CHECKING:

    from stream.config import DetectorSettings, Settings

log = logging.getLogger("dfstream.demo")

RTSP_PATH = "/demo"


@dataclass(frozen=True)
class Sample:
    """The generated camera: 640x360 keeps decoding light next to analysis on a small CPU."""

    width: int = 640
    height: int = 360
    fps: int = 30
    seconds: float = 10.0
    gop: int = 30

    @property
    def filename(self) -> str:
        return (f"demo-face-{self.width}x{self.height}-{self.fps}fps-{self.seconds:g}s-"
                f"gop{self.gop}.mp4")


def sample_video(sample: Sample = Sample()) -> tuple[Path, bool]:
    """The sample video and whether it came from the cache: in the model store's ``samples/``,
    else in the temp dir when the store is not writable."""
    from engines import store
    from stream.samples import write_face_video

    places = (store.home() / "samples", Path(tempfile.gettempdir()) / "dfstream-samples")
    problems = []
    for directory in places:
        path = directory / sample.filename
        if path.is_file():
            return path, True
        partial = directory / f".{os.getpid()}-{sample.filename}"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            write_face_video(partial, sample.width, sample.height, seconds=sample.seconds,
                             fps=sample.fps, gop=sample.gop)
            os.replace(partial, path)  # a crash never leaves a truncated sample behind
            return path, False
        except OSError as exc:
            partial.unlink(missing_ok=True)
            problems.append(f"{directory}: {exc}")
    raise fail("cannot write the sample video: " + "; ".join(problems))


@dataclass
class DetectorChoice:
    settings: DetectorSettings
    untrained_note: str | None = None
    """Why random weights and which architecture, when no trained detector is installed."""


def choose_detector(configured: DetectorSettings) -> DetectorChoice:
    """The configured bundle; else the best installed one of any architecture (ViT-L/14 first);
    else random weights: ViT-L/14 on a CUDA GPU, the ``tiny`` network on a CPU."""
    from engines.deepfake_detector import best_installed_bundle

    if configured.bundle is not None:
        return DetectorChoice(configured)
    for arch in dict.fromkeys((configured.arch, "ViT-L-14", "ViT-B-16")):
        best = best_installed_bundle(arch)
        if best is not None:
            return DetectorChoice(configured.model_copy(
                update={"arch": arch, "bundle": str(best.path)}))
    if _on_cuda(configured.device):
        arch = "ViT-L-14"
        note = "random-weight ViT-L/14 scorer on the GPU (the production architecture)"
    else:
        arch = "tiny"
        note = ("random-weight `tiny` scorer: on a CPU a ViT-L/14 cannot keep up with live "
                "video, so the demo runs a tiny network of the same interface instead "
                "(with a CUDA GPU it runs ViT-L/14)")
    return DetectorChoice(configured.model_copy(update={"arch": arch, "allow_untrained": True}),
                          note)


def _on_cuda(device: str) -> bool:
    if device == "cpu":
        return False
    from engines.devices import resolve_device

    return device.startswith("cuda") or resolve_device("auto").type == "cuda"


class StopRequest:
    """SIGINT/SIGTERM handler. Once the service runs (``graceful``), the first signal asks for
    a graceful stop and a second one stops at once; before that, any stops at once. Stopping
    at once is a KeyboardInterrupt, so the camera and Redis children are still ended."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.graceful = False
        self.signals = 0

    def __call__(self, signum: int, _frame: object) -> None:
        self.signals += 1
        if not self.graceful or self.signals > 1:
            raise KeyboardInterrupt
        self.reason = self.reason or signal.Signals(signum).name


@dataclass
class DemoRun:
    settings: Settings
    camera: RtspCamera
    streams: int
    untrained_note: str | None
    redis_url: str
    listener: socket.socket
    duration: float | None
    stop: StopRequest
    began: float
    dashboard: str = ""


@app.command()
def demo(
    duration: Annotated[float | None, typer.Option(
        min=1, help="Stop after this many seconds of streaming (default: run until Ctrl-C).",
        show_default=False)] = None,
    json_summary: Annotated[bool, typer.Option(
        "--json-summary", help="At the end, print a JSON summary on stdout (frames analysed, "
        "events, latency decoded -> received by a subscriber).")] = False,
    streams: Annotated[int, typer.Option(
        min=1, max=32, help="How many streams read the sample camera (each its own RTSP "
        "client).")] = 1,
    port: Annotated[int, typer.Option(
        min=0, max=65535, help="HTTP port of the API and dashboard (0: a free one).")] = 0,
    media: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="Serve this H.264 video instead of the generated "
        "face sample.", show_default=False)] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "WARNING",
    config: ConfigOption = None,
) -> None:
    """The full service on a sample camera: embedded Redis, a looping RTSP stream of a real
    face, the pipeline, the HTTP API and the dashboard, with a live table. Nothing to set up."""
    import asyncio

    from stream.commands.serve import check_bind, configure_logging
    from stream.redis_server import EmbeddedRedis, RedisServerError

    began = time.monotonic()
    settings = settings_or_exit(config)
    configure_logging(log_level.upper())
    check_bind(settings)

    stop = StopRequest()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    redis_server: EmbeddedRedis | None = None
    camera: RtspCamera | None = None
    listener: socket.socket | None = None
    try:
        if media is None:
            with console.status("writing the sample video (a real face, moving; once)"):
                media, cached = sample_video()
            console.print(f"[dim]sample video: {media}{' (cached)' if cached else ''}[/dim]",
                          soft_wrap=True)
        try:
            camera = RtspCamera(media, path=RTSP_PATH).start()
        except RtspCameraError as exc:
            raise fail(str(exc)) from None
        console.print(f"[dim]camera: {camera.url} (GStreamer RTSP server, looping)[/dim]",
                      soft_wrap=True)
        redis_url = settings.redis.url
        if redis_url is None:
            try:
                redis_server = EmbeddedRedis().start()
            except RedisServerError as exc:
                raise fail(str(exc)) from None
            redis_url = redis_server.url
        with console.status("looking for an installed detector"):
            choice = choose_detector(settings.detector)
        settings = settings.model_copy(update={
            "detector": choice.settings,
            "redis": settings.redis.model_copy(update={"url": redis_url}),
        })
        listener = _listen(settings.api.host, port)
        run = DemoRun(settings, camera, streams, choice.untrained_note, redis_url, listener,
                      duration, stop, began)
        stop.graceful = True
        summary = asyncio.run(_run(run))
    finally:
        if listener is not None:
            listener.close()
        if camera is not None:
            camera.stop()
        if redis_server is not None:
            redis_server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if json_summary:
        typer.echo(json.dumps(summary, indent=2))


def _listen(host: str, port: int) -> socket.socket:
    """Bind the API's socket here, so a taken port is a clear error before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _server_class() -> type:
    import uvicorn

    class DemoServer(uvicorn.Server):
        """The demo's own SIGINT/SIGTERM handlers stay in place while it serves: they stop the
        whole demo (streams, Redis, camera), not just the HTTP server."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return DemoServer


async def _run(run: DemoRun) -> dict[str, Any]:
    import asyncio

    import uvicorn
    from rich.live import Live

    from stream.api import create_app, end_live_feeds
    from stream.config import StreamSpec
    from stream.service import Service

    service = Service(run.settings)
    with console.status("loading the face detector and the scorer, warming them up"):
        try:
            await service.start()
        except Exception as exc:  # anything that stops start-up: say what, not a traceback
            log.debug("service start-up failed", exc_info=True)
            await service.close()
            raise fail(f"the service did not start: {exc}") from None
    info = service.detector_info
    assert info is not None
    port = run.listener.getsockname()[1]
    host = run.settings.api.host
    shown_host = f"[{host}]" if ":" in host else host
    run.dashboard = f"http://{shown_host}:{port}/"
    api = create_app(service, manage_service=False)
    server = _server_class()(uvicorn.Config(
        api, log_config=None, access_log=False, timeout_graceful_shutdown=5
    ))
    serving = asyncio.create_task(server.serve(sockets=[run.listener]))
    probe = ScoreProbe(run.redis_url, run.settings.redis.prefix)
    probe.start()
    await asyncio.to_thread(probe.subscribed.wait, 10)
    if not info.trained:
        console.print(untrained_banner(run.untrained_note))
    console.print(f"dashboard: {run.dashboard}", soft_wrap=True)
    console.print(f"watch from another shell: dfstream watch --redis-url {run.redis_url}",
                  soft_wrap=True)
    events_since = await _last_event_id(run)
    for index in range(run.streams):
        stream_id = "demo" if index == 0 else f"demo-{index + 1}"
        await service.add_stream(StreamSpec(id=stream_id, url=run.camera.url))
    started = time.monotonic()
    startup_s = started - run.began
    snapshot: list[dict[str, Any]] = []
    try:
        with Live(view(run, service, probe, 0.0), console=console, refresh_per_second=2,
                  transient=False) as live:
            while run.stop.reason is None and not serving.done():
                elapsed = time.monotonic() - started
                if run.duration is not None and elapsed >= run.duration:
                    run.stop.reason = "duration"
                    break
                snapshot = service.list_streams()
                live.update(view(run, service, probe, elapsed, snapshot))
                await asyncio.sleep(0.5)
            snapshot = service.list_streams()
            live.update(view(run, service, probe, time.monotonic() - started, snapshot))
        if not console.is_terminal:
            console.line()  # the last rendering of the table ends without one
    finally:
        elapsed = time.monotonic() - started
        console.print(f"[dim]stopping ({run.stop.reason or 'signal'}): streams, outbox, "
                      "Redis... (Ctrl-C again to stop at once)[/dim]")
        end_live_feeds(api)  # open dashboards would hold the graceful shutdown
        server.should_exit = True
        await serving
        await service.close()
        probe.stop()
    events = await _events_since(run, events_since)
    return {
        "duration_s": round(elapsed, 1),
        "startup_s": round(startup_s, 1),
        "dashboard": run.dashboard,
        "redis_url": run.redis_url,
        "rtsp_url": run.camera.url,
        "untrained": not info.trained,
        "detector": {"arch": info.arch, "trained": info.trained, "bundle": info.bundle,
                     "backend": info.backend, "device": info.device},
        "frames_analysed": {s["id"]: s["frames_analysed"] for s in snapshot},
        "streams": {s["id"]: {k: s[k] for k in ("status", "fps_in", "fps_analysed",
                                                "frames_analysed", "reconnects", "dropped",
                                                "last_error")} for s in snapshot},
        "scores_received": dict(probe.received),
        "events": {"count": len(events), "types": [e.get("type") for e in events],
                   "by_type": dict(Counter(str(e.get("type")) for e in events))},
        "latency_ms": {**probe.latency_ms(),
                       "measured": "received by a subscriber minus captured_at (decoded), "
                                   "every live score message"},
        "subscriber_error": probe.error,
    }


async def _last_event_id(run: DemoRun) -> str:
    """Where this run's events will start in the events Stream (a configured Redis may hold
    earlier runs' events)."""
    from stream.redis_contract import RedisKeys, connect

    client = connect(run.redis_url)
    try:
        last: Any = await client.xrevrange(RedisKeys(run.settings.redis.prefix).events, count=1)
    finally:
        await client.aclose()
    if not last:
        return "-"
    entry_id = last[0][0]
    return "(" + (entry_id.decode() if isinstance(entry_id, bytes) else entry_id)


async def _events_since(run: DemoRun, after: str) -> list[dict[str, Any]]:
    """This run's events from the durable Stream, the shutdown's included."""
    from redis.exceptions import RedisError

    from stream.redis_contract import RedisKeys, connect

    client = connect(run.redis_url)
    try:
        entries: Any = await client.xrange(RedisKeys(run.settings.redis.prefix).events,
                                           min=after)
    except (RedisError, OSError) as exc:
        console.print(f"[yellow]events not read back from Redis: {exc}[/yellow]")
        return []
    finally:
        await client.aclose()
    events = []
    for _entry_id, fields in entries:
        raw = fields.get(b"event") or fields.get("event")
        if raw is not None:
            events.append(json.loads(raw))
    return events

"""``dfstream demo``: the whole service on two sample cameras, with nothing to set up.

Without an installed detector it trains (once; then cached) the synthetic demo model
(``stream.demo_model``): a tiny detector trained on SYNTHETIC face swaps, shown on two cameras
made by the same generator from a held-out face, one real and one a face swap of it. The fake
camera should alert and the real one stay clear, under a banner that says plainly that the model
is a synthetic-data demo model and not a deepfake detector. With a trained detector installed
(``dfstream models``), that one scores the same two cameras.

The cameras are served over loopback RTSP with GStreamer's server (looping), an embedded
redis-server runs on a loopback port, and the full service runs in this process: the pipeline,
the HTTP API and the dashboard. A live table shows each stream; ``dfstream watch --redis-url URL``
works from another shell. Ctrl-C, SIGTERM or ``--duration`` shut it down gracefully.

The latency it reports is what a subscriber sees: it subscribes to the live score channels and,
for every message, takes the time it arrived minus the frame's ``captured_at`` (the wall clock
when the frame was decoded).
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from stream.cli import ConfigOption, app, console, progress_bar, settings_or_exit
from stream.commands.demo_view import ScoreProbe, detector_banner, status_line, view
from stream.rtsp_camera import RtspCamera
from stream.sources.urls import redact

if TYPE_CHECKING:

    from stream.config import Settings
    from stream.demo_model import DemoModel


MEDIA_CAMERA = "demo"
"""The one camera's name when ``--media`` gives the video."""
STATUS_LINE_EVERY_S = 5.0
"""How often the demo prints a status line when its output is a log, not a terminal."""


@dataclass
class DetectorChoice:
    settings: Settings
    note: str | None = None
    """What the banner adds: how the synthetic demo model was made and how it scores."""
    demo: DemoModel | None = None


def choose_detector(settings: Settings) -> DetectorChoice:
    """The configured bundle; else the best installed one of any architecture (ViT-L/14 first);
    else the synthetic demo model, trained here once, with its thresholds."""
    from engines.deepfake_detector import best_installed_bundle
    from stream.demo_model import demo_model

    configured = settings.detector
    if configured.bundle is not None:
        return DetectorChoice(settings)
    for arch in dict.fromkeys((configured.arch, "ViT-L-14", "ViT-B-16")):
        best = best_installed_bundle(arch)
        if best is not None:
            return DetectorChoice(settings.model_copy(update={"detector": configured.model_copy(
                update={"arch": arch, "bundle": str(best.path)})}))
    model = _train_demo_model(settings, demo_model)
    scoring = settings.scoring
    thresholds = scoring.thresholds.model_copy(update={
        "enter": model.thresholds["enter"], "exit": model.thresholds["exit"]})
    chosen = settings.model_copy(update={
        "detector": configured.model_copy(update={"arch": "tiny", "bundle": str(model.bundle)}),
        "scoring": scoring.model_copy(update={"thresholds": thresholds}),
    })
    report = model.report
    note = (f"No trained detector is installed, so the demo runs a tiny detector trained here on "
            f"{report['recipe']['videos']} synthetic videos (held-out video AUROC "
            f"{report['test']['video_auroc']:.2f}), Platt-calibrated, with alert thresholds "
            f"enter {model.thresholds['enter']:.2f} / exit {model.thresholds['exit']:.2f} "
            "chosen on its validation split. Install a real detector with `dfstream models`.")
    return DetectorChoice(chosen, note, model)


def _train_demo_model(settings: Settings, build: Any) -> DemoModel:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    columns = (TextColumn("synthetic demo model: {task.description}"), BarColumn(),
               MofNCompleteColumn())
    with progress_bar(*columns) as bar:
        tasks: dict[str, Any] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        model: DemoModel = build(settings, progress=progress)
    if not model.cached:
        console.print(f"[dim]synthetic demo model trained in {model.report['build_s']:.0f} s: "
                      f"{model.bundle} (cached)[/dim]", soft_wrap=True)
    return model


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
    cameras: dict[str, RtspCamera]
    streams: int
    choice: DetectorChoice
    redis_url: str
    listener: socket.socket
    duration: float | None
    stop: StopRequest
    began: float
    dashboard: str = ""

    def stream_urls(self) -> dict[str, str]:
        """Stream id -> camera URL: each camera read ``streams`` times (``fake``, ``fake-2``...)."""
        return {(name if index == 0 else f"{name}-{index + 1}"): camera.url
                for name, camera in self.cameras.items() for index in range(self.streams)}


@app.command()
def demo(
    duration: Annotated[float | None, typer.Option(
        min=1, help="Stop after this many seconds of streaming (default: run until Ctrl-C).",
        show_default=False)] = None,
    json_summary: Annotated[bool, typer.Option(
        "--json-summary", help="At the end, print a JSON summary on stdout (per stream the "
        "state reached and its alerts, frames analysed, events, latency decoded -> received by "
        "a subscriber).")] = False,
    streams: Annotated[int, typer.Option(
        min=1, max=32, help="How many streams read each sample camera (each its own RTSP "
        "client).")] = 1,
    port: Annotated[int, typer.Option(
        min=0, max=65535, help="HTTP port of the API and dashboard (0: a free one).")] = 0,
    media: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="Serve this H.264 video as the one camera instead of "
        "the two synthetic ones.", show_default=False)] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "WARNING",
    config: ConfigOption = None,
) -> None:
    """The full service on two sample cameras (a synthetic real face and a synthetic face swap
    of it): embedded Redis, looping RTSP cameras, the pipeline, the HTTP API and the dashboard,
    with a live table. Without an installed detector it first trains a synthetic demo model
    (once, about 1.5 minutes on two CPU cores). Nothing to set up."""
    import asyncio

    from stream.commands.serve import check_bind, configure_logging, listen
    from stream.demo_model import demo_cameras
    from stream.redis_server import EmbeddedRedis

    began = time.monotonic()
    settings = settings_or_exit(config)
    configure_logging(log_level.upper())
    check_bind(settings)

    stop = StopRequest()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    redis_server: EmbeddedRedis | None = None
    cameras: dict[str, RtspCamera] = {}
    listener: socket.socket | None = None
    try:
        if media is None:
            with console.status("writing the two synthetic sample cameras (once)"):
                clips = demo_cameras()
        else:
            clips = {MEDIA_CAMERA: media}
        choice = choose_detector(settings)
        for name, clip in clips.items():
            cameras[name] = RtspCamera(clip, path=f"/{name}").start()
            console.print(f"[dim]camera {name}: {cameras[name].url} ({clip.name}, GStreamer "
                          "RTSP server, looping)[/dim]", soft_wrap=True)
        redis_url = settings.redis.url
        if redis_url is None:
            redis_server = EmbeddedRedis().start()
            redis_url = redis_server.url
        settings = choice.settings.model_copy(update={
            "redis": settings.redis.model_copy(update={"url": redis_url}),
        })
        listener = listen(settings.api.host, port)
        run = DemoRun(settings, cameras, streams, choice, redis_url, listener, duration, stop,
                      began)
        stop.graceful = True
        summary = asyncio.run(_run(run))
    finally:
        if listener is not None:
            listener.close()
        for camera in cameras.values():
            camera.stop()
        if redis_server is not None:
            redis_server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if json_summary:
        typer.echo(json.dumps(summary, indent=2))


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
        await service.start()  # a refusal ends the demo as one line (stream.cli.Commands)
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
    banner = detector_banner(info, run.choice.note)
    if banner is not None:
        console.print(banner)
    console.print(f"dashboard: {run.dashboard}", soft_wrap=True)
    console.print(f"watch from another shell: dfstream watch --redis-url {redact(run.redis_url)}",
                  soft_wrap=True)
    events_since = await _last_event_id(run)
    for stream_id, url in run.stream_urls().items():
        await service.add_stream(StreamSpec(id=stream_id, url=url))
    started = time.monotonic()
    startup_s = started - run.began
    snapshot: list[dict[str, Any]] = []
    # A terminal gets a live table; a log gets a plain status line every few seconds (a live
    # view cannot redraw there) and the table once at the end.
    live = (Live(view(run, service, probe, 0.0), console=console, refresh_per_second=2,
                 transient=False) if console.is_terminal else None)
    try:
        with live if live is not None else contextlib.nullcontext():
            reported = -STATUS_LINE_EVERY_S
            while run.stop.reason is None and not serving.done():
                elapsed = time.monotonic() - started
                if run.duration is not None and elapsed >= run.duration:
                    run.stop.reason = "duration"
                    break
                snapshot = service.list_streams()
                if live is not None:
                    live.update(view(run, service, probe, elapsed, snapshot))
                elif elapsed - reported >= STATUS_LINE_EVERY_S:
                    console.print(status_line(elapsed, snapshot), markup=False, highlight=False)
                    reported = elapsed
                await asyncio.sleep(0.5)
            snapshot = service.list_streams()
            final = view(run, service, probe, time.monotonic() - started, snapshot)
            if live is not None:
                live.update(final)
            else:
                console.print(final)
    finally:
        elapsed = time.monotonic() - started
        console.print(f"[dim]stopping ({run.stop.reason or 'signal'}): streams, outbox, "
                      "Redis... (Ctrl-C again to stop at once)[/dim]")
        end_live_feeds(api)  # open dashboards would hold the graceful shutdown
        server.should_exit = True
        await serving
        # Each stream's final figures, from when its last frame was analysed (status offline).
        ended = [await service.remove_stream(s["id"], reason="shutdown")
                 for s in service.list_streams()]
        snapshot = [view for view in ended if view is not None] or snapshot
        await service.close()
        await asyncio.to_thread(probe.drain, sum(s["frames_analysed"] for s in snapshot))
        probe.stop()
    events = await _events_since(run, events_since)
    alerts = Counter(str(e.get("stream")) for e in events if e.get("type") == "alert.start")
    demo_model = run.choice.demo
    return {
        "duration_s": round(elapsed, 1),
        "startup_s": round(startup_s, 1),
        "dashboard": run.dashboard,
        "redis_url": redact(run.redis_url),
        "rtsp_urls": {name: camera.url for name, camera in run.cameras.items()},
        "untrained": not info.trained,
        "synthetic": info.synthetic,
        "detector": {"arch": info.arch, "trained": info.trained, "synthetic": info.synthetic,
                     "bundle": info.bundle, "backend": info.backend, "device": info.device,
                     "warning": info.warning},
        "demo_model": None if demo_model is None else {
            "bundle": str(demo_model.bundle), "cached": demo_model.cached,
            **{k: demo_model.report[k] for k in ("build_s", "val", "test", "thresholds",
                                                  "cameras_p_fake")}},
        "thresholds": run.settings.scoring.thresholds.model_dump(),
        "counted": "frames_analysed: frames analysed per stream until it stopped (each gave "
                   "one live score message); scores_received: those messages this demo's own "
                   "subscriber received; streams[].status: at the end (offline after shutdown)",
        "frames_analysed": {s["id"]: s["frames_analysed"] for s in snapshot},
        "streams": {s["id"]: {
            **{k: s[k] for k in ("status", "state", "p_stream", "fps_in", "fps_analysed",
                                 "frames_analysed", "reconnects", "dropped", "last_error")},
            "alerts": alerts.get(s["id"], 0)} for s in snapshot},
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

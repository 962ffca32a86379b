"""``dfstream demo``: frames flowing from a real RTSP stream, with live per-stream stats.

It writes a sample video of a moving face, serves it with GStreamer's RTSP server (the system
Python's ``gi``), reads it with the PyAV source next to the same file replayed as live, and
shows what each source reports. The full service demo (faces, scores, Redis) replaces the
reading loop here once the pipeline exists.
"""

from __future__ import annotations

import json
import select
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from stream.cli import ConfigOption, app, console, fail, settings_or_exit

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER = Path(__file__).resolve().parents[2] / "scripts" / "rtsp_server.py"


def _serve_rtsp(media: Path, port: int, timeout_s: float = 20.0) -> subprocess.Popen[str]:
    """Start scripts/rtsp_server.py and wait for its READY line."""
    if not RTSP_SERVER.is_file() or not Path(SYSTEM_PYTHON).exists():
        raise fail(f"the demo needs {RTSP_SERVER} and {SYSTEM_PYTHON} (run it from the "
                   "repository; `make demo` installs what it needs)")
    process = subprocess.Popen(
        [SYSTEM_PYTHON, str(RTSP_SERVER), str(media), "--port", str(port), "--path", "/demo"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().strip() if process.stderr else ""
            raise fail(f"the RTSP server did not start: {err or 'exit ' + str(process.returncode)}"
                       " (GStreamer's RTSP server packages missing? `make demo` installs them)")
        ready, _, _ = select.select([process.stdout], [], [], 0.1)
        if ready and process.stdout.readline().startswith("READY"):
            return process
    process.kill()
    raise fail(f"the RTSP server did not answer within {timeout_s:g} s")


def _table(sources: list[Any], latencies: dict[str, list[float]], elapsed: float) -> Any:
    from rich.table import Table

    table = Table(
        title=f"dfstream demo: ingest, {elapsed:.0f} s (Ctrl-C to stop)",
        caption="The sample RTSP server ends its stream with the file; the camera source "
        "then reconnects, as it would to a real camera that went away.",
    )
    for column in ("stream", "status", "size", "fps in", "fps out", "taken", "dropped",
                   "reconnects", "decoded→taken", "last error"):
        table.add_column(column, overflow="fold")
    for source in sources:
        s = source.stats()
        dropped = ", ".join(f"{k} {v}" for k, v in s.dropped.items() if v) or "-"
        recent = latencies[s.stream_id][-50:]
        latency = f"{statistics.median(recent) * 1000:.0f} ms" if recent else "-"
        color = {"live": "green", "failed": "red", "stopped": "dim"}.get(s.status, "yellow")
        table.add_row(
            s.stream_id, f"[{color}]{s.status}[/{color}]",
            f"{s.width}x{s.height} {s.codec or ''}".strip() if s.width else "-",
            f"{s.fps_in:.1f}", f"{s.fps_out:.1f}", str(s.frames_taken), dropped,
            str(s.reconnects), latency, s.last_error or "",
        )
    return table


@app.command()
def demo(
    duration: Annotated[float | None, typer.Option(
        min=1, help="Stop after this many seconds (default: run until Ctrl-C).",
        show_default=False)] = None,
    json_summary: Annotated[bool, typer.Option(
        "--json-summary", help="At the end, print a JSON summary on stdout.")] = False,
    sample_seconds: Annotated[float, typer.Option(
        min=2, max=600, help="Length of the generated sample video.")] = 12.0,
    config: ConfigOption = None,
) -> None:
    """Serve a generated face video over a local RTSP server and show frames flowing through
    the ingest, with live per-stream stats."""
    from rich.live import Live

    from stream.redis_server import free_tcp_port
    from stream.samples import write_face_video
    from stream.sources.pyav import PyAVSource

    settings = settings_or_exit(config)
    # The replayed stream is the demo's own file: allow local files for this run only.
    ingest = settings.ingest.model_copy(
        update={"allowed_schemes": sorted({*settings.ingest.allowed_schemes, "file"})}
    )
    with tempfile.TemporaryDirectory(prefix="dfstream-demo-") as tmp:
        console.print(f"[dim]writing a {sample_seconds:g} s sample video of a moving face[/dim]")
        media = write_face_video(Path(tmp) / "face.mp4", 640, 360, seconds=sample_seconds, gop=30)
        port = free_tcp_port()
        server = _serve_rtsp(media, port)
        url = f"rtsp://127.0.0.1:{port}/demo"
        console.print(f"[dim]serving {url}[/dim]")
        landed = threading.Event()
        sources = [
            PyAVSource("rtsp-camera", url, ingest, on_frame=landed.set),
            PyAVSource("file-replay", str(media), ingest, realtime=True, loop=True,
                       on_frame=landed.set),
        ]
        latencies: dict[str, list[float]] = {s.stream_id: [] for s in sources}
        started = time.monotonic()
        try:
            for source in sources:
                source.start()
            with Live(_table(sources, latencies, 0), console=console, refresh_per_second=4,
                      transient=json_summary) as live:
                next_draw = 0.0
                while duration is None or time.monotonic() - started < duration:
                    landed.wait(0.25)
                    landed.clear()
                    for source in sources:
                        frame = source.take()
                        if frame is not None:
                            frame.detection_image(ingest.detect_max_side)
                            latencies[source.stream_id].append(time.time() - frame.captured_at)
                    if time.monotonic() >= next_draw:
                        live.update(_table(sources, latencies, time.monotonic() - started))
                        next_draw = time.monotonic() + 0.25
        except KeyboardInterrupt:
            pass
        finally:
            for source in sources:
                source.stop()
            server.terminate()
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
        summary = _summary(sources, latencies, time.monotonic() - started)
    if json_summary:
        typer.echo(json.dumps(summary, indent=2))


def _summary(sources: list[Any], latencies: dict[str, list[float]], elapsed: float) -> dict:
    streams = {}
    for source in sources:
        s = source.stats()
        values = sorted(latencies[s.stream_id])
        streams[s.stream_id] = {
            "status": s.status.value,
            "frames_in": s.frames_in,
            "frames_decoded": s.frames_decoded,
            "frames_taken": s.frames_taken,
            "dropped": s.dropped,
            "reconnects": s.reconnects,
            "last_error": s.last_error,
            "decoded_to_taken_ms": {
                "p50": round(values[len(values) // 2] * 1000, 1) if values else None,
                "p99": round(values[min(len(values) - 1, int(len(values) * 0.99))] * 1000, 1)
                if values else None,
            },
        }
    return {"duration_s": round(elapsed, 1), "streams": streams}

"""``dfstream bench whip``: WebRTC publishers over WHIP against an RTSP baseline, same run."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from stream.cli import ConfigOption, bench_app, console, fail, settings_or_exit


@bench_app.command("whip")
def bench_whip(
    publishers: Annotated[str, typer.Option(help="Publishers to ramp through.")] = "1,2,4,6,8",
    codec: Annotated[str, typer.Option(help="VP8 or H264.")] = "VP8",
    fps: Annotated[float, typer.Option(min=0.5, max=60, help="Analysis fps per stream.")] = 5.0,
    window: Annotated[float, typer.Option(min=2, max=600, help="Seconds per step.")] = 10.0,
    warmup: Annotated[float, typer.Option(min=0, max=600, help="Seconds before a step.")] = 4.0,
    arch: Annotated[str, typer.Option(help="Crop scorer architecture.")] = "tiny",
    json_out: Annotated[bool, typer.Option("--json", help="Print only the JSON result.")] = False,
    config: ConfigOption = None,
) -> None:
    """Latency from a frame sent by a WHIP publisher to its score in Redis (p50/p99) and the
    publishers one process sustains at --fps, with an RTSP stream of the same video as the
    baseline. All traffic stays on loopback."""
    from stream.bench.whip import run

    if codec.upper() not in ("VP8", "H264"):
        fail(f"--codec {codec!r}: use VP8 or H264")
    try:
        steps = sorted({int(part) for part in publishers.split(",") if part.strip()})
    except ValueError:
        fail(f"--publishers {publishers!r}: give counts like 1,2,4")
    if not steps or steps[0] < 1:
        fail(f"--publishers {publishers!r}: give counts of at least 1, like 1,2,4")
    settings = settings_or_exit(config)
    with tempfile.TemporaryDirectory(prefix="dfstream-bench-whip-") as media:
        result = run(settings, steps=steps, window_s=window, warmup_s=warmup,
                     codec=codec.upper(), fps=fps, arch=arch, media_dir=Path(media),
                     progress=lambda line: console.print(f"[dim]{line}[/dim]"))
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    for step in result["steps"]:
        console.print(f"{step['publishers']:>3} publishers: min {step['fps_min']} fps, end to "
                      f"end p50/p99 {step['end_to_end_ms']['p50']}/{step['end_to_end_ms']['p99']}"
                      f" ms, RTSP service p50 {step['rtsp_service_ms']['p50']} ms")
    console.print(f"sustained: {result['max_sustained_publishers']} publishers at {fps:g} fps")

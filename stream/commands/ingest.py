"""``dfstream bench ingest``: CPU to deliver 5 fps from 1080p30 H.264 vs FFmpeg's own decode."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Annotated

import typer

from stream.cli import bench_app, console, fail


@bench_app.command("ingest")
def bench_ingest(
    json_out: Annotated[bool, typer.Option("--json", help="Print only the JSON result.")] = False,
    runs: Annotated[int, typer.Option(min=1, max=50, help="Runs per measurement (median).")] = 5,
    seconds: Annotated[float, typer.Option(min=2, max=120, help="Length of each file.")] = 10.0,
    content: Annotated[str, typer.Option(
        help="'testsrc2' (FFmpeg's test pattern) or 'face' (the moving face sample).")]
    = "testsrc2",
    analysis_fps: Annotated[float, typer.Option(min=0.1, max=30, help="Frames/s delivered.")]
    = 5.0,
    workdir: Annotated[Path | None, typer.Option(
        help="Keep the encoded files here (reused by later runs).", show_default=False)]
    = None,
) -> None:
    """CPU seconds (user+sys) of the ingest delivering 5 fps from 1080p30 H.264 with the
    pipeline's conversions, divided by those of `ffmpeg -threads 1 -i FILE -f null -` on the same
    file in the same run: a broadcast encode (B-frames) and a video-call encode (none)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from stream.sources.bench import TARGETS, BenchConfig, run

    if content not in ("testsrc2", "face"):
        raise fail(f"unknown content {content!r}; choose testsrc2 or face")
    cfg = BenchConfig(seconds=seconds, runs=runs, analysis_fps=analysis_fps, content=content,
                      workdir=workdir)
    steps = 2 + runs * 9  # two encodes, then 5 + 4 measurements per run
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("bench ingest", total=steps)

        def step(message: str) -> None:
            progress.update(task, advance=1, description=f"bench ingest: {message}")

        try:
            result = run(cfg, progress=step)
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            raise fail(str(exc)) from None
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    console.print_json(data=result)
    verdict = "[green]meets[/green]" if result["meets_targets"] else "[red]misses[/red]"
    console.print(
        f"ingest/ffmpeg CPU: {result['ratio_vs_ffmpeg']} with B-frames (target <= "
        f"{TARGETS['ratio_vs_ffmpeg']}), {result['ratio_vs_ffmpeg_no_bframes']} without "
        f"(target <= {TARGETS['ratio_vs_ffmpeg_no_bframes']}): {verdict} the targets; plain "
        f"PyAV {result['plain_pyav_ratio_vs_ffmpeg']} and "
        f"{result['plain_pyav_ratio_vs_ffmpeg_no_bframes']}"
    )

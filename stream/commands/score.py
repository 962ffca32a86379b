"""``dfstream score VIDEO``: the offline per-frame and per-video score, through the same face
stage and crop scorer as the live service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stream.cli import ConfigOption, app, console, fail, progress_bar, settings_or_exit

ESTIMATE_FROM_S = 5.0
"""A CPU run expected to take at least this long says so up front."""


@app.command("score")
def score_command(
    video: Annotated[Path, typer.Argument(help="A video file.")],
    frames: Annotated[
        int, typer.Option("--frames", min=1, max=10_000, help="Uniformly spaced frames to score.")
    ] = 32,
    arch: Annotated[
        str | None, typer.Option(help="Detector architecture (overrides detector.arch).")
    ] = None,
    allow_untrained: Annotated[
        bool,
        typer.Option(help="Score with random weights when no trained detector is installed."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    config: ConfigOption = None,
) -> None:
    """Mean p_fake of a video over N uniform frames (the papers' protocol), and per frame."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    from stream.analysis import EVERY_FACE, Analyser
    from stream.sources.reader import count_frames
    from stream.video_score import score_video, seconds_per_crop

    if not video.is_file():
        raise fail(f"{video} does not exist")
    settings = settings_or_exit(config, **{
        "detector.arch": arch, "detector.allow_untrained": allow_untrained or None,
    })
    planned = min(frames, count_frames(video))  # a non-video fails here, before the long load
    with console.status(f"loading the {settings.detector.arch} detector (its first use on a "
                        "CPU also exports it to ONNX and times the backends)"):
        analyser, info = Analyser.load(settings, EVERY_FACE)
    if info.warning:
        console.print(f"[bold white on red] {info.warning} [/]")
    assert analyser.scorer is not None
    calibrator = analyser.scorer.calibrator
    if info.device == "cpu":
        per_crop = seconds_per_crop(analyser.scorer)
        if per_crop * planned >= ESTIMATE_FROM_S:
            console.print(
                f"scoring {planned} frames with {info.arch} on this CPU takes about "
                f"{per_crop * planned:.0f} s ({per_crop:.2f} s a face crop, measured just now; "
                "longer with several faces a frame)")
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total} frames"), TimeElapsedColumn())
    with progress_bar(*columns) as bar:
        task = bar.add_task(f"scoring {video.name}", total=planned)
        result = score_video(
            video, analyser, frames=frames,
            progress=lambda done: bar.update(task, completed=done),
        )
    report = {
        **result.as_dict(),
        "untrained": not info.trained,
        "warning": info.warning,
        "calibration": calibrator.label,
        "detector": {"arch": info.arch, "bundle": info.bundle, "backend": info.backend,
                     "device": info.device},
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    p = result.p_fake
    verdict = "no face found" if p is None else f"p_fake {p:.3f}"
    console.print(
        f"{video}: {verdict} over {result.frames_with_face}/{len(result.frames)} frames with a "
        f"face ({info.arch}, {calibrator.label})"
    )
    if info.warning:
        console.print("[bold red]UNTRAINED: the score above is meaningless.[/]")

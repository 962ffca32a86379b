"""``dfstream bench pipeline``: live streams sustained, latency decoded -> published, and the
gain of cross-stream batching, through the real service and a real redis-server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stream.cli import ConfigOption, bench_app, console, fail, settings_or_exit


def _parse_ramp(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give stream counts like 1,2,4,8") from None
    if not counts or min(counts) < 1 or list(counts) != sorted(set(counts)):
        raise typer.BadParameter(f"{text!r}: stream counts must be increasing and at least 1")
    return counts


def _parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give a size like 640x360") from None
    if not (64 <= width <= 3840 and 64 <= height <= 2160) or width % 2 or height % 2:
        raise typer.BadParameter(f"{text!r}: even sides from 64x64 to 3840x2160")
    return width, height


@bench_app.command("pipeline")
def bench_pipeline(
    streams: Annotated[str | None, typer.Option(
        help="Stream counts of the ramp, e.g. 1,2,4,8 (default 1,2,4,6,8,10,...,256; the ramp "
        "stops after --failures-to-stop unsustained steps).", show_default=False)] = None,
    fps: Annotated[float, typer.Option(min=0.5, max=60, help="Analysis fps per stream.")] = 5.0,
    size: Annotated[str, typer.Option(help="Size of the generated face video.")] = "640x360",
    video_seconds: Annotated[float, typer.Option(
        min=1, max=600, help="Length of the generated video; streams loop it (a loop costs "
        "one superseded frame, see docs/benchmarks.md).")] = 60.0,
    warmup: Annotated[float, typer.Option(min=0.5, max=60, help="Seconds before each "
                                          "window.")] = 3.0,
    window: Annotated[float, typer.Option(min=1, max=600, help="Seconds measured per ramp "
                                          "step.")] = 8.0,
    failures_to_stop: Annotated[int, typer.Option(min=1, max=10, help="Unsustained steps in a "
                                                  "row that end the ramp.")] = 2,
    max_frames: Annotated[int, typer.Option(min=2, max=1024, help="pipeline.max_frames of the "
                                            "batched mode.")] = 16,
    max_wait_ms: Annotated[float, typer.Option(min=0, max=1000, help="pipeline.max_wait_ms of "
                                               "the batched mode.")] = 20.0,
    arch: Annotated[str, typer.Option(help="Crop scorer architecture: tiny, ViT-B-16, "
                                      "ViT-L-14 (random weights unless a bundle is "
                                      "installed).")] = "tiny",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N (faces and "
                                        "scorer).")] = "auto",
    backend: Annotated[str, typer.Option(help="Crop scorer backend (auto, torch, onnxruntime, "
                                         "tensorrt, torch-compile).")] = "auto",
    gain_streams: Annotated[int | None, typer.Option(
        min=1, max=1024, help="Streams read flat out in the batching comparison (default "
        "--max-frames).", show_default=False)] = None,
    gain_seconds: Annotated[float, typer.Option(min=1, max=600, help="Seconds measured per "
                                                "batching round and mode.")] = 6.0,
    gain_rounds: Annotated[int, typer.Option(min=1, max=20, help="Alternating rounds of the "
                                             "batching comparison.")] = 3,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of fps per stream and latency "
                                              "against streams.", show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print only the JSON result.")] = False,
    config: ConfigOption = None,
) -> None:
    """Streams analysed at --fps sustained by one process, p50/p99 latency decoded -> published
    (measured by a Redis subscriber), and batching against batch-1 in the same run."""
    from stream.pipeline_bench import DEFAULT_RAMP, BenchConfig, run
    from stream.pipeline_bench import plot as draw

    if arch not in ("tiny", "ViT-B-16", "ViT-L-14"):
        raise fail(f"--arch {arch!r}: use tiny, ViT-B-16 or ViT-L-14")
    width, height = _parse_size(size)
    settings = settings_or_exit(config)
    cfg = BenchConfig(
        ramp=_parse_ramp(streams) if streams else DEFAULT_RAMP,
        fps=fps, width=width, height=height, video_seconds=video_seconds, warmup_s=warmup,
        window_s=window, failures_to_stop=failures_to_stop, max_frames=max_frames,
        max_wait_ms=max_wait_ms, arch=arch, device=device,
        backend=backend, gain_streams=gain_streams, gain_seconds=gain_seconds,
        gain_rounds=gain_rounds,
    )
    try:
        result = run(cfg, settings,
                     progress=lambda step: console.print(f"[dim]bench pipeline:[/dim] {step}",
                                                         soft_wrap=True))
    except Exception as exc:  # engines, weights, redis-server: say what failed, no traceback
        from engines.backends import BackendUnavailable
        from engines.deepfake_detector import DetectorUnavailable
        from engines.store import StoreError
        from stream.redis_server import RedisServerError

        known = (BackendUnavailable, DetectorUnavailable, StoreError, RedisServerError,
                 RuntimeError, ValueError)
        if isinstance(exc, known):
            raise fail(f"{type(exc).__name__}: {exc}") from None
        raise
    if plot is not None:
        result["plot"] = str(draw(result, plot))
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    console.print_json(data=result)
    latency = result["latency_ms"]
    console.print(
        f"{result['max_streams_sustained']} streams sustained at {fps:g} fps; latency at "
        f"{latency['streams']} streams p50 {latency['p50']} ms, p99 {latency['p99']} ms; "
        f"batching {result['batching_gain']}x batch-1 (scorer alone "
        f"{result['scorer_batching_gain']}x)"
    )

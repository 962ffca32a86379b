"""``dfstream bench ...``: every benchmark's command. Each prints JSON (``--json``) with ratios
against a baseline measured in the same run; the measuring code lives in stream/bench/ and
engines/bench/."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Annotated

import typer

from stream.cli import ConfigOption, bench_app, console, fail, progress_bar, settings_or_exit
from stream.console import make_console

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


# --- ingest ---------------------------------------------------------------------------------------


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
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    from stream.bench.ingest import TARGETS, BenchConfig, run

    if content not in ("testsrc2", "face"):
        raise fail(f"unknown content {content!r}; choose testsrc2 or face")
    cfg = BenchConfig(seconds=seconds, runs=runs, analysis_fps=analysis_fps, content=content,
                      workdir=workdir)
    steps = 2 + runs * 9  # two encodes, then 5 + 4 measurements per run
    with progress_bar(SpinnerColumn(), TextColumn("{task.description}"),
                      TimeElapsedColumn()) as progress:
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


# --- publish --------------------------------------------------------------------------------------


@bench_app.command("publish")
def bench_publish(
    messages: Annotated[int, typer.Option(min=1000, help="Messages in the throughput run.")] = (
        200_000
    ),
    streams: Annotated[int, typer.Option(min=1, max=10_000, help="Streams the messages come "
                                         "from.")] = 100,
    latency_rate: Annotated[float, typer.Option(min=1, help="Offered msg/s for the latency "
                                                "run.")] = 50_000,
    latency_seconds: Annotated[float, typer.Option(min=0.2, max=60, help="Length of each "
                                                   "latency run.")] = 2.0,
    reference_requests: Annotated[int, typer.Option(min=1000, help="PUBLISH requests per "
                                                    "redis-benchmark run.")] = 200_000,
    json_out: Annotated[bool, typer.Option("--json", help="Print only the JSON result.")] = False,
) -> None:
    """Score messages/s and p99 publish latency to a local redis-server, JSON encoding
    included, against redis-benchmark PUBLISH on the same server in the same run."""
    from stream.bench.publish import BenchConfig, run
    from stream.redis_server import RedisServerError

    cfg = BenchConfig(messages=messages, streams=streams, latency_rate=latency_rate,
                      latency_seconds=latency_seconds,
                      redis_benchmark_requests=reference_requests)
    try:
        result = run(cfg, progress=lambda step: console.print(f"[dim]bench publish:[/dim] {step}"))
    except (RedisServerError, RuntimeError) as exc:
        raise fail(str(exc)) from None
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    console.print_json(data=result)
    verdict = "[green]meets[/green]" if result["meets_targets"] else "[red]misses[/red]"
    console.print(
        f"{result['messages_per_s']:,} msg/s, p99 {result['p99_ms']} ms at "
        f"{latency_rate:,.0f} msg/s: {verdict} the targets (>= 50,000 msg/s, p99 <= 2 ms); "
        f"{result['ratio_vs_redis_benchmark']}x redis-benchmark unpipelined"
    )


# --- faces ----------------------------------------------------------------------------------------


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        try:
            width, height = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise typer.BadParameter(f"{item!r} is not WIDTHxHEIGHT") from None
        if not (32 <= width <= 8192 and 32 <= height <= 8192):
            raise typer.BadParameter(f"{item!r} is outside 32..8192 pixels")
        sizes.append((width, height))
    return sizes


def _parse_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a list of integers") from None
    if any(v < 1 or v > 1024 for v in values):
        raise typer.BadParameter("batch sizes must lie in 1..1024")
    return values


@bench_app.command("faces")
def bench_faces(
    json_out: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    arch: Annotated[str, typer.Option(help="mobilenet0.25 or resnet50.")] = "mobilenet0.25",
    sizes: Annotated[str, typer.Option(help="Frame sizes, WIDTHxHEIGHT, comma-separated.")]
    = "640x360,1280x720",
    batches: Annotated[str, typer.Option(help="Batch sizes on the CPU.")] = "1,8",
    gpu_batches: Annotated[str, typer.Option(help="Batch sizes on a GPU.")] = "1,8,32",
    device: Annotated[str, typer.Option(
        help="'cpu', 'cuda', 'cuda:N', or 'all' (the CPU and, when present, the first GPU).")]
    = "all",
    seconds: Annotated[float, typer.Option(min=0.2, help="Measured seconds per case.")] = 3.0,
    rounds: Annotated[int, typer.Option(min=1, max=50, help="Interleaved rounds.")] = 3,
    weights: Annotated[Path | None, typer.Option(
        help="An explicit weights file instead of the model store's.", show_default=False)]
    = None,
    threads: Annotated[int | None, typer.Option(
        min=1, max=256, help="CPU threads for torch and ONNX Runtime (default: theirs).",
        show_default=False)] = None,
) -> None:
    """Face detector frames/s: sizes x batch sizes x backends (torch, ONNX Runtime; fp32/fp16
    on a GPU), with ratios against torch batch 1 measured in the same run."""
    settings_or_exit(None)  # the model store's locations, as every command honours them
    from engines.devices import resolve_device
    from engines.retinaface.network import ARCHS

    if arch not in ARCHS:
        raise fail(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    if device == "all":
        devices = ["cpu"] + (["cuda"] if resolve_device("auto").type == "cuda" else [])
    else:
        try:
            devices = [str(resolve_device(device))]
        except ValueError as exc:
            raise fail(str(exc)) from None
    from stream.bench.faces import run_bench

    result = run_bench(
        arch=arch, sizes=_parse_sizes(sizes), cpu_batches=_parse_ints(batches),
        gpu_batches=_parse_ints(gpu_batches), devices=devices, seconds=seconds,
        rounds=rounds, weights=weights, threads=threads,
    )
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"RetinaFace {arch} detect()")
    for column in ("device", "backend", "precision", "size", "batch", "frames/s", "ms/frame",
                   "vs torch b1"):
        table.add_column(column, justify="right")
    for case in result["cases"]:
        key = (f"{case['device']} {case['size']} {case['backend']} {case['precision']} "
               f"batch {case['batch']} / torch fp32 batch 1")
        ratio = result["ratios"].get(key)
        table.add_row(case["device"], case["backend"], case["precision"], case["size"],
                      str(case["batch"]), f"{case['frames_per_s']:.1f}",
                      f"{1000 / case['frames_per_s']:.1f}",
                      "1.00" if ratio is None else f"{ratio:.2f}")
    make_console().print(table)


# --- pipeline -------------------------------------------------------------------------------------


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
    from stream.bench.pipeline import DEFAULT_RAMP, BenchConfig, run
    from stream.bench.pipeline_plot import plot as draw

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


# --- train ----------------------------------------------------------------------------------------


@bench_app.command("train")
def bench_train(
    arch: Annotated[str, typer.Option(help="tiny, ViT-B-16 or ViT-L-14.")] = "tiny",
    batch: Annotated[int, typer.Option(min=2, max=1024, help="Crops per step.")] = 32,
    device: Annotated[str, typer.Option(help="'auto', 'cpu', 'cuda' or 'cuda:N'.")] = "auto",
    seconds: Annotated[float, typer.Option(min=0.1, help="Measured seconds per case.")] = 6.0,
    rounds: Annotated[int, typer.Option(min=1, max=50, help="Interleaved rounds.")] = 3,
    json_out: JsonOption = False,
) -> None:
    """LN-tuning steps/s and crops/s, with and without augmentations, against the forward-only
    rate of the same model in the same run."""
    from engines.bench.training import run_training_benchmark
    from engines.clip_detector import ARCHS

    if arch not in ARCHS:
        raise fail(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    result = run_training_benchmark(arch=arch, batch=batch, device=device, seconds=seconds,
                                    rounds=rounds)
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    console.print_json(data=result)


# --- heatmap --------------------------------------------------------------------------------------


@bench_app.command("heatmap")
def bench_heatmap(
    arch: Annotated[str, typer.Option(help="tiny, ViT-B-16 or ViT-L-14.")] = "tiny",
    seconds: Annotated[float, typer.Option(min=0.1, help="Measured seconds per case.")] = 3.0,
    rounds: Annotated[int, typer.Option(min=1, max=50, help="Interleaved rounds.")] = 3,
    threads: Annotated[int, typer.Option(min=0, max=256, help="torch CPU threads; 0: default.")]
    = 0,
    json_out: JsonOption = False,
) -> None:
    """ms per alert heatmap on the CPU, against the plain forward pass of the same model in the
    same run."""
    from engines.bench.heatmap import run_heatmap_benchmark
    from engines.clip_detector import ARCHS

    if arch not in ARCHS:
        raise fail(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    result = run_heatmap_benchmark(arch=arch, seconds=seconds, rounds=rounds, threads=threads)
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    console.print_json(data=result)


# --- crops ----------------------------------------------------------------------------------------


@bench_app.command("crops")
def bench_crops(
    bundle: Annotated[Path | None, typer.Option(
        help="A detector bundle: also report how far p_fake moves between the crop styles.",
        show_default=False)] = None,
    arch: Annotated[str, typer.Option(help="The bundle's architecture.")] = "tiny",
    json_out: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """The fast crop against the authors' reference crop on a real face: pixel differences,
    cost per crop, and with --bundle the change in p_fake."""
    from engines.calibrated import CalibratedScorer
    from engines.calibration import Calibrator
    from engines.deepfake_detector import DetectorUnavailable, load_detector
    from engines.store import StoreError
    from stream.bench.crops import run_crop_comparison
    from stream.faces import build_face_detector

    settings = settings_or_exit(config)
    try:
        detector = build_face_detector(settings.faces)
        scorer = None
        if bundle is not None:
            engine, info = load_detector(settings.detector.model_copy(
                update={"bundle": str(bundle), "arch": arch, "device": "cpu"}))
            scorer = CalibratedScorer(engine, Calibrator.from_dict(info.calibration))
    except (StoreError, DetectorUnavailable, ValueError) as exc:
        raise fail(str(exc)) from None
    result = run_crop_comparison(detector, margin=settings.faces.margin, scorer=scorer)
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    console.print_json(data=result)


@bench_app.command("soak")
def bench_soak(
    minutes: Annotated[float, typer.Option(min=0.1, max=24 * 60, help="How long.")] = 30.0,
    streams: Annotated[int, typer.Option(min=1, max=1024, help="Live streams.")] = 16,
    interval: Annotated[float, typer.Option(min=1, max=3600, help="Seconds between "
                                            "samples.")] = 30.0,
    fps: Annotated[float, typer.Option(min=0.5, max=60, help="Analysis fps per stream.")] = 5.0,
    arch: Annotated[str, typer.Option(help="Crop scorer architecture.")] = "tiny",
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    json_out: Annotated[bool, typer.Option("--json", help="Print only the JSON result.")] = False,
    config: ConfigOption = None,
) -> None:
    """Streams analysed for --minutes while RSS, open fds, threads, Redis memory, fps and the
    p99 latency are sampled every --interval; the slope of each says whether anything grows."""
    from stream.bench.soak import SoakConfig, run

    settings = settings_or_exit(config)
    cfg = SoakConfig(minutes=minutes, streams=streams, interval_s=interval, fps=fps, arch=arch,
                     device=device)
    result = run(cfg, settings, progress=lambda line: console.print(f"[dim]{line}[/dim]"))
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    slopes = {k: v["slope_per_hour"] for k, v in result["trends"].items()}
    console.print(f"soak {minutes:g} min, {streams} streams: RSS {result['rss_idle_mb']} MB "
                  f"idle, {result['rss_per_stream_mb']} MB per stream; slopes per hour: RSS "
                  f"{slopes['rss_mb']} MB, fds {slopes['fds']}, threads {slopes['threads']}")


# --- memory ---------------------------------------------------------------------------------------


@bench_app.command("memory")
def bench_memory(
    steps: Annotated[str, typer.Option(help="Stream counts, added in turn.")] = "1,4,8,16,24,32",
    settle: Annotated[float, typer.Option(min=1, max=3600, help="Seconds each step runs before "
                                          "it is sampled.")] = 45.0,
    fps: Annotated[float, typer.Option(min=0.5, max=60, help="Analysis fps per stream.")] = 5.0,
    arch: Annotated[str, typer.Option(help="Crop scorer architecture.")] = "tiny",
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    json_out: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """RSS as live streams are added step by step: the memory one more stream costs (the slope
    over the steps with full detection batches) apart from what analysis holds once."""
    from stream.bench.memory import MemoryConfig, run

    settings = settings_or_exit(config)
    cfg = MemoryConfig(steps=_parse_ramp(steps), settle_s=settle, fps=fps, arch=arch,
                       device=device)
    result = run(cfg, settings, progress=lambda line: console.print(f"[dim]{line}[/dim]"))
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    console.print(f"RSS {result['rss_idle_mb']} MB idle; {result['per_stream_mb']} MB per stream "
                  f"(slope over {result['fitted_steps']} streams), {result['shared_mb']} MB held "
                  f"once by analysis; target {result['targets']['rss_per_stream_mb']} MB per "
                  "stream")

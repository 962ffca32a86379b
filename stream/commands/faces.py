"""``dfstream faces IMAGE|VIDEO``: the face stage offline; ``dfstream bench faces``: its speed.

A video goes through the face stage of the same analysis path as a live stream
(``stream.analysis.Analyser``; frames read by ``stream.sources.reader``, converted lazily, tracked
on their presentation time), so what this prints is what the service would see.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from stream.cli import ConfigOption, app, bench_app, console, fail, settings_or_exit

if TYPE_CHECKING:
    import numpy as np

    from stream.analysis import Analyser, FrameAnalysis
    from stream.config import Settings
    from stream.sources.base import Frame


# --- dfstream faces -----------------------------------------------------------------------------


def read_image(path: Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB; grayscale, alpha and 16-bit files are converted."""
    import cv2
    import numpy as np

    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)  # drops alpha, expands gray, scales 16-bit
    if image is None:
        raise ValueError(f"{path} could not be decoded as an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def is_image(path: Path) -> bool:
    import cv2

    return bool(cv2.haveImageReader(str(path)))


def _estimated_frames(path: Path, fps: float | None, limit: int | None) -> int | None:
    import av

    try:
        with av.open(str(path)) as container:
            video = container.streams.video[0]
            total = video.frames or None
            if total and fps and video.average_rate:
                total = int(total * min(1.0, fps / float(video.average_rate))) + 1
    except (av.error.FFmpegError, IndexError):
        return limit
    if limit is not None:
        return min(limit, total) if total else limit
    return total


def _save_crop(directory: Path, name: str, crop: np.ndarray) -> str:
    import cv2

    target = directory / name
    if not cv2.imwrite(str(target), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {target}")
    return str(target)


def _rows(
    result: FrameAnalysis, *, video: bool, crops_dir: Path | None
) -> list[dict[str, Any]]:
    rows = []
    for index, face in enumerate(result.faces):
        data = face.as_dict()
        row: dict[str, Any] = {"box": data["box"], "score": data["score"],
                               "landmarks": data["landmarks"]}
        if video:
            row = {"frame": result.frame.seq, "pts": round(result.frame.pts, 3),
                   "track": face.track_id, "confirmed": face.confirmed, **row}
        if crops_dir is not None and face.crop is not None:
            name = (f"frame{result.frame.seq:06d}_track{face.track_id:04d}.png" if video
                    else f"face{index:02d}.png")
            row["alignment"] = face.alignment
            row["crop"] = _save_crop(crops_dir, name, face.crop)
        rows.append(row)
    return rows


def _print_table(rows: list[dict[str, Any]], video: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None)
    if video:
        table.add_column("frame", justify="right")
        table.add_column("time", justify="right")
        table.add_column("track", justify="right")
    table.add_column("score", justify="right")
    table.add_column("box x1,y1,x2,y2")
    table.add_column("eyes")
    for row in rows:
        cells = [f"{row['score']:.3f}", ", ".join(f"{v:.0f}" for v in row["box"]),
                 "  ".join(f"({x:.0f},{y:.0f})" for x, y in row["landmarks"][:2])]
        if video:
            track = f"{row['track']}" + ("" if row["confirmed"] else "?")
            cells = [str(row["frame"]), f"{row['pts']:.2f}s", track, *cells]
        table.add_row(*cells)
    Console().print(table)


def _load_analyser(settings: Settings, with_crops: bool) -> Analyser:
    from engines.store import StoreError
    from stream.analysis import Analyser

    try:
        return Analyser.faces_only(settings, with_crops=with_crops)
    except (StoreError, ValueError) as exc:
        raise fail(str(exc)) from None


@app.command("faces")
def faces_command(
    path: Annotated[Path, typer.Argument(help="An image (PNG, JPEG, ...) or a video file.",
                                         show_default=False)],
    json_out: Annotated[bool, typer.Option("--json", help="Print the detections as JSON.")] = False,
    save_crops: Annotated[Path | None, typer.Option(
        "--save-crops", help="Write each face's aligned 224x224 crop to this folder as PNG.",
        show_default=False)] = None,
    frames: Annotated[int | None, typer.Option(
        "--frames", min=1, help="Analyse at most this many frames of a video.",
        show_default=False)] = None,
    fps: Annotated[float | None, typer.Option(
        "--fps", min=0.01, help="Analyse at most this many frames per second of a video "
        "(default: every frame).", show_default=False)] = None,
    device: Annotated[str | None, typer.Option(
        "--device", help="Override faces.device: auto, cpu, cuda or cuda:N.",
        show_default=False)] = None,
    config: ConfigOption = None,
) -> None:
    """Find faces in an image or a video and print them (box, score, 5 landmarks; for a video
    also frame and track), as the live face stage would."""
    settings = settings_or_exit(config)
    if device is not None:
        settings.faces.device = device
    if not path.is_file():
        raise fail(f"{path} does not exist or is not a file")
    if save_crops is not None:
        save_crops.mkdir(parents=True, exist_ok=True)
    analyser = _load_analyser(settings, with_crops=save_crops is not None)
    weights = getattr(analyser.face_stage.detector, "weights", None)
    if weights is not None and not weights.registered:
        console.print(f"weights {weights.path} sha256 {weights.sha256} (unregistered)")

    if is_image(path):
        from stream.sources.base import Frame

        try:
            image = read_image(path)
        except ValueError as exc:
            raise fail(str(exc)) from None
        result = analyser.analyse([Frame("image", 0, 0.0, time.time(), rgb=image)])[0]
        if result.error:
            raise fail(f"{path}: {result.error}")
        rows = _rows(result, video=False, crops_dir=save_crops)
        _emit(rows, json_out, video=False, summary=f"{len(rows)} face(s) in {path.name}")
        return

    rows, analysed, error = _run_video(path, analyser, settings, fps=fps, limit=frames,
                                       crops_dir=save_crops)
    tracks = len({row["track"] for row in rows if row["confirmed"]})
    _emit(rows, json_out, video=True,
          summary=f"{len(rows)} face(s) in {analysed} frame(s), {tracks} confirmed track(s)")
    if error:
        raise fail(error)


def _run_video(
    path: Path, analyser: Analyser, settings: Settings, *, fps: float | None, limit: int | None,
    crops_dir: Path | None,
) -> tuple[list[dict[str, Any]], int, str | None]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from stream.sources.reader import VideoError, read_frames

    rows: list[dict[str, Any]] = []
    analysed = 0
    batch: list[Frame] = []

    def flush() -> None:
        nonlocal analysed
        for result in analyser.analyse(batch):
            if result.error:
                console.print(f"[yellow]frame {result.frame.seq}: {result.error}[/yellow]")
            rows.extend(_rows(result, video=True, crops_dir=crops_dir))
        analysed += len(batch)
        progress.update(task, advance=len(batch))
        batch.clear()

    with Progress("faces", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("frames", total=_estimated_frames(path, fps, limit))
        try:
            for frame in read_frames(path, fps=fps, limit=limit):
                batch.append(frame)
                if len(batch) >= settings.pipeline.max_frames:
                    flush()
            flush()
        except VideoError as exc:
            flush()
            what = "cannot be opened as an image or a video" if analysed == 0 else (
                f"decoding stopped after {analysed} frame(s)")
            return rows, analysed, f"{path} {what}: {exc}"
    return rows, analysed, None


def _emit(rows: list[dict[str, Any]], json_out: bool, *, video: bool, summary: str) -> None:
    if json_out:
        typer.echo(json.dumps(rows))
    else:
        _print_table(rows, video)
    console.print(summary)


# --- dfstream bench faces -----------------------------------------------------------------------


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


def run_bench(
    *,
    arch: str,
    sizes: list[tuple[int, int]],
    cpu_batches: list[int],
    gpu_batches: list[int],
    devices: list[str],
    seconds: float,
    rounds: int,
    weights: Path | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Frames/s of the detector per case (median of ``rounds`` interleaved rounds, so that
    machine noise falls on every case alike); ratios against torch batch 1 of the same size and
    device."""
    import os
    import platform

    import numpy as np
    import onnxruntime
    import torch

    from engines.retinaface.batching import BatchedDetector
    from engines.retinaface.decode import DetectionOptions
    from engines.retinaface.onnx_detector import OnnxRetinaFaceDetector, export_onnx
    from engines.retinaface.torch_detector import RetinaFaceDetector
    from engines.retinaface.weights import load_network
    from stream.samples import compose_frame, face_placement

    if threads is not None:
        torch.set_num_threads(threads)
    net, info = load_network(arch, weights)
    options = DetectionOptions()
    images = {f"{w}x{h}": compose_frame(w, h, face_placement(0, 1, w, h)) for w, h in sizes}

    cases: list[dict[str, Any]] = []
    detectors: list[BatchedDetector] = []
    onnx_model = export_onnx(net)
    for device in devices:
        if device == "cpu":
            backends: list[tuple[str, str, BatchedDetector]] = [
                ("torch", "fp32", RetinaFaceDetector(net, device="cpu", options=options)),
                ("onnxruntime", "fp32", OnnxRetinaFaceDetector(onnx_model, arch=arch,
                                                               options=options, threads=threads)),
            ]
            batches = cpu_batches
        else:
            backends = [
                ("torch", "fp32", RetinaFaceDetector(net, device=device, options=options)),
                ("torch", "fp16", RetinaFaceDetector(net, device=device, options=options,
                                                     half=True)),
            ]
            batches = gpu_batches
        for backend, precision, detector in backends:
            for size in sizes:
                for batch in batches:
                    detector.max_batch = max(detector.max_batch, batch)
                    cases.append({"device": device, "backend": backend, "precision": precision,
                                  "size": f"{size[0]}x{size[1]}", "batch": batch,
                                  "frames": 0, "seconds": 0.0, "round_fps": []})
                    detectors.append(detector)

    for case, detector in zip(cases, detectors, strict=True):
        for _ in range(2):  # warm-up: allocations, kernels, priors
            detector.detect([images[case["size"]]] * case["batch"])
    slice_s = seconds / rounds
    for _ in range(rounds):
        for case, detector in zip(cases, detectors, strict=True):
            batch_images = [images[case["size"]]] * case["batch"]
            start = time.perf_counter()
            done = 0
            while True:
                detector.detect(batch_images)
                done += case["batch"]
                elapsed = time.perf_counter() - start
                if elapsed >= slice_s:
                    break
            case["frames"] += done
            case["seconds"] += elapsed
            case["round_fps"].append(round(done / elapsed, 2))
    for case in cases:
        # The median round is the figure of merit: a busy machine slows some rounds a lot.
        case["frames_per_s"] = round(float(np.median(case["round_fps"])), 2)
        case["mean_frames_per_s"] = round(case["frames"] / case["seconds"], 2)
        case["ms_per_call"] = round(1000 * case["batch"] / case["frames_per_s"], 2)
        case["seconds"] = round(case["seconds"], 2)

    def fps(device: str, backend: str, precision: str, size: str, batch: int) -> float | None:
        for case in cases:
            if (case["device"], case["backend"], case["precision"], case["size"],
                    case["batch"]) == (device, backend, precision, size, batch):
                return float(case["frames_per_s"])
        return None

    ratios: dict[str, float] = {}
    for case in cases:
        base = fps(case["device"], "torch", "fp32", case["size"], 1)
        if base and not (case["backend"] == "torch" and case["precision"] == "fp32"
                         and case["batch"] == 1):
            key = (f"{case['device']} {case['size']} {case['backend']} {case['precision']} "
                   f"batch {case['batch']} / torch fp32 batch 1")
            ratios[key] = round(case["frames_per_s"] / base, 2)
    host: dict[str, Any] = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime_threads": threads or "default (one per core)",
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }
    if any(d.startswith("cuda") for d in devices):
        host["gpu"] = torch.cuda.get_device_name(torch.device(devices[-1]))
    return {
        "benchmark": "faces",
        "what": "RetinaFace detect() on RGB frames of the given size (pack, copy, network, "
                "decode, NMS, per-image split); frames_per_s is the median round",
        "arch": arch,
        "weights_sha256": info.sha256,
        "rounds": rounds,
        "host": host,
        "cases": cases,
        "ratios": ratios,
    }


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
    from engines.store import StoreError

    if arch not in ARCHS:
        raise fail(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    if device == "all":
        devices = ["cpu"] + (["cuda"] if resolve_device("auto").type == "cuda" else [])
    else:
        try:
            devices = [str(resolve_device(device))]
        except ValueError as exc:
            raise fail(str(exc)) from None
    try:
        result = run_bench(
            arch=arch, sizes=_parse_sizes(sizes), cpu_batches=_parse_ints(batches),
            gpu_batches=_parse_ints(gpu_batches), devices=devices, seconds=seconds,
            rounds=rounds, weights=weights, threads=threads,
        )
    except StoreError as exc:
        raise fail(str(exc)) from None
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.console import Console
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
    Console().print(table)

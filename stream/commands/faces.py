"""``dfstream faces IMAGE|VIDEO``: the face stage offline.

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

from stream.cli import ConfigOption, app, console, fail, progress_bar, settings_or_exit
from stream.console import make_console

if TYPE_CHECKING:
    import numpy as np

    from stream.analysis import Analyser, FrameAnalysis
    from stream.config import Settings
    from stream.sources.base import Frame


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
    from rich.table import Table

    unconfirmed = video and not all(row["confirmed"] for row in rows)
    table = Table(box=None, caption_justify="left", caption=(
        "track N?: not confirmed yet (seen in fewer than faces.track_min_hits frames)"
        if unconfirmed else None))
    if video:
        table.add_column("frame", justify="right")
        table.add_column("time", justify="right")
        table.add_column("track", justify="right")
    table.add_column("score", justify="right")
    table.add_column("box x1,y1,x2,y2")
    table.add_column("landmarks: eyes, nose, mouth corners")
    for row in rows:
        cells = [f"{row['score']:.3f}", ", ".join(f"{v:.0f}" for v in row["box"]),
                 " ".join(f"({x:.0f},{y:.0f})" for x, y in row["landmarks"])]
        if video:
            track = f"{row['track']}" + ("" if row["confirmed"] else "?")
            cells = [str(row["frame"]), f"{row['pts']:.2f}s", track, *cells]
        table.add_row(*cells)
    make_console().print(table)


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
    if error and analysed == 0:
        raise fail(error)
    tracks = len({row["track"] for row in rows if row["confirmed"]})
    _emit(rows, json_out, video=True,
          summary=f"{len(rows)} face(s) in {analysed} frame(s), {tracks} confirmed track(s)")
    if error:
        raise fail(error)


def _run_video(
    path: Path, analyser: Analyser, settings: Settings, *, fps: float | None, limit: int | None,
    crops_dir: Path | None,
) -> tuple[list[dict[str, Any]], int, str | None]:
    from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn

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

    with progress_bar("faces", BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn()) as progress:
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

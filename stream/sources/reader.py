"""The one file reader for offline work (``dfstream score``, ``dfstream faces``, data preparation,
evaluation): decoded frames of a local video or of a folder of frame images, every frame, a
rate, or N uniform frames.

Live sources (``PyAVSource``) pace, drop and reconnect; offline work wants every frame it asked
for, exactly once, in order, so it reads the file itself. Uniform sampling follows the papers'
code: indices ``floor(linspace(0, n - 1, N))``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np

from engines.errors import UserError
from stream.sources.base import Frame
from stream.sources.orientation import Orientation
from stream.sources.session import DECODE_THREAD_TYPE


class VideoError(UserError, ValueError):
    """The file cannot be read as a video (missing, not a video, no decodable frame)."""


def uniform_indices(total: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``total`` frames, as
    ``np.linspace(0, total - 1, count, dtype=int)`` (floor) picks them; all frames if fewer."""
    if total <= 0 or count <= 0:
        return []
    if count >= total:
        return list(range(total))
    return [int(i) for i in np.floor(np.linspace(0, total - 1, count))]


FRAME_RATE_OF_FOLDERS = 25.0
"""The rate a folder of frame images is taken to have (for pts and ``fps``)."""


def frame_images(path: Path) -> list[Path]:
    """The frame images of a folder, in name order."""
    return sorted(p for p in path.iterdir() if p.is_file() and cv2.haveImageReader(str(p)))


def count_frames(path: Path) -> int:
    """Frames of the video (the header's count, else its video packets; demuxing only) or
    images of the frame folder."""
    if path.is_dir():
        return len(frame_images(path))
    with _open(path) as container:
        video = container.streams.video[0]
        if video.frames:
            return int(video.frames)
        return sum(1 for packet in container.demux(video) if packet.size > 0)


def _open(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise VideoError(f"{path} does not exist")
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise VideoError(f"{path} cannot be read as a video: {exc}") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path} has no video stream")
    return container


def read_frames(
    path: Path,
    *,
    indices: list[int] | None = None,
    fps: float | None = None,
    limit: int | None = None,
    stream_id: str | None = None,
) -> Iterator[Frame]:
    """Decoded frames of ``path`` in order, each with its index in the file as ``seq``.

    ``indices``: only these frames; ``fps``: at most this many frames per second of video;
    ``limit``: at most this many frames. Decoding errors past the first frame raise VideoError
    naming how far it got.
    """
    wanted = set(indices) if indices is not None else None
    last = max(wanted) if wanted else None
    if wanted is not None and not wanted:
        return
    stream = stream_id or path.stem or "video"
    if path.is_dir():
        yield from _read_folder(path, wanted, fps, limit, stream)
        return
    delivered = 0
    with _open(path) as container:
        video = container.streams.video[0]
        video.thread_type = DECODE_THREAD_TYPE
        rate = float(video.average_rate or 30)
        next_time: float | None = None
        index = -1
        orientation: Orientation | None = None  # once per file: see Orientation.of
        try:
            for index, picture in enumerate(container.decode(video)):
                pts = float(picture.time) if picture.time is not None else index / rate
                if wanted is not None and index not in wanted:
                    continue
                if fps is not None:
                    if next_time is not None and pts < next_time - 1e-6:
                        continue
                    next_time = pts + 1.0 / fps
                if orientation is None:
                    orientation = Orientation.of(picture)
                yield Frame(stream, index, pts, time.time(), av_frame=picture,
                            orientation=orientation)
                delivered += 1
                if (limit is not None and delivered >= limit) or (
                    last is not None and index >= last
                ):
                    return
        except av.FFmpegError as exc:
            what = "cannot be decoded" if index < 0 else f"decoding stopped after frame {index}"
            raise VideoError(f"{path} {what}: {exc}") from None


def _read_folder(
    path: Path, wanted: set[int] | None, fps: float | None, limit: int | None, stream: str
) -> Iterator[Frame]:
    step = max(1, round(FRAME_RATE_OF_FOLDERS / fps)) if fps else 1
    delivered = 0
    for index, image_path in enumerate(frame_images(path)):
        if (wanted is not None and index not in wanted) or index % step:
            continue
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if image is None:
            raise VideoError(f"{image_path} cannot be read as an image")
        rgb = np.ascontiguousarray(image[:, :, ::-1])
        yield Frame(stream, index, index / FRAME_RATE_OF_FOLDERS, time.time(), rgb=rgb)
        delivered += 1
        if limit is not None and delivered >= limit:
            return


def read_uniform(path: Path, count: int, *, stream_id: str | None = None) -> Iterator[Frame]:
    """``count`` uniformly spaced frames of ``path`` (the papers' evaluation sampling)."""
    wanted = uniform_indices(count_frames(path), count)
    if not wanted:
        raise VideoError(f"{path} holds no video frame")
    yield from read_frames(path, indices=wanted, stream_id=stream_id)

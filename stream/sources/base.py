"""What every video source hands to analysis: ``Frame`` records through a ``FrameSource``.

A frame keeps the decoder's picture and converts it lazily: the face detector asks for a small
RGB image, the face stage asks for full-resolution RGB only where a face is. Converting whole
1080p frames to RGB costs about a fifth of decoding them, so nothing converts more than it must.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

from stream.sources import convert
from stream.sources.orientation import UPRIGHT, Orientation

if TYPE_CHECKING:
    import av


class StreamStatus(StrEnum):
    """A stream's status in the one vocabulary of the state hash, events, API and dashboard."""

    CONNECTING = "connecting"
    ONLINE = "online"
    RECONNECTING = "reconnecting"
    OFFLINE = "offline"
    FAILED = "failed"


class SourceStatus(StrEnum):
    """A source's own lifecycle (``live``: frames arrive; ``stopped``: ended or stopped)."""

    CONNECTING = "connecting"
    LIVE = "live"
    RECONNECTING = "reconnecting"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def stream_status(self) -> StreamStatus:
        """What the state hash and the API say of a stream whose source is in this state."""
        return _STREAM_STATUS[self]


_STREAM_STATUS = {
    SourceStatus.CONNECTING: StreamStatus.CONNECTING,
    SourceStatus.LIVE: StreamStatus.ONLINE,
    SourceStatus.RECONNECTING: StreamStatus.RECONNECTING,
    SourceStatus.STOPPED: StreamStatus.OFFLINE,
    SourceStatus.FAILED: StreamStatus.FAILED,
}


class DropCause(StrEnum):
    SUPERSEDED = "superseded"
    """A newer frame replaced it in the mailbox before analysis took it."""
    FPS_CAP = "fps_cap"
    """Over the analysis fps cap; never converted."""
    SKIPPED_NONREF = "skipped_nonref"
    """A non-reference frame the decoder was told not to decode (no other frame needs it)."""
    SKIPPED_GOP_TAIL = "skipped_gop_tail"
    """Not decoded: it came after the last sampled frame of a closed GOP, so nothing kept
    depends on it (the next keyframe starts afresh)."""


class Frame:
    """One decoded picture of one stream, with lazy conversions.

    Backed by the decoder's own picture (``av_frame``) or, for sources that already hold RGB
    (WebRTC, tests), by an RGB array. Conversions are thread-safe and cached where reused.
    A decoder's picture is shown turned by its ``orientation`` (a phone's display matrix):
    sizes, boxes and pixels are all of the picture as shown, upright.
    """

    __slots__ = (
        "_av",
        "_lock",
        "_orientation",
        "_rgb",
        "_small",
        "captured_at",
        "decode_s",
        "height",
        "pts",
        "seq",
        "stream_id",
        "width",
    )

    def __init__(
        self,
        stream_id: str,
        seq: int,
        pts: float,
        captured_at: float,
        *,
        av_frame: av.VideoFrame | None = None,
        rgb: np.ndarray | None = None,
        decode_s: float | None = None,
        orientation: Orientation = UPRIGHT,
    ) -> None:
        if (av_frame is None) == (rgb is None):
            raise ValueError("a Frame holds exactly one of av_frame or rgb")
        if rgb is not None:
            if not orientation.upright:
                raise ValueError("an RGB-backed frame is upright already")
            check_rgb(rgb)
            self.height, self.width = int(rgb.shape[0]), int(rgb.shape[1])
        else:
            assert av_frame is not None
            self.width, self.height = orientation.displayed_size(
                int(av_frame.width), int(av_frame.height)
            )
        self.stream_id = stream_id
        self.seq = seq
        self.pts = pts
        self.captured_at = captured_at
        # Seconds the decoder call that produced this picture took (None: not decoded here).
        self.decode_s = decode_s
        self._av = av_frame
        self._orientation = orientation
        self._rgb = rgb
        self._small: dict[int, tuple[np.ndarray, float]] = {}
        self._lock = threading.Lock()

    def detection_image(self, max_side: int) -> tuple[np.ndarray, float]:
        """An RGB image whose longest side is at most ``max_side``, and its scale to full size.

        Multiply coordinates in the small image by ``1 / scale`` to get full-resolution pixels.
        From the decoder's picture: an area downscale in YUV, then RGB of the small picture.
        """
        with self._lock:
            cached = self._small.get(max_side)
            if cached is not None:
                return cached
            scale = min(1.0, max_side / max(self.width, self.height))
            width = max(1, round(self.width * scale))
            height = max(1, round(self.height * scale))
            if self._rgb is not None:
                small = (
                    self._rgb
                    if scale == 1.0
                    else cv2.resize(self._rgb, (width, height), interpolation=cv2.INTER_AREA)
                )
            else:
                assert self._av is not None
                turn = self._orientation
                stored_w, stored_h = turn.displayed_size(width, height)
                small = turn.apply(
                    convert.full_rgb(self._av)
                    if scale == 1.0
                    else convert.scaled_rgb(self._av, stored_w, stored_h)
                )
            result = (small, width / self.width)
            self._small[max_side] = result
            return result

    def region_rgb(self, x1: int, y1: int, x2: int, y2: int) -> tuple[np.ndarray, int, int]:
        """Full-resolution RGB of a box clipped to the frame, and the clipped box's origin.

        Only the box's own samples are converted, so a face costs a face, not a frame.
        """
        x1c, y1c = max(0, int(x1)), max(0, int(y1))
        x2c, y2c = min(self.width, int(x2)), min(self.height, int(y2))
        if x2c <= x1c or y2c <= y1c:
            raise ValueError(
                f"box ({x1},{y1},{x2},{y2}) lies outside the {self.width}x{self.height} frame"
            )
        rgb = self._rgb
        if rgb is not None:
            return rgb[y1c:y2c, x1c:x2c], x1c, y1c
        assert self._av is not None
        turn = self._orientation
        stored = turn.stored_box(x1c, y1c, x2c, y2c, self._av.width, self._av.height)
        return turn.apply(convert.region_rgb(self._av, *stored)), x1c, y1c

    def to_rgb(self) -> np.ndarray:
        """The whole picture as RGB (converted once, then kept)."""
        with self._lock:
            if self._rgb is None:
                assert self._av is not None
                self._rgb = self._orientation.apply(convert.full_rgb(self._av))
            return self._rgb

    def __repr__(self) -> str:
        return (
            f"Frame(stream_id={self.stream_id!r}, seq={self.seq}, pts={self.pts:.3f}, "
            f"{self.width}x{self.height})"
        )


def check_rgb(image: np.ndarray) -> None:
    """Refuse anything but an HxWx3 uint8 picture, naming what was wrong."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"image of {image.shape[1]}x{image.shape[0]} pixels is too small")


@dataclass
class SourceStats:
    """A snapshot of one source's health, for metrics, the API and Redis state.

    Frame counts follow one frame's way: ``frames_in`` arrive from the source; each is decoded
    (``frames_decoded``) or skipped undecoded (``dropped`` skipped_*); a decoded frame is put in
    the mailbox (``frames_delivered``) or dropped over the fps cap; a delivered frame is taken
    by analysis (``frames_taken``) or superseded by a newer one.
    """

    stream_id: str
    status: SourceStatus
    url: str
    frames_in: int = 0
    frames_decoded: int = 0
    frames_delivered: int = 0
    frames_taken: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    decode_errors: int = 0
    reconnects: int = 0
    watchdog_trips: int = 0
    last_error: str | None = None
    next_retry_in_s: float | None = None
    fps_in: float = 0.0
    fps_out: float = 0.0
    width: int = 0
    height: int = 0
    codec: str | None = None
    skipping_nonref: bool = False
    ended: bool = False
    """A file source reached its end (status stopped)."""


FrameCallback = Callable[[], None]
"""Called by a source, from its reader thread, whenever a new frame lands in its mailbox: lets
one analysis loop wait on many sources without polling. It must be quick and never block."""


class FrameSource(Protocol):
    """A stream of frames with a latest-frame mailbox; never raises on bad input."""

    stream_id: str

    def start(self) -> None:
        """Begin reading in the background (idempotent)."""

    def stop(self) -> None:
        """Stop reading and release the input; returns once the reader has ended."""

    def take(self) -> Frame | None:
        """The newest undelivered frame, or None; never blocks."""

    def stats(self) -> SourceStats:
        """Current status and counters."""

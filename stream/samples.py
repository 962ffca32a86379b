"""Sample media built from a real face photograph, for the demo, benchmarks and tests.

The face is ``skimage.data.astronaut()`` (public domain, shipped with scikit-image). Videos are
encoded with PyAV so that they are real H.264 streams with real GOP structure.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

ASTRONAUT_FACE_BOX = (181, 62, 268, 172)
"""Where independent detectors put the astronaut's face in the 512x512 original."""


def astronaut() -> np.ndarray:
    """The 512x512 RGB astronaut photograph."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def background(
    width: int, height: int, *, phase: float = 0.0, base: tuple[int, int, int] = (90, 110, 130)
) -> np.ndarray:
    """A textured, face-free backdrop (smooth gradients so it compresses like real video);
    ``phase`` and ``base`` colour vary it."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    red = base[0] + 60 * np.sin(xs / max(width, 1) * math.pi * 2 + phase)
    green = base[1] + 50 * np.cos(ys / max(height, 1) * math.pi * 3 + 2 * phase)
    blue = base[2] + 40 * np.sin((xs + ys) / max(width + height, 1) * math.pi * 4 + 3 * phase)
    return np.stack([red, green, blue], axis=-1).clip(0, 255).astype(np.uint8)


BACKDROP_PICTURES = ("brick", "grass", "gravel", "coffee", "rocket", "hubble_deep_field")
"""Face-free photographs and textures shipped with scikit-image, usable as backdrops."""


def picture_backdrop(name: str, width: int, height: int) -> np.ndarray:
    """A scikit-image picture (``BACKDROP_PICTURES``) as an RGB backdrop covering the frame."""
    from skimage import data

    if name not in BACKDROP_PICTURES:
        raise ValueError(f"unknown backdrop {name!r}; use one of {', '.join(BACKDROP_PICTURES)}")
    picture = np.asarray(getattr(data, name)())
    if picture.ndim == 2:
        picture = np.repeat(picture[..., None], 3, axis=-1)
    rows, cols = picture.shape[:2]
    scale = max(width / cols, height / rows)
    size = (max(width, round(cols * scale)), max(height, round(rows * scale)))
    resized = cv2.resize(picture[..., :3], size, interpolation=cv2.INTER_AREA)
    top, left = (size[1] - height) // 2, (size[0] - width) // 2
    return np.ascontiguousarray(resized[top : top + height, left : left + width])


@dataclass(frozen=True)
class FacePlacement:
    """Where the pasted portrait lies in a frame, and where its face box lands."""

    x: int
    y: int
    scale: float

    def face_box(self) -> tuple[float, float, float, float]:
        x1, y1, x2, y2 = ASTRONAUT_FACE_BOX
        s = self.scale
        return (self.x + x1 * s, self.y + y1 * s, self.x + x2 * s, self.y + y2 * s)


def face_placement(index: int, count: int, width: int, height: int) -> FacePlacement:
    """A smooth path: the portrait drifts across the frame and breathes in size."""
    phase = index / max(count, 1)
    base = 0.55 * min(width, height) / 512
    scale = base * (1.0 + 0.2 * math.sin(2 * math.pi * phase))
    size = 512 * scale
    x = (width - size) * (0.5 + 0.35 * math.sin(2 * math.pi * phase))
    y = (height - size) * (0.5 + 0.25 * math.cos(2 * math.pi * phase))
    return FacePlacement(round(x), round(y), scale)


def compose_frame(
    width: int, height: int, placement: FacePlacement | None, backdrop: np.ndarray | None = None
) -> np.ndarray:
    """One RGB frame: the backdrop with the astronaut portrait pasted at ``placement``."""
    frame = (backdrop if backdrop is not None else background(width, height)).copy()
    if placement is None:
        return frame
    portrait = astronaut()
    size = max(1, round(512 * placement.scale))
    scaled = cv2.resize(portrait, (size, size), interpolation=cv2.INTER_AREA)
    x0, y0 = placement.x, placement.y
    fx0, fy0 = max(0, -x0), max(0, -y0)
    x0c, y0c = max(0, x0), max(0, y0)
    x1c, y1c = min(width, x0 + size), min(height, y0 + size)
    if x1c > x0c and y1c > y0c:
        frame[y0c:y1c, x0c:x1c] = scaled[fy0 : fy0 + (y1c - y0c), fx0 : fx0 + (x1c - x0c)]
    return frame


def face_frames(
    width: int, height: int, count: int, *, face: bool = True
) -> Iterator[tuple[np.ndarray, FacePlacement | None]]:
    """Frames of the moving face (or of the empty backdrop when ``face`` is false)."""
    backdrop = background(width, height)
    for index in range(count):
        placement = face_placement(index, count, width, height) if face else None
        if not face:
            # Keep the picture changing so the encoder produces real P/B frames.
            shift = (index * 7) % width
            yield np.roll(backdrop, shift, axis=1), None
        else:
            yield compose_frame(width, height, placement, backdrop), placement


def write_video(
    path: str | Path,
    frames: Iterator[np.ndarray],
    *,
    fps: int = 30,
    codec: str = "libx264",
    gop: int = 60,
    bframes: int = 0,
    preset: str = "veryfast",
    crf: int = 23,
    pix_fmt: str = "yuv420p",
    display_rotation: int = 0,
    display_flip: tuple[bool, bool] = (False, False),
) -> Path:
    """Encode RGB frames to an H.264 (or other codec) file with a given GOP structure.

    ``display_rotation`` (degrees counter-clockwise) and ``display_flip`` (horizontal,
    vertical) go into the file's display matrix, as a phone records: players turn the stored
    pixels by it.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream: av.VideoStream | None = None  # created from the first frame's size
        for rgb in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=fps)  # type: ignore[assignment]
                assert stream is not None
                stream.width = rgb.shape[1]
                stream.height = rgb.shape[0]
                stream.pix_fmt = pix_fmt
                stream.time_base = Fraction(1, fps)
                if display_rotation or any(display_flip):
                    stream.set_display_rotation(
                        display_rotation, hflip=display_flip[0], vflip=display_flip[1]
                    )
                if codec == "libx264":
                    stream.options = {
                        "preset": preset,
                        "crf": str(crf),
                        "g": str(gop),
                        "bf": str(bframes),
                        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"
                        + (":b-pyramid=normal" if bframes else ""),
                    }
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode(None):
                container.mux(packet)
    return path


def write_face_video(
    path: str | Path,
    width: int = 640,
    height: int = 360,
    *,
    seconds: float = 2.0,
    fps: int = 30,
    face: bool = True,
    gop: int = 60,
    bframes: int = 0,
    display_rotation: int = 0,
) -> Path:
    """An H.264 video of the astronaut's face moving and scaling (or of no face at all).

    With a ``display_rotation`` (a multiple of 90 degrees, counter-clockwise) the pixels are
    stored turned the other way and the file says to turn them back, as a phone held upright
    records: shown, the video is ``width`` x ``height`` and the same as without.
    """
    if display_rotation % 90:
        raise ValueError(f"display_rotation must be a multiple of 90, got {display_rotation}")
    count = max(1, round(seconds * fps))
    turns = -display_rotation // 90
    frames = (
        np.ascontiguousarray(np.rot90(rgb, turns))
        for rgb, _ in face_frames(width, height, count, face=face)
    )
    return write_video(path, frames, fps=fps, gop=gop, bframes=bframes,
                       display_rotation=display_rotation)

"""How a decoded picture is meant to be shown: the display matrix a phone writes instead of
rotating its pixels (a portrait video is stored landscape, with "turn 90°" beside it).

Players apply the matrix; a face detector given the stored pixels sees faces lying on their
side and misses them. ``Orientation`` reads the matrix FFmpeg attaches to each decoded frame and
turns converted pixels (numpy, after conversion: cheap on a detection image or a face box) the
way a player would, so that everything downstream sees the picture upright, in its displayed
size. All eight rotations and mirrorings by quarter turns are exact; a matrix tilted between
quarter turns is rounded to the nearest one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import av
import numpy as np
from av.sidedata.sidedata import Type as SideDataType

if TYPE_CHECKING:
    from av.sidedata.sidedata import SideDataContainer


@dataclass(frozen=True)
class Orientation:
    """Stored pixels to displayed ones: ``transpose`` (a quarter turn swaps the axes) and
    then mirror the rows (``flip_rows``, top to bottom) and/or the columns (``flip_cols``)."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @classmethod
    def of(cls, frame: av.VideoFrame) -> Orientation:
        """The orientation in ``frame``'s display matrix side data (upright if it has none).

        Once per stream, not per frame: a stream's matrix does not change, and reading a frame's
        side data ties the frame in a reference cycle (PyAV 18) that only the cyclic garbage
        collector frees, so read on every frame it lets decoded pictures pile up by the hundred
        megabytes.
        """
        # PyAV's stubs type a frame's side data as one entry; it is the mapping of them all.
        side_data = cast("SideDataContainer", frame.side_data).get(SideDataType.DISPLAYMATRIX)
        if side_data is None:
            return UPRIGHT
        return cls.from_matrix(struct.unpack("<9i", bytes(side_data)))

    @classmethod
    def from_matrix(cls, matrix: tuple[int, ...]) -> Orientation:
        """From FFmpeg's 3x3 display matrix (row-major, 16.16 fixed point): a stored pixel
        (x, y) is shown at x' = a·x + c·y, y' = b·x + d·y (plus a translation)."""
        a, b, c, d = matrix[0], matrix[1], matrix[3], matrix[4]
        if abs(a) >= abs(b):
            return cls(transpose=False, flip_rows=d < 0, flip_cols=a < 0)
        return cls(transpose=True, flip_rows=b < 0, flip_cols=c < 0)

    @property
    def upright(self) -> bool:
        return not (self.transpose or self.flip_rows or self.flip_cols)

    def displayed_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) as shown, of a stored picture of ``width`` x ``height``."""
        return (height, width) if self.transpose else (width, height)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The HxWxC stored ``image`` (or a region of it) as shown, contiguous."""
        if self.upright:
            return image
        out = image.transpose(1, 0, 2) if self.transpose else image
        if self.flip_rows:
            out = out[::-1]
        if self.flip_cols:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)

    def stored_box(
        self, x1: int, y1: int, x2: int, y2: int, width: int, height: int
    ) -> tuple[int, int, int, int]:
        """The box of the stored ``width`` x ``height`` picture that is shown as the box
        [x1, x2) x [y1, y2); ``apply`` turns its pixels into the shown box's."""
        shown_w, shown_h = self.displayed_size(width, height)
        # Undo the mirrors in the shown picture, then the transpose.
        if self.flip_cols:
            x1, x2 = shown_w - x2, shown_w - x1
        if self.flip_rows:
            y1, y2 = shown_h - y2, shown_h - y1
        return (y1, x1, y2, x2) if self.transpose else (x1, y1, x2, y2)


UPRIGHT = Orientation()

"""Frame conversions: a region converted alone is exactly that region of the full conversion,
and the detection image is one scaled conversion of the decoder's picture."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from stream.samples import compose_frame, face_placement
from stream.sources.base import Frame


@pytest.fixture(scope="module")
def decoded(face_video_720p: Path) -> list[av.VideoFrame]:
    with av.open(str(face_video_720p)) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame)
            if len(frames) == 12:
                break
    return frames


def random_boxes(width: int, height: int, count: int, seed: int = 7) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    boxes = [(0, 0, width, height), (0, 0, 1, 1), (width - 1, height - 1, width, height),
             (1, 1, 2, 2), (3, 5, 300, 201)]
    for _ in range(count):
        x1, y1 = int(rng.integers(0, width - 1)), int(rng.integers(0, height - 1))
        x2, y2 = int(rng.integers(x1 + 1, width + 1)), int(rng.integers(y1 + 1, height + 1))
        boxes.append((x1, y1, x2, y2))
    return boxes


def test_region_equals_the_full_conversion(decoded: list[av.VideoFrame]) -> None:
    for index in (0, 5, 11):  # an I-frame and later ones
        frame = Frame("s", index, 0.0, 0.0, av_frame=decoded[index])
        full = Frame("s", index, 0.0, 0.0, av_frame=decoded[index]).to_rgb()
        assert full.shape == (720, 1280, 3)
        for x1, y1, x2, y2 in random_boxes(frame.width, frame.height, 40, seed=index):
            region, x0, y0 = frame.region_rgb(x1, y1, x2, y2)
            assert (x0, y0) == (x1, y1)
            np.testing.assert_array_equal(region, full[y1:y2, x1:x2])


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuvj420p", "yuv422p", "yuv444p",
                                     "yuv420p10le", "nv12", "gray"])
@pytest.mark.parametrize(("colorspace", "size"), [(None, (642, 362)), ("ITU709", (642, 362)),
                                                 (None, (643, 361))])
def test_region_is_exact_in_every_decoder_format(
    pix_fmt: str, colorspace: str | None, size: tuple[int, int]
) -> None:
    width, height = size
    rgb = compose_frame(width, height, face_placement(3, 10, width, height))
    picture = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
    if colorspace is not None:
        picture.colorspace = av.video.reformatter.Colorspace[colorspace]
    frame = Frame("s", 1, 0.0, 0.0, av_frame=picture)
    full = Frame("s", 1, 0.0, 0.0, av_frame=picture).to_rgb()
    for x1, y1, x2, y2 in random_boxes(width, height, 25):
        region, _, _ = frame.region_rgb(x1, y1, x2, y2)
        np.testing.assert_array_equal(
            region, full[y1:y2, x1:x2], err_msg=f"{pix_fmt} box {(x1, y1, x2, y2)}"
        )


def test_region_is_clipped_to_the_frame(decoded: list[av.VideoFrame]) -> None:
    frame = Frame("s", 1, 0.0, 0.0, av_frame=decoded[0])
    region, x0, y0 = frame.region_rgb(-20, -10, 50, 40)
    assert (x0, y0) == (0, 0) and region.shape == (40, 50, 3)
    region, x0, y0 = frame.region_rgb(1250, 700, 1400, 800)
    assert (x0, y0) == (1250, 700) and region.shape == (20, 30, 3)
    with pytest.raises(ValueError, match="outside"):
        frame.region_rgb(1300, 0, 1400, 10)


def test_detection_image_is_a_faithful_small_picture(decoded: list[av.VideoFrame]) -> None:
    frame = Frame("s", 1, 0.0, 0.0, av_frame=decoded[3])
    small, scale = frame.detection_image(640)
    assert small.shape == (360, 640, 3) and small.dtype == np.uint8
    assert scale == pytest.approx(0.5)
    reference = cv2.resize(frame.to_rgb(), (640, 360), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - reference.astype(int)).mean() < 1.5
    again, _ = frame.detection_image(640)
    assert again is small  # cached


def test_detection_image_never_upscales(decoded: list[av.VideoFrame]) -> None:
    frame = Frame("s", 1, 0.0, 0.0, av_frame=decoded[0])
    same, scale = frame.detection_image(4000)
    assert scale == 1.0 and same.shape == (720, 1280, 3)
    np.testing.assert_array_equal(same, frame.to_rgb())


def test_rgb_backed_frame_gives_the_same_answers() -> None:
    rgb = compose_frame(320, 180, face_placement(0, 1, 320, 180))
    frame = Frame("s", 1, 0.5, 0.0, rgb=rgb)
    region, x0, y0 = frame.region_rgb(10, 20, 110, 90)
    assert (x0, y0) == (10, 20)
    np.testing.assert_array_equal(region, rgb[20:90, 10:110])
    small, scale = frame.detection_image(160)
    assert small.shape == (90, 160, 3) and scale == 0.5
    with pytest.raises(ValueError, match="exactly one"):
        Frame("s", 1, 0.0, 0.0)

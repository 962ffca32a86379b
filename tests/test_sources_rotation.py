"""Videos with a display matrix (a phone's "turn this by 90°"): frames come out as players show
them, upright, so that the face detector finds the faces it finds in the upright video."""

from __future__ import annotations

import gc
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from engines.retinaface.torch_detector import RetinaFaceDetector
from stream.config import FaceSettings
from stream.faces import FaceStage, FrameFaces
from stream.samples import write_face_video, write_video
from stream.sources.base import Frame
from stream.sources.orientation import Orientation
from stream.sources.pyav import PyAVSource
from stream.sources.reader import read_frames
from tests.support.sources import collect, fast_ingest

# (degrees counter-clockwise, horizontal flip, vertical flip): every quarter-turn orientation.
MATRICES = [(0, False, False), (90, False, False), (180, False, False), (-90, False, False),
            (0, True, False), (0, False, True), (90, True, False), (-90, True, False)]


def marked_picture(width: int = 96, height: int = 64) -> np.ndarray:
    """A picture no turn or mirror maps onto itself: distinct blocks in three corners."""
    picture = np.full((height, width, 3), 40, np.uint8)
    picture[:16, :24] = (250, 30, 30)
    picture[:16, -24:] = (30, 250, 30)
    picture[-16:, :24] = (30, 30, 250)
    return picture


def ffmpeg_shown(path: Path) -> np.ndarray:
    """The first frame as the ffmpeg command line shows it (it applies the display matrix)."""
    probe = av.open(str(path))
    stream = probe.streams.video[0]
    frame = next(probe.decode(stream))
    shown = Orientation.of(frame).displayed_size(frame.width, frame.height)
    probe.close()
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo",
         "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    # The size is ffmpeg's too: a wrong guess at it fails the reshape.
    return np.frombuffer(raw, np.uint8).reshape(shown[1], shown[0], 3)


@pytest.mark.parametrize(("degrees", "hflip", "vflip"), MATRICES)
def test_frames_are_shown_as_ffmpeg_shows_them(
    tmp_path: Path, degrees: int, hflip: bool, vflip: bool
) -> None:
    path = write_video(tmp_path / "turned.mp4", iter([marked_picture()] * 2), fps=10,
                       pix_fmt="yuv444p", crf=0, display_rotation=degrees,
                       display_flip=(hflip, vflip))
    expected = ffmpeg_shown(path)
    with av.open(str(path)) as container:
        picture = next(container.decode(video=0))
        frame = Frame("cam", 0, 0.0, 0.0, av_frame=picture, orientation=Orientation.of(picture))
        rgb = frame.to_rgb()
        assert (frame.height, frame.width, 3) == expected.shape == rgb.shape
        assert np.abs(rgb.astype(int) - expected).mean() < 2.0  # a wrong turn is off by ~50
        # A box converted alone is that box of the whole picture, turned.
        for x1, y1, x2, y2 in [(0, 0, 10, 7), (5, 3, 50, 41), (0, 0, frame.width, frame.height),
                               (frame.width - 9, frame.height - 5, frame.width, frame.height)]:
            region, x0, y0 = frame.region_rgb(x1, y1, x2, y2)
            assert (x0, y0) == (x1, y1)
            np.testing.assert_array_equal(region, rgb[y1:y2, x1:x2])
        small, scale = frame.detection_image(48)
        assert max(small.shape[:2]) == 48 and small.shape[:2] == (
            round(frame.height * scale), round(frame.width * scale))
        assert np.abs(small.astype(int) - rgb[::2, ::2]).mean() < 12.0


@pytest.fixture(scope="module")
def detector(retinaface_weights: Path) -> RetinaFaceDetector:
    return RetinaFaceDetector.load("mobilenet0.25", device="cpu")


@pytest.fixture(scope="module")
def portrait_videos(media_dir: Path) -> dict[int, Path]:
    """One second of a 540x960 portrait video: stored upright, and stored as a phone held
    upright records it (landscape pixels turned a quarter, and a display matrix)."""
    return {
        degrees: write_face_video(media_dir / f"portrait_{degrees}.mp4", 540, 960,
                                  seconds=1.0, display_rotation=degrees)
        for degrees in (0, 90, -90)
    }


def live_frames(path: Path) -> tuple[list[Frame], tuple[int, int]]:
    """Every frame the live ingest delivers at 10 fps, and the size its stats report."""
    source = PyAVSource("phone", str(path), fast_ingest(), analysis_fps=10, realtime=False)
    source.start()
    try:
        frames = collect(source, 60)
        stats = source.stats()
    finally:
        source.stop()
    assert stats.ended, stats.last_error
    return frames, (stats.width, stats.height)


@pytest.mark.parametrize("degrees", [90, -90])
def test_a_turned_phone_video_shows_the_detector_upright_faces(
    detector: RetinaFaceDetector, portrait_videos: dict[int, Path], degrees: int
) -> None:
    with av.open(str(portrait_videos[degrees])) as container:
        stored = container.streams.video[0]
        assert (stored.width, stored.height) == (960, 540)  # the pixels lie on their side

    def faces(frames: list[Frame]) -> list[FrameFaces]:
        return FaceStage(detector, FaceSettings()).process(frames)  # fresh tracks each time

    upright, upright_size = live_frames(portrait_videos[0])
    turned, turned_size = live_frames(portrait_videos[degrees])
    assert upright_size == turned_size == (540, 960)
    assert len(turned) == len(upright) == 10
    assert {f.to_rgb().shape for f in turned} == {(960, 540, 3)}
    upright_faces, turned_faces = faces(upright), faces(turned)
    found_upright = [len(r.faces) for r in upright_faces]
    assert sum(found_upright) >= 9, found_upright
    assert [len(r.faces) for r in turned_faces] == found_upright
    for a, b in zip(upright_faces, turned_faces, strict=True):
        for face_a, face_b in zip(a.faces, b.faces, strict=True):
            assert np.abs(face_a.box - face_b.box).max() < 12  # the same face, same place

    offline = list(read_frames(portrait_videos[degrees], fps=10))
    assert [f.to_rgb().shape for f in offline] == [(960, 540, 3)] * 10
    assert [len(r.faces) for r in faces(offline)] == found_upright


def test_decoded_pictures_do_not_pile_up_waiting_for_the_garbage_collector(
    portrait_videos: dict[int, Path],
) -> None:
    # Reading a frame's side data ties the frame in a reference cycle (PyAV 18): done for every
    # frame, every decoded picture would wait for the cyclic collector.
    def pictures_alive() -> int:
        return sum(type(o) is av.VideoFrame for o in gc.get_objects())

    gc.collect()
    gc.disable()
    try:
        before = pictures_alive()
        for frame in read_frames(portrait_videos[90]):
            frame.to_rgb()
        del frame
        live, _ = live_frames(portrait_videos[90])
        assert len(live) == 10
        del live
        assert pictures_alive() - before <= 2  # a session's first frame, read for its matrix
    finally:
        gc.enable()

"""The local RTSP server (scripts/rtsp_server.py) behaves like a camera: a looped file never
ends for a connected client and its timestamps keep rising across the seam; a client joining
later does not rewind the others; ``--no-loop`` ends the stream with the file."""

from __future__ import annotations

import itertools
import subprocess
import threading
from fractions import Fraction
from pathlib import Path

import av
import pytest

from stream.rtsp_camera import SERVER_SCRIPT, SYSTEM_PYTHON, RtspCamera

FPS = 30
READ_OPTIONS = {"rtsp_transport": "tcp", "timeout": "5000000"}


@pytest.fixture(scope="module")
def one_second(media_dir: Path) -> Path:
    """1 s of the moving face, 30 fps, with B-frames (the loop must not leave a gap for them)."""
    from stream.samples import write_face_video

    return write_face_video(media_dir / "rtsp_one_second.mp4", 320, 180, seconds=1.0, gop=15,
                            bframes=2)


def read_pts(url: str, *, until_s: float | None, ready: threading.Event | None = None
             ) -> tuple[list[int], Fraction, bool]:
    """Decoded frames' pts (the first, unsynchronised one left out) until ``until_s`` seconds of
    media have passed, or to the end; and whether the stream ended."""
    pts: list[int] = []
    with av.open(url, options=READ_OPTIONS, timeout=10) as container:
        stream = container.streams.video[0]
        assert stream.time_base is not None
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            pts.append(frame.pts)
            if ready is not None and len(pts) == FPS // 2:
                ready.set()
            if until_s is not None and (pts[-1] - pts[0]) * stream.time_base >= until_s:
                return pts, stream.time_base, False
        return pts, stream.time_base, True


def assert_seamless(pts: list[int], time_base: Fraction) -> None:
    """Strictly rising and evenly spaced: no rewind, no gap at a seam."""
    steps = [(b - a) * time_base for a, b in itertools.pairwise(pts)]
    assert all(step > 0 for step in steps), "pts went backwards"
    assert max(steps) < Fraction(3, 2 * FPS), f"a gap of {float(max(steps)):.3f} s"


def test_looped_file_never_ends_and_pts_keep_rising(one_second: Path) -> None:
    with RtspCamera(one_second) as server:
        pts, time_base, ended = read_pts(server.url, until_s=2.5)
    assert not ended
    assert (pts[-1] - pts[0]) * time_base >= 2.5  # past two seams of the 1 s file
    assert len(pts) >= int(2.5 * FPS)
    assert_seamless(pts, time_base)


def test_a_client_joining_later_does_not_rewind_the_first(one_second: Path) -> None:
    with RtspCamera(one_second) as server:
        first_reading = threading.Event()
        results: dict[str, tuple[list[int], Fraction, bool]] = {}

        def first() -> None:
            results["first"] = read_pts(server.url, until_s=2.5, ready=first_reading)

        thread = threading.Thread(target=first)
        thread.start()
        assert first_reading.wait(15)
        results["second"] = read_pts(server.url, until_s=1.0)
        thread.join(20)
    for name in ("first", "second"):
        pts, time_base, ended = results[name]
        assert not ended, name
        assert_seamless(pts, time_base)


def test_no_loop_ends_the_stream_with_the_file(one_second: Path) -> None:
    with RtspCamera(one_second, loop=False) as server:
        pts, time_base, ended = read_pts(server.url, until_s=None)
    assert ended
    assert FPS // 2 <= len(pts) <= FPS
    assert_seamless(pts, time_base)


def test_a_file_without_h264_is_refused_at_start(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(bytes(range(256)) * 16)
    result = subprocess.run(
        [SYSTEM_PYTHON, str(SERVER_SCRIPT), str(garbage), "--port", "1"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2
    assert "no H.264 video track" in result.stderr

"""Local file sources: the fps cap and its drop counts, monotonic pts and seq, decode skipping
that changes no pixel, real-time pacing, loops, and the mailbox's two modes."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from stream.config import StreamSpec
from stream.sources.base import Frame
from stream.sources.pyav import PyAVSource
from tests.support.sources import collect, fast_ingest, wait_for


def run_file(path: Path, timeout_s: float = 20.0, **kwargs: object) -> tuple[list[Frame], object]:
    settings = kwargs.pop("settings", None) or fast_ingest()
    source = PyAVSource("cam", str(path), settings, realtime=False, **kwargs)  # type: ignore[arg-type]
    source.start()
    try:
        frames = collect(source, timeout_s)
        return frames, source.stats()
    finally:
        source.stop()
        assert source.threads_alive() == 0


def reference_frames(path: Path) -> dict[float, np.ndarray]:
    """Every frame of the file, fully decoded by plain PyAV, by pts in seconds."""
    with av.open(str(path)) as container:
        return {
            round(float(f.time), 6): f.to_ndarray(format="rgb24")
            for f in container.decode(video=0)
        }


def test_fps_cap_counts_every_frame_and_keeps_pts_and_seq_monotonic(
    face_video_360p: Path,
) -> None:
    frames, stats = run_file(face_video_360p)
    assert stats.status == "stopped" and stats.ended and stats.last_error is None
    # 2 s at 30 fps, sampled at 5 fps on the pts grid.
    assert [round(f.pts, 3) for f in frames] == [round(0.2 * i, 3) for i in range(10)]
    assert [f.seq for f in frames] == list(range(1, 11))
    assert all(f.stream_id == "cam" and (f.width, f.height) == (640, 360) for f in frames)
    assert stats.frames_in == 60
    dropped = stats.dropped
    assert stats.frames_decoded + dropped["skipped_gop_tail"] + dropped["skipped_nonref"] == 60
    assert stats.frames_delivered == 10 == stats.frames_taken
    assert dropped["fps_cap"] == stats.frames_decoded - 10
    assert dropped["superseded"] == 0
    # No B-frames: the 5 frames after the last sample of the GOP were never decoded.
    assert dropped["skipped_gop_tail"] == 5 and dropped["skipped_nonref"] == 0


@pytest.mark.parametrize("fixture", ["face_video_360p", "face_video_720p"])
def test_skipping_decodes_no_pixel_differently(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    path: Path = request.getfixturevalue(fixture)
    reference = reference_frames(path)
    skipping, stats = run_file(path)
    plain, plain_stats = run_file(
        path, settings=fast_ingest(skip_nonref=False, skip_gop_tail=False)
    )
    skipped = stats.dropped["skipped_gop_tail"] + stats.dropped["skipped_nonref"]
    assert skipped > 0 and stats.frames_decoded + skipped == stats.frames_in
    assert plain_stats.frames_decoded == plain_stats.frames_in
    for frame in skipping + plain:
        np.testing.assert_array_equal(frame.to_rgb(), reference[round(frame.pts, 6)])
    assert len(skipping) == len(plain) == 10


def test_b_frame_streams_skip_non_reference_frames(face_video_720p: Path) -> None:
    frames, stats = run_file(face_video_720p)
    assert stats.skipping_nonref
    assert stats.dropped["skipped_nonref"] > 0 and stats.dropped["skipped_gop_tail"] == 0
    # Each frame is the first one left at or after its tick of the 5 fps grid.
    assert len(frames) == 10
    assert all(0.2 * i - 1e-6 <= f.pts < 0.2 * (i + 1) for i, f in enumerate(frames))


def test_per_stream_fps_and_the_frame_callback(face_video_360p: Path) -> None:
    landed = threading.Semaphore(0)
    spec = StreamSpec(id="lobby", url=str(face_video_360p), analysis_fps=2.0, realtime=False)
    source = PyAVSource.from_spec(spec, fast_ingest(), on_frame=landed.release)
    source.start()
    frames = []
    while len(frames) < 4 and landed.acquire(timeout=10):
        frame = source.take()
        assert frame is not None  # the callback came after the frame landed
        frames.append(frame)
    source.stop()
    assert [round(f.pts, 3) for f in frames] == [0.0, 0.5, 1.0, 1.5]


def test_realtime_file_is_paced_and_superseded_when_nobody_takes(face_video_360p: Path) -> None:
    source = PyAVSource("cam", str(face_video_360p), fast_ingest(), realtime=True)
    source.start()
    assert wait_for(lambda: source.stats().status == "stopped", 15)
    stats = source.stats()
    last = source.take()
    source.stop()
    assert last is not None and last.seq == 10 and last.pts == pytest.approx(1.8)
    assert stats.frames_delivered == 10 and stats.dropped["superseded"] == 9


def test_realtime_pacing_follows_media_time(face_video_360p: Path) -> None:
    source = PyAVSource("cam", str(face_video_360p), fast_ingest(), realtime=True)
    source.start()
    frames = collect(source, 15)
    source.stop()
    assert len(frames) == 10
    wall = frames[-1].captured_at - frames[0].captured_at
    media = frames[-1].pts - frames[0].pts
    assert wall >= 0.8 * media  # released on media time, not as fast as decoding allows


def test_looping_file_continues_its_timeline(face_video_360p: Path) -> None:
    source = PyAVSource("cam", str(face_video_360p), fast_ingest(), realtime=False, loop=True)
    source.start()
    frames = collect(source, 20, until=lambda f, _: len(f) >= 25)
    stats = source.stats()
    source.stop()
    assert len(frames) >= 25 and stats.status == "live" and stats.reconnects == 0
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in itertools.pairwise(pts))
    assert pts[-1] > 4.0  # past two passes of a 2 s file
    assert [f.seq for f in frames] == list(range(1, len(frames) + 1))


def test_slow_analysis_does_not_trip_the_watchdog(face_video_360p: Path) -> None:
    settings = fast_ingest(watchdog_s=0.3)
    source = PyAVSource("cam", str(face_video_360p), settings, realtime=False)
    source.start()
    frames: list[Frame] = []
    while len(frames) < 5:
        assert wait_for(lambda: (f := source.take()) is not None and frames.append(f) is None, 10)
        threading.Event().wait(0.5)  # analysis slower than the watchdog period
    stats = source.stats()
    source.stop()
    assert stats.watchdog_trips == 0 and [f.seq for f in frames] == [1, 2, 3, 4, 5]

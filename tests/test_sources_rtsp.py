"""Live RTSP through GStreamer's RTSP server: reconnects after a server restart, the watchdog on
a stalled server, and one dead stream never delaying another."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.rtsp_camera import RtspCamera
from stream.samples import write_face_video
from stream.sources.base import Frame
from stream.sources.pyav import PyAVSource
from tests.support.sources import collect, fast_ingest, wait_for
from tests.support.tcp import SilentTcpServer


@pytest.fixture(scope="module")
def live_media(media_dir: Path) -> Path:
    """8 s of the moving face at 320x180, a keyframe every second."""
    return write_face_video(media_dir / "rtsp_face_180p.mp4", 320, 180, seconds=8.0, gop=30)


@pytest.fixture()
def rtsp(live_media: Path) -> Iterator[RtspCamera]:
    server = RtspCamera(live_media).start()
    yield server
    server.stop()


def signal_server(server: RtspCamera, sig: signal.Signals) -> None:
    process = server._process
    assert process is not None
    os.kill(process.pid, sig)


def assert_monotonic(frames: list[Frame]) -> None:
    assert all(b.seq > a.seq for a, b in itertools.pairwise(frames))
    assert all(b.pts > a.pts for a, b in itertools.pairwise(frames))


def test_server_restart_reconnects_with_backoff(rtsp: RtspCamera) -> None:
    settings = fast_ingest(reconnect_base_s=0.2, reconnect_cap_s=1.0)
    source = PyAVSource("cam", rtsp.url, settings)
    source.start()
    try:
        before = collect(source, 20, until=lambda f, _: len(f) >= 5)
        assert len(before) >= 5 and source.stats().status == "live"
        # The frame rate came from the stream itself (no probing of frame durations at open):
        # sampling 5 of 30 fps skips the non-reference frames.
        assert source.stats().skipping_nonref

        rtsp.stop()
        assert wait_for(lambda: source.stats().reconnects >= 3, 15)
        down = source.stats()
        assert down.status == "reconnecting"
        assert down.next_retry_in_s is not None and 0 <= down.next_retry_in_s <= 1.0
        assert "Connection refused" in (down.last_error or "")

        rtsp.start()  # same port
        after = collect(source, 20, until=lambda f, _: len(f) >= 5)
        up = source.stats()
    finally:
        source.stop()
    assert len(after) >= 5 and up.status == "live" and up.reconnects >= 3
    assert after[0].seq > before[-1].seq
    assert_monotonic(before + after)
    assert source.threads_alive() == 0


def test_paused_server_trips_the_watchdog(rtsp: RtspCamera) -> None:
    # The read timeout (4 s) is well above the watchdog's 1 s: the watchdog must act first.
    settings = fast_ingest(watchdog_s=1.0, open_timeout_s=1.5, read_timeout_s=4.0,
                           reconnect_base_s=0.1, reconnect_cap_s=0.5)
    source = PyAVSource("cam", rtsp.url, settings)
    source.start()
    try:
        before = collect(source, 20, until=lambda f, _: len(f) >= 3)
        assert len(before) >= 3
        signal_server(rtsp, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            assert wait_for(lambda: source.stats().watchdog_trips >= 1, 10)
            tripped_after = time.monotonic() - stopped_at
            stalled = source.stats()
        finally:
            signal_server(rtsp, signal.SIGCONT)
        assert stalled.status == "reconnecting" and stalled.reconnects >= 1
        assert tripped_after < settings.read_timeout_s  # not the read timeout's doing
        after = collect(source, 25, until=lambda f, _: len(f) >= 3)
    finally:
        source.stop()
    assert len(after) >= 3 and source.stats().watchdog_trips >= 1
    assert_monotonic(before + after)
    assert source.threads_alive() == 0  # the abandoned reader ended too


def test_a_dead_stream_does_not_delay_another(rtsp: RtspCamera) -> None:
    landed = threading.Event()
    with SilentTcpServer() as dead_server:
        settings = fast_ingest(open_timeout_s=3.0, read_timeout_s=3.0)
        dead = PyAVSource("dead", f"rtsp://127.0.0.1:{dead_server.port}/live", settings,
                          on_frame=landed.set)
        alive = PyAVSource("alive", rtsp.url, settings, on_frame=landed.set)
        dead.start()
        alive.start()
        frames: dict[str, list[Frame]] = {"dead": [], "alive": []}
        deadline = time.monotonic() + 20
        try:
            # One loop waits on both sources, as the analysis loop does: no polling.
            while len(frames["alive"]) < 15 and time.monotonic() < deadline:
                landed.wait(1.0)
                landed.clear()
                for source in (dead, alive):
                    frame = source.take()
                    if frame is not None:
                        frames[source.stream_id].append(frame)
            dead_stats = dead.stats()
        finally:
            dead.stop()
            alive.stop()
    assert dead_server.accepted >= 1 and not frames["dead"]
    assert dead_stats.status in ("connecting", "reconnecting")
    live = frames["alive"]
    assert len(live) >= 15
    gaps = [b.captured_at - a.captured_at for a, b in itertools.pairwise(live)]
    assert max(gaps) < 1.0  # 5 fps keeps flowing while the other reader is stuck for 3 s
    assert dead.threads_alive() == 0 and alive.threads_alive() == 0

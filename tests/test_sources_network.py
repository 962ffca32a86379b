"""HLS over HTTP and RTMP from real servers (Python's http.server, the ffmpeg CLI)."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest

from stream.sources.pyav import PyAVSource
from tests.support.http import HttpServer
from tests.support.rtmp import FfmpegRtmpServer
from tests.support.sources import collect, fast_ingest


@pytest.fixture(scope="module")
def hls_routes(face_video_360p: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("hls")
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(face_video_360p), "-c", "copy", "-f", "hls",
         "-hls_time", "1", "-hls_list_size", "0", "-hls_segment_filename",
         str(folder / "seg%d.ts"), str(folder / "index.m3u8")],
        check=True,
    )
    kinds = {".m3u8": "application/vnd.apple.mpegurl", ".ts": "video/mp2t"}
    return {f"/live/{p.name}": (kinds[p.suffix], p.read_bytes()) for p in folder.iterdir()}


def test_hls_over_http(hls_routes: dict) -> None:
    with HttpServer(hls_routes) as http:
        source = PyAVSource("hls", http.url("/live/index.m3u8"), fast_ingest())
        source.start()
        frames = collect(source, 15, until=lambda _, s: s.reconnects >= 1)
        stats = source.stats()
        source.stop()
    # The whole 2 s playlist sampled at 5 fps, then its end: for a network stream, a retry.
    # Served faster than real time, so frames analysis did not take in time were superseded.
    assert stats.frames_in >= 60 and stats.frames_delivered >= 10
    assert stats.frames_taken + stats.dropped["superseded"] == stats.frames_delivered
    assert len(frames) == stats.frames_taken >= 2
    assert all(b.pts > a.pts and b.seq > a.seq for a, b in itertools.pairwise(frames))
    assert stats.last_error == "the stream ended (end of stream from the server)"
    assert any(path.endswith(".ts") for path in http.requests)
    assert source.threads_alive() == 0


def test_rtmp(face_video_360p: Path) -> None:
    with FfmpegRtmpServer(face_video_360p) as server:
        source = PyAVSource("rtmp", server.url, fast_ingest())
        source.start()
        frames = collect(source, 15, until=lambda f, _: len(f) >= 6)
        stats = source.stats()
        source.stop()
    assert len(frames) >= 6 and stats.status == "live" and stats.codec == "h264"
    assert all(b.seq > a.seq and b.pts > a.pts for a, b in itertools.pairwise(frames))
    assert source.threads_alive() == 0

"""Bad input of every kind gives a clear per-stream error and status, never an exception out of
the source and never a thread left behind."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import av
import numpy as np
import pytest

from stream.config import IngestSettings
from stream.redis_server import free_tcp_port
from stream.sources.base import SourceStats
from stream.sources.pyav import PyAVSource
from tests.support.http import HttpServer
from tests.support.sources import collect, fast_ingest, wait_for
from tests.support.tcp import SilentTcpServer


def outcome(
    url: str,
    settings: IngestSettings | None = None,
    *,
    until_status: tuple[str, ...] = ("failed",),
    timeout_s: float = 10.0,
) -> tuple[SourceStats, int]:
    """Run a source until its status is one of ``until_status``; stats and frames taken."""
    source = PyAVSource("bad", url, settings or fast_ingest(), realtime=False)
    source.start()
    frames = collect(source, timeout_s, until=lambda _, s: s.status in until_status)
    stats = source.stats()
    started = time.monotonic()
    source.stop()
    assert time.monotonic() - started < 8, "stop() must not hang"
    assert source.threads_alive() == 0
    return stats, len(frames)


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory: pytest.TempPathFactory, face_video_360p: Path) -> Path:
    folder = tmp_path_factory.mktemp("bad")
    data = face_video_360p.read_bytes()
    garbage = np.random.default_rng(0).bytes(300_000)
    (folder / "garbage.dat").write_bytes(garbage)
    (folder / "garbage.mp4").write_bytes(garbage)
    (folder / "garbage.bin").write_bytes(garbage[:200_000])  # probes as "bintext" art
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (folder / "unknown_codec.mp4").write_bytes(data.replace(b"avc1", b"zzzz"))
    (folder / "huge.y4m").write_bytes(
        b"YUV4MPEG2 W30000 H30000 F30:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(4096)
    )
    with av.open(str(folder / "audio_only.m4a"), "w") as container:
        stream = container.add_stream("aac", rate=48000)
        for index in range(20):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 48000, index * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    ts = folder / "whole.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(face_video_360p), "-c", "copy",
                    "-f", "mpegts", str(ts)], check=True)
    ts_data = ts.read_bytes()
    (folder / "truncated.ts").write_bytes(ts_data[: len(ts_data) // 2])
    return folder


def test_missing_file(bad_dir: Path) -> None:
    stats, frames = outcome(str(bad_dir / "nope.mp4"))
    assert stats.status == "failed" and frames == 0
    assert "No such file" in (stats.last_error or "") and "nope.mp4" in (stats.last_error or "")


def test_garbage_bytes(bad_dir: Path) -> None:
    # Probed, random bytes pass for some obscure format: the demuxer whitelist refuses it.
    stats, frames = outcome(str(bad_dir / "garbage.bin"))
    assert stats.status == "failed" and frames == 0
    assert (stats.last_error or "").startswith("the input is not in an allowed container format")
    stats, frames = outcome(str(bad_dir / "garbage.dat"))
    assert stats.status == "failed" and frames == 0
    error = stats.last_error or ""
    assert "not a media format FFmpeg recognises" in error or "allowed container" in error
    # Named .mp4, they go to the MP4 demuxer, which finds no index.
    stats, frames = outcome(str(bad_dir / "garbage.mp4"))
    assert stats.status == "failed" and frames == 0
    assert "moov atom not found" in (stats.last_error or "")


def test_truncated_mp4_has_no_index(bad_dir: Path) -> None:
    stats, frames = outcome(str(bad_dir / "truncated.mp4"))
    assert stats.status == "failed" and frames == 0
    assert "moov atom not found" in (stats.last_error or "")


def test_truncated_stream_gives_what_it_has_then_ends(bad_dir: Path) -> None:
    stats, frames = outcome(str(bad_dir / "truncated.ts"), until_status=("stopped", "failed"))
    assert stats.status == "stopped" and stats.ended
    assert 0 < frames < 10 and 0 < stats.frames_in < 60


def test_audio_only(bad_dir: Path) -> None:
    stats, frames = outcome(str(bad_dir / "audio_only.m4a"))
    assert stats.status == "failed" and frames == 0
    assert stats.last_error == "no video stream in the input (found: audio (aac))"


def test_unsupported_codec(bad_dir: Path, face_video_360p: Path) -> None:
    stats, _ = outcome(str(bad_dir / "unknown_codec.mp4"))
    assert stats.status == "failed" and "unsupported codec" in (stats.last_error or "")
    stats, _ = outcome(str(face_video_360p), fast_ingest(codecs=["hevc", "av1"]))
    assert stats.status == "failed"
    assert stats.last_error == "unsupported codec 'h264' (allowed: hevc, av1)"


def test_absurd_dimensions(bad_dir: Path, face_video_360p: Path) -> None:
    stats, _ = outcome(str(bad_dir / "huge.y4m"))
    assert stats.status == "failed" and "30000x30000" in (stats.last_error or "")
    stats, frames = outcome(str(face_video_360p), fast_ingest(max_pixels=320 * 240))
    assert stats.status == "failed" and frames == 0
    assert "frame size 640x360 is out of bounds" in (stats.last_error or "")
    stats, _ = outcome(str(face_video_360p), fast_ingest(min_side=400))
    assert "out of bounds" in (stats.last_error or "")


@pytest.mark.parametrize("url", ["concat:/a.mp4|/b.mp4", "subfile,,start,0,end,100,,:/etc/hosts",
                                 "data:video/mp4;base64,AAAA", "pipe:0", "fd:0"])
def test_urls_that_reach_local_data_are_refused(url: str) -> None:
    stats, frames = outcome(url)
    assert stats.status == "failed" and frames == 0 and stats.frames_in == 0
    assert "is not allowed" in (stats.last_error or "")


def test_local_files_are_refused_by_default(face_video_360p: Path) -> None:
    stats, _ = outcome(f"file:{face_video_360p}", IngestSettings())
    assert stats.status == "failed" and "'file' is not allowed" in (stats.last_error or "")


def test_playlist_from_the_network_cannot_reach_local_files(face_video_360p: Path) -> None:
    playlist = (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:2.0,\nfile://{face_video_360p}\n#EXT-X-ENDLIST\n"
    ).encode()
    with HttpServer({"/live.m3u8": ("application/vnd.apple.mpegurl", playlist)}) as http:
        stats, frames = outcome(http.url("/live.m3u8"), until_status=("reconnecting", "failed"))
    assert frames == 0 and stats.frames_in == 0
    assert "Protocol 'file' not on whitelist" in (stats.last_error or "")


def test_http_404_is_retried_with_a_clear_error() -> None:
    with HttpServer() as http:
        stats, _ = outcome(http.url("/missing.m3u8"), until_status=("reconnecting",))
        assert stats.last_error == "Server returned 404 Not Found"
        assert stats.reconnects >= 1 and stats.next_retry_in_s is not None
        assert "/missing.m3u8" in http.requests


def test_garbage_over_http_says_it_is_not_a_video_and_gives_up(bad_dir: Path) -> None:
    from stream.sources.pyav import CONTENT_FAILURES

    body = (bad_dir / "garbage.dat").read_bytes()
    routes = {"/cam.mp4": ("video/mp4", body), "/empty.mp4": ("video/mp4", b""),
              "/text.mp4": ("video/mp4", b"hello, this is not a video\n" * 50)}
    with HttpServer(routes) as http:
        for path in routes:
            stats, frames = outcome(http.url(path), until_status=("failed",), timeout_s=30)
            assert frames == 0 and stats.status == "failed", (path, stats)
            error = stats.last_error or ""
            assert error.startswith("the input is not a video FFmpeg can read"), (path, error)
            assert f"the same {CONTENT_FAILURES} times in a row" in error, error
            assert stats.reconnects == CONTENT_FAILURES - 1
            assert http.requests.count(path) == CONTENT_FAILURES


def test_a_file_that_never_decodes_a_frame_fails_and_says_why(bad_dir: Path,
                                                              face_video_360p: Path) -> None:
    # Bit-flipped: the container (its index) parses, but the coded frames are noise.
    data = bytearray(face_video_360p.read_bytes())
    start = data.index(b"mdat") + 4
    noise = np.random.default_rng(1).integers(0, 256, len(data) - start, dtype=np.uint8)
    moov = data.find(b"moov", start)
    end = moov - 4 if moov > 0 else len(data)
    data[start:end] = noise[: end - start].tobytes()
    flipped = bad_dir / "flipped.mp4"
    flipped.write_bytes(bytes(data))
    stats, frames = outcome(str(flipped), until_status=("failed", "stopped"))
    assert frames == 0
    assert stats.status == "failed", stats
    assert "before a single frame was decoded" in (stats.last_error or ""), stats.last_error


def test_unreachable_host_backs_off() -> None:
    url = f"rtsp://127.0.0.1:{free_tcp_port()}/live"
    source = PyAVSource("gone", url, fast_ingest(reconnect_base_s=0.05, reconnect_cap_s=0.4))
    source.start()
    assert wait_for(lambda: source.stats().reconnects >= 4, 10)
    stats = source.stats()
    source.stop()
    assert stats.status == "reconnecting" and stats.frames_in == 0
    assert "Connection refused" in (stats.last_error or "")
    assert stats.next_retry_in_s is not None and stats.next_retry_in_s <= 0.4
    assert source.threads_alive() == 0 and source.stats().status == "stopped"


@pytest.mark.parametrize("scheme", ["rtsp", "http", "rtmp"])
def test_server_that_accepts_and_says_nothing_times_out(scheme: str) -> None:
    with SilentTcpServer() as server:
        url = f"{scheme}://127.0.0.1:{server.port}/live"
        settings = fast_ingest(open_timeout_s=1.0, read_timeout_s=1.0)
        stats, frames = outcome(url, settings, until_status=("reconnecting",), timeout_s=8)
    assert frames == 0 and server.accepted >= 1
    assert stats.status == "reconnecting"
    assert stats.last_error == "timed out opening the stream (no data for 1 s)"


def test_credentials_never_reach_stats() -> None:
    url = f"rtsp://admin:hunter2@127.0.0.1:{free_tcp_port()}/live"
    source = PyAVSource("cam", url, fast_ingest())
    source.start()
    assert wait_for(lambda: source.stats().reconnects >= 1, 10)
    stats = source.stats()
    source.stop()
    assert "hunter2" not in repr(stats) and stats.url == url.replace("hunter2", "***")

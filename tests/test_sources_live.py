"""Live inputs against real servers: RTSPS (GStreamer's RTSP server over TLS) and a live HLS
playlist that FFmpeg keeps rewriting while it is read (a sliding window, no end marker)."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stream.rtsp_camera import RtspCamera
from stream.sources.pyav import PyAVSource
from tests.support.service import long_face_video
from tests.support.sources import collect, fast_ingest, wait_for

pytestmark = pytest.mark.slow

WINDOW_SEGMENTS = 3
SEGMENT_S = 1


@pytest.fixture(scope="module")
def face_media(media_dir: Path) -> Path:
    return long_face_video(media_dir)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(folder / "key.pem"),
         "-out", str(folder / "cert.pem")], check=True, capture_output=True, timeout=60)
    pem = folder / "camera.pem"
    pem.write_bytes((folder / "cert.pem").read_bytes() + (folder / "key.pem").read_bytes())
    return pem


def test_rtsps_camera(face_media: Path, certificate: Path) -> None:
    with RtspCamera(face_media, tls_cert=certificate) as camera:
        assert camera.url.startswith("rtsps://")
        source = PyAVSource("tls-cam", camera.url, fast_ingest())
        source.start()
        frames = collect(source, 30, until=lambda f, _: len(f) >= 6)
        stats = source.stats()
        source.stop()
        # The same server refuses plain RTSP: the frames above came over TLS.
        plain = PyAVSource("plain", camera.url.replace("rtsps://", "rtsp://"), fast_ingest())
        plain.start()
        assert wait_for(lambda: plain.stats().reconnects >= 1, 20), plain.stats()
        refused = plain.stats()
        plain.stop()
    assert len(frames) >= 6 and stats.status == "live" and stats.codec == "h264"
    assert all(b.pts > a.pts for a, b in itertools.pairwise(frames))
    assert refused.frames_in == 0


class LiveHls:
    """FFmpeg writing a live HLS playlist (the file replayed in real time, looping, old
    segments deleted) into a folder a real HTTP server serves."""

    def __init__(self, media: Path, folder: Path) -> None:
        self.folder = folder
        self.ffmpeg = subprocess.Popen(
            ["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(media),
             "-c", "copy", "-f", "hls", "-hls_time", str(SEGMENT_S),
             "-hls_list_size", str(WINDOW_SEGMENTS), "-hls_flags", "delete_segments",
             str(folder / "live.m3u8")],
            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        handler = partial(SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *args: None  # type: ignore[method-assign]
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.http.daemon_threads = True
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}/live.m3u8"

    def close(self) -> None:
        self.ffmpeg.terminate()
        self.ffmpeg.wait(10)
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture()
def live_hls(face_media: Path, tmp_path: Path) -> Iterator[LiveHls]:
    if shutil.which("ffmpeg") is None:
        pytest.fail("the live HLS test needs ffmpeg (apt-get install ffmpeg)")
    server = LiveHls(face_media, tmp_path)
    assert wait_for(lambda: (tmp_path / "live.m3u8").is_file(), 20), "no playlist written"
    yield server
    server.close()


def test_live_hls_is_followed_past_its_window(live_hls: LiveHls) -> None:
    playlist = (live_hls.folder / "live.m3u8").read_text()
    assert "#EXT-X-ENDLIST" not in playlist  # a live playlist, not a file's
    # A live playlist is polled once per target duration: reads wait that long for a segment.
    source = PyAVSource("hls-live", live_hls.url, fast_ingest(read_timeout_s=6.0))
    source.start()
    # Read for longer than the playlist's window: the reader must follow its updates.
    span = 3 * WINDOW_SEGMENTS * SEGMENT_S
    frames = collect(source, span + 30, until=lambda f, _: len(f) >= 2 and
                     f[-1].pts - f[0].pts >= span)
    stats = source.stats()
    source.stop()
    assert frames and frames[-1].pts - frames[0].pts >= span, (len(frames), stats)
    assert stats.status == "live" and stats.reconnects == 0, stats.last_error
    assert all(b.pts > a.pts for a, b in itertools.pairwise(frames))

"""The network policy against server-side request forgery, end to end: a fake cloud metadata
server listens on 169.254.169.254 inside this namespace, and no route to it - direct, spelled
otherwise, resolved from a name, through an HTTP or RTSP redirect, as an HLS segment, or by a
name that resolves there after the check (rebinding) - may reach it. Each refused stream fails
for good, naming the rule."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import pytest

from stream.rtsp_camera import RtspCamera
from stream.samples import write_face_video
from stream.sources.pyav import PyAVSource
from tests.support.http import HttpServer
from tests.support.sources import collect, fast_ingest, wait_for
from tests.support.tcp import RtspRedirector, SilentTcpServer

METADATA = "169.254.169.254"
ALIAS = "camera-alias.test"


class CountingServer:
    """An HTTP server on ``address``:80 that answers everything and counts what reached it."""

    def __init__(self, address: str) -> None:
        self.requests: list[str] = []
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                body = b"ami-id\ninstance-id\niam/\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((address, 80), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> CountingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def metadata(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CountingServer]:
    subprocess.run(["ip", "addr", "add", f"{METADATA}/32", "dev", "lo"], check=True)
    # A name that resolves to the metadata address: a hosts file of this mount namespace.
    hosts = tmp_path_factory.mktemp("etc") / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n::1 localhost\n{METADATA} {ALIAS}\n")
    subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True)
    try:
        with CountingServer(METADATA) as server:
            yield server
    finally:
        subprocess.run(["umount", "/etc/hosts"], check=False)


class RedirectingSite(HttpServer):
    """The loopback site of an attacker: a redirect and an HLS playlist to the metadata server,
    and a real HLS stream (the control: the proxy passes what the policy allows)."""

    def __init__(self, hls: dict[str, tuple[str, bytes]]) -> None:
        playlist = (
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"
            f"#EXTINF:2.0,\nhttp://{METADATA}/latest/seg0.ts\n#EXT-X-ENDLIST\n"
        ).encode()
        super().__init__({"/evil.m3u8": ("application/vnd.apple.mpegurl", playlist), **hls})


@pytest.fixture(scope="module")
def hls(face_video_360p: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("hls")
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(face_video_360p), "-c", "copy", "-f", "hls",
         "-hls_time", "1", "-hls_list_size", "0", "-hls_segment_filename",
         str(folder / "seg%d.ts"), str(folder / "index.m3u8")], check=True, timeout=60)
    kinds = {".m3u8": "application/vnd.apple.mpegurl", ".ts": "video/mp2t"}
    return {f"/live/{p.name}": (kinds[p.suffix], p.read_bytes()) for p in folder.iterdir()}


class Redirector:
    """A loopback HTTP server answering every GET with 302 to ``location``."""

    def __init__(self, location: str) -> None:
        self.requests: list[str] = []
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Redirector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def refused(url: str, *words: str) -> str:
    """Read ``url`` until the source gives up; its error, which must name ``words``."""
    source = PyAVSource("ssrf", url, fast_ingest())
    source.start()
    try:
        assert wait_for(lambda: source.stats().status == "failed", 20), source.stats()
        assert not collect(source, 0.2)
        error = source.stats().last_error or ""
    finally:
        source.stop()
    for word in words:
        assert word in error, error
    return error


@pytest.mark.parametrize("url", [
    f"http://{METADATA}/latest/meta-data/",
    "http://2852039166/latest/meta-data/",
    "http://0xa9fea9fe/latest/meta-data/",
    "http://0251.0376.0251.0376/",
    f"http://[::ffff:{METADATA}]/latest/meta-data/",
    f"https://{METADATA}:80/",
    f"rtsp://{METADATA}:80/",
    f"http://{ALIAS}/latest/meta-data/",
])
def test_direct_spelled_and_resolved_routes_are_refused(
    metadata: CountingServer, url: str
) -> None:
    refused(url, "link-local")
    assert metadata.requests == []


def test_a_redirect_to_the_metadata_server_is_refused(metadata: CountingServer) -> None:
    with Redirector(f"http://{METADATA}/latest/meta-data/") as site:
        refused(f"http://127.0.0.1:{site.port}/video.mp4", "link-local", "redirect")
        assert site.requests == ["/video.mp4"]  # the first hop was allowed, and asked once
    assert metadata.requests == []


def test_a_redirect_to_a_name_of_the_metadata_server_is_refused(
    metadata: CountingServer,
) -> None:
    with Redirector(f"http://{ALIAS}/latest/meta-data/") as site:
        refused(f"http://127.0.0.1:{site.port}/video.mp4", f"resolves to {METADATA}")
    assert metadata.requests == []


def test_an_hls_segment_on_the_metadata_server_is_refused(
    metadata: CountingServer, hls: dict
) -> None:
    with RedirectingSite(hls) as site:
        refused(site.url("/evil.m3u8"), "link-local")
        # The control: a playlist whose segments are allowed plays through the same proxy.
        source = PyAVSource("hls", site.url("/live/index.m3u8"), fast_ingest())
        source.start()
        try:
            frames = collect(source, 20, until=lambda frames, _stats: len(frames) >= 3)
        finally:
            source.stop()
        assert len(frames) >= 3, source.stats()
        assert any(path.startswith("/live/seg") for path in site.requests)
    assert metadata.requests == []


def test_an_rtsp_redirect_to_the_metadata_server_is_refused(metadata: CountingServer) -> None:
    with SilentTcpServer(METADATA, 554) as target, \
            RtspRedirector(f"rtsp://{METADATA}/latest/meta-data/") as camera:
        refused(f"rtsp://127.0.0.1:{camera.port}/live",
                f"redirected to 'rtsp://{METADATA}/latest/meta-data/'", "not followed")
        assert target.accepted == 0


@pytest.fixture(scope="module")
def camera(media_dir: Path) -> Iterator[RtspCamera]:
    media = write_face_video(media_dir / "ssrf_face_180p.mp4", 320, 180, seconds=4.0, gop=15)
    server = RtspCamera(media).start()
    yield server
    server.stop()


def test_rtsp_connects_where_the_policy_checked_not_where_the_name_now_resolves(
    metadata: CountingServer, camera: RtspCamera
) -> None:
    """The service's resolver answered the camera's address and the policy passed it; the
    system's answer (this namespace's hosts file) has since become the metadata server, as a
    rebinding DNS server would make it. FFmpeg alone resolves again and goes there."""
    url = f"rtsp://{ALIAS}:{camera.port}/live"
    with SilentTcpServer(METADATA, camera.port) as target:
        with pytest.raises(av.error.FFmpegError):
            av.open(url, options={"rtsp_transport": "tcp"}, timeout=1)
        assert target.accepted == 1  # the control
        source = PyAVSource("rebind", url, fast_ingest(), resolve=lambda _: ["127.0.0.1"])
        source.start()
        try:
            frames = collect(source, 15, until=lambda frames, _stats: len(frames) >= 3)
        finally:
            source.stop()
        assert len(frames) >= 3, source.stats()
        assert target.accepted == 1

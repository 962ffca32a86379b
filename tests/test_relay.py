"""The relay RTSP and RTMP sources go out through: FFmpeg connects where the policy checked (not
where its own resolver would say), an RTSP redirect is refused with nothing reaching its
target, and replies pass byte for byte however the network splits them."""

from __future__ import annotations

import ipaddress
import itertools
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.rtsp_camera import RtspCamera
from stream.samples import write_face_video
from stream.sources.base import SourceStats
from stream.sources.pyav import PyAVSource
from stream.sources.relay import rtmp_tcurl
from stream.sources.rtsp_replies import RtspRedirect, RtspReplies
from tests.support.sources import collect, fast_ingest, wait_for
from tests.support.tcp import RtspRedirector, SilentTcpServer

CHECKED = ipaddress.ip_address("10.1.2.3")


def given_up(source: PyAVSource) -> SourceStats:
    """Start ``source``, wait until it fails for good, stop it: its stats then."""
    source.start()
    try:
        assert wait_for(lambda: source.stats().status == "failed", 15), source.stats()
        return source.stats()
    finally:
        source.stop()


def interleaved(channel: int, payload: bytes) -> bytes:
    return b"$" + bytes([channel]) + len(payload).to_bytes(2, "big") + payload


def reply(body: bytes = b"", *headers: bytes) -> bytes:
    head = [b"RTSP/1.0 200 OK", b"CSeq: 2", *headers, b"Content-Length: %d" % len(body)]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


# A body and frames that look like replies, a redirect among them: only heads are parsed.
TRAFFIC = (
    reply(b"v=0\r\nRTSP/1.0 302 Found\r\nLocation: rtsp://169.254.169.254/\r\n\r\n")
    + interleaved(0, b"RTSP/1.0 301 Moved\r\n\r\n$\x00\xff\xff")
    + interleaved(1, b"")
    + reply()
    + interleaved(0, bytes(range(256)) * 40)
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(TRAFFIC)), max_size=12))
def test_replies_pass_byte_for_byte_however_they_are_split(cuts: list[int]) -> None:
    replies = RtspReplies(CHECKED)
    bounds = [0, *sorted(cuts), len(TRAFFIC)]
    out = b"".join(replies.feed(TRAFFIC[a:b]) for a, b in itertools.pairwise(bounds))
    assert out == TRAFFIC


def test_transport_is_pinned_to_the_checked_address() -> None:
    head = reply(b"", b"Transport: RTP/AVP;unicast;client_port=5000-5001;server_port=6000-6001;"
                      b"source=169.254.169.254, RTP/AVP/TCP;interleaved=0-1")
    out = RtspReplies(CHECKED).feed(head)
    assert b"source=169.254.169.254" not in out
    assert (b"Transport: RTP/AVP;unicast;client_port=5000-5001;server_port=6000-6001;"
            b"source=10.1.2.3,RTP/AVP/TCP;interleaved=0-1;source=10.1.2.3\r\n") in out


LOCATION = b"Location: rtsp://169.254.169.254/\r\n"

# Replies FFmpeg reads as a redirect, however they are spelled or hidden.
HIDDEN_REDIRECTS = {
    "bare LF": b"RTSP/1.0 200 OK\nCSeq: 1\n\nRTSP/1.0 302 x\nLocation: rtsp://169.254.169.254/\n\n",
    "two spaces": b"RTSP/1.0  302 Found\r\n" + LOCATION + b"\r\n",
    "a tab": b"RTSP/1.0\t302 Found\r\n" + LOCATION + b"\r\n",
    "a stray CR": b"RTSP/1.0 302\r Found\r\r\n" + LOCATION + b"\r\r\n",
    "behind a length FFmpeg ignores": b"RTSP/1.0 200 OK\r\nContent-Length : 99\r\n\r\n"
                                      b"RTSP/1.0 302 Found\r\n" + LOCATION + b"\r\n",
}


@pytest.mark.parametrize("traffic", HIDDEN_REDIRECTS.values(), ids=HIDDEN_REDIRECTS.keys())
def test_a_redirect_is_refused_however_it_is_spelled(traffic: bytes) -> None:
    replies = RtspReplies(CHECKED)
    with pytest.raises(RtspRedirect, match=r"169\.254\.169\.254"):
        for byte in range(len(traffic)):
            replies.feed(traffic[byte : byte + 1])


@pytest.mark.parametrize("traffic", [
    b"RTSP/1.0 200 OK\r\nContent-Length: 1_00\r\n\r\n",
    b"RTSP/1.0 200 OK\r\nContent-Length: -100\r\n\r\n",
    b"RTSP/1.0 200 OK\r\ncontent-length: 4294967306\r\n\r\n",
    b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n$\x00\x00\x10",
    b"RTSP/1.0 200 OK\x00\r\n\r\n",
    b"RTSP/1.0 200 OK\r\nX-Pad: " + b"a" * 5000 + b"\r\n\r\n",
    b"RTSP/1.0 0302 Found\r\n" + LOCATION + b"\r\n",
    b"RTSP/1.0 4294967598 Moved\r\n" + LOCATION + b"\r\n",
    b"RTSP/1.0 -4294966994 Moved\r\n" + LOCATION + b"\r\n",
    b"RTSP/1.0\r\n\r\n",
    b"RTSP/1.0 200 OK\r\nTransport: RTP/AVP;unicast;x=" + b"A" * (4095 - 32) + b"\r\n\r\n",
    b"$\x00\x00\x05RTSP/",
], ids=["underscore", "negative", "overflowing", "frame in a head", "NUL", "long line",
        "status with a leading zero", "status wrapping to 302",
        "negative status wrapping to 302", "no status",
        "Transport too long once pinned", "frame shorter than RTCP"])
def test_what_ffmpeg_would_read_otherwise_is_refused(traffic: bytes) -> None:
    with pytest.raises(ValueError, match="RTSP"):
        RtspReplies(CHECKED).feed(traffic)


def test_a_redirect_is_refused_naming_its_location() -> None:
    replies = RtspReplies(CHECKED)
    with pytest.raises(RtspRedirect, match=r"rtsp://169\.254\.169\.254/.*not followed"):
        replies.feed(b"RTSP/1.0 302 Found\r\nCSeq: 1\r\nLocation: rtsp://169.254.169.254/\r\n")
        replies.feed(b"\r\n")


@pytest.fixture()
def redirect() -> Iterator[tuple[RtspRedirector, SilentTcpServer]]:
    with SilentTcpServer() as target, \
            RtspRedirector(f"rtsp://127.0.0.1:{target.port}/elsewhere") as redirector:
        yield redirector, target


ON_THE_WIRE = {
    "plain": RtspRedirector.PLAIN,
    "bare LF after a 200": "RTSP/1.0 200 OK\n{cseq}\nPublic: DESCRIBE\n\n"
                           "RTSP/1.0 302 Found\nCSeq: 2\nLocation: {location}\n\n",
    "two spaces": "RTSP/1.0  302 Found\r\n{cseq}\r\nLocation: {location}\r\n\r\n",
    "behind a length FFmpeg ignores": "RTSP/1.0 200 OK\r\n{cseq}\r\nPublic: DESCRIBE\r\n"
        "Content-Length : 60\r\n\r\nRTSP/1.0 302 Found\r\nCSeq: 2\r\n"
        "Location: {location}\r\n\r\n",
}


@pytest.mark.parametrize("reply", ON_THE_WIRE.values(), ids=ON_THE_WIRE.keys())
def test_ffmpeg_follows_each_redirect_alone_and_the_relay_refuses_it(reply: str) -> None:
    """The control first (FFmpeg alone reaches the target), then the source: refused, never
    retried, and the target not reached."""
    with SilentTcpServer() as target, RtspRedirector(
            f"rtsp://127.0.0.1:{target.port}/elsewhere", reply) as redirector:
        url = f"rtsp://127.0.0.1:{redirector.port}/cam"
        with pytest.raises(av.error.FFmpegError):
            av.open(url, options={"rtsp_transport": "tcp"}, timeout=1)
        assert wait_for(lambda: target.accepted == 1, 2)
        source = PyAVSource("redirected", url, fast_ingest())
        stats = given_up(source)
        assert "redirected to" in (stats.last_error or "") and stats.reconnects == 0
        assert target.accepted == 1


def test_rtmp_keeps_the_camera_in_its_tcurl() -> None:
    """FFmpeg's own split of application and play path (rtmp_open)."""
    assert rtmp_tcurl("rtmp://cam.example/live/key") == "rtmp://cam.example:1935/live"
    assert rtmp_tcurl("rtmps://[fd00::5]:8443/app/inst/key") == "rtmps://[fd00::5]:8443/app/inst"
    assert rtmp_tcurl("rtmp://h/app/mp4:folder/file") == "rtmp://h:1935/app"
    assert rtmp_tcurl("rtmp://h/key") == "rtmp://h:1935/"
    assert rtmp_tcurl("rtmp://h/ondemand/a/b") == "rtmp://h:1935/ondemand"


def test_ffmpeg_alone_follows_an_rtsp_redirect(
        redirect: tuple[RtspRedirector, SilentTcpServer]) -> None:
    """The control: what the relay stands between."""
    redirector, target = redirect
    with pytest.raises(av.error.FFmpegError):
        av.open(f"rtsp://127.0.0.1:{redirector.port}/cam", options={"rtsp_transport": "tcp"},
                timeout=2)
    assert target.accepted == 1


def test_an_rtsp_redirect_is_refused_and_never_reached(
        redirect: tuple[RtspRedirector, SilentTcpServer]) -> None:
    redirector, target = redirect
    source = PyAVSource("redirected", f"rtsp://127.0.0.1:{redirector.port}/cam", fast_ingest())
    stats = given_up(source)
    assert f"redirected to 'rtsp://127.0.0.1:{target.port}/elsewhere'" in (stats.last_error or "")
    assert "not retried" in (stats.last_error or "") and stats.reconnects == 0
    assert target.accepted == 0


@pytest.fixture(scope="module")
def camera(media_dir: Path) -> Iterator[RtspCamera]:
    media = write_face_video(media_dir / "relay_face_180p.mp4", 320, 180, seconds=4.0, gop=15)
    server = RtspCamera(media).start()
    yield server
    server.stop()


def test_the_connection_goes_to_the_address_the_policy_checked(camera: RtspCamera) -> None:
    """``camera.invalid`` never resolves (RFC 6761): frames arrive only because the relay
    connects to the address the source's resolver gave and the policy checked."""
    url = camera.url.replace("127.0.0.1", "camera.invalid")
    resolved: list[str] = []

    def resolve(host: str) -> list[str]:
        resolved.append(host)
        return ["127.0.0.1"]

    source = PyAVSource("pinned", url, fast_ingest(), resolve=resolve)
    source.start()
    try:
        frames = collect(source, 15, until=lambda frames, _: len(frames) >= 3)
        stats = source.stats()
    finally:
        source.stop()
    assert len(frames) >= 3, stats
    assert stats.url == url and "camera.invalid" in resolved


def test_rtsp_over_udp_through_the_relay(camera: RtspCamera) -> None:
    """The control connection goes through the relay, RTP comes straight from the camera to
    the ports FFmpeg asked for, and RTCP goes to the pinned ``source=``."""
    source = PyAVSource("udp", camera.url, fast_ingest(rtsp_transport="udp"))
    source.start()
    try:
        frames = collect(source, 15, until=lambda frames, _: len(frames) >= 3)
    finally:
        source.stop()
    assert len(frames) >= 3, source.stats()


def test_sources_started_and_stopped_leave_no_relay_thread_or_descriptor(
        camera: RtspCamera) -> None:
    import psutil

    process = psutil.Process()

    def relays() -> int:
        return sum(t.name.startswith("relay-") for t in threading.enumerate())

    fds = process.num_fds()
    for round_ in range(4):
        source = PyAVSource(f"cycle-{round_}", camera.url, fast_ingest())
        source.start()
        assert len(collect(source, 15, until=lambda frames, _: len(frames) >= 2)) >= 2
        assert relays() >= 2  # its listener and the connection FFmpeg opened
        source.stop()
    assert wait_for(lambda: relays() == 0, 5), [t.name for t in threading.enumerate()]
    assert wait_for(lambda: process.num_fds() <= fds, 5), (fds, process.num_fds())


def test_a_name_rebound_after_the_check_is_refused_by_the_relay(camera: RtspCamera) -> None:
    """The source checks the name before it opens; the relay resolves it again for the
    connection itself, and that answer, not the first, is what it connects to or refuses."""
    url = camera.url.replace("127.0.0.1", "camera.invalid")
    answers = iter([["127.0.0.1"]])
    source = PyAVSource("rebound", url, fast_ingest(),
                        resolve=lambda _: next(answers, ["169.254.169.254"]))
    stats = given_up(source)
    assert "resolves to 169.254.169.254" in (stats.last_error or "")
    assert "not retried" in (stats.last_error or "") and stats.reconnects == 0


@pytest.mark.slow
def test_the_relay_benchmark_script_reports_its_ratios(camera: RtspCamera) -> None:
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_relay.py"
    done = subprocess.run([sys.executable, str(script), "--media", str(camera.media),
                           "--seconds", "1", "--rounds", "1"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["stream_mbit_s"] > 0 and len(result["cpu_s"]["relay"]) == 1
    ratios = {"relay_extra_core_share", "relay_vs_direct_demux", "relay_extra_vs_decode"}
    assert ratios <= set(result)

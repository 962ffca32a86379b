"""The ingest's small parts: URL policy, fps cap, media clock, backoff, mailbox, NAL reading."""

from __future__ import annotations

import itertools
import random
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from stream.backoff import Backoff
from stream.config import IngestSettings
from stream.sources.base import Frame
from stream.sources.decodeplan import DecodePlanner, NalUnits
from stream.sources.mailbox import LatestFrameMailbox
from stream.sources.opening import ffmpeg_options
from stream.sources.sampling import FpsCap, MediaClock, RealtimePacer
from stream.sources.urls import UrlRefused, check_url, ffmpeg_scheme, redact


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("rtsp://cam/live", "rtsp"),
        ("RTSP://cam/live", "rtsp"),
        ("/data/video.mp4", "file"),
        ("video.mp4", "file"),
        ("./odd:name.mp4", "file"),
        ("file:/data/video.mp4", "file"),
        ("concat:a.mp4|b.mp4", "concat"),
        ("subfile,,start,0,end,100,,:/etc/passwd", "subfile"),
        ("data:video/mp4;base64,AAAA", "data"),
        ("pipe:0", "pipe"),
        ("crypto+http://host/x", "crypto+http"),
        ("C:\\videos\\a.mp4", "file"),
    ],
)
def test_scheme_is_found_as_ffmpeg_finds_it(url: str, scheme: str) -> None:
    assert ffmpeg_scheme(url) == scheme


def test_default_policy_admits_network_streams_only() -> None:
    settings = IngestSettings()
    for url in ("rtsp://cam/x", "rtsps://cam/x", "rtmp://h/app/key", "https://h/live.m3u8"):
        target = check_url(url, settings)
        assert not target.local
        assert "file" not in target.protocol_whitelist
        assert "tcp" in target.protocol_whitelist
    for url in ("/etc/passwd", "file:///etc/passwd", "concat:/a|/b", "subfile,,start,0,end,9,,:/x",
                "data:text/plain,hi", "pipe:0", "fd:3", "crypto+file:///x"):
        with pytest.raises(UrlRefused, match="not allowed"):
            check_url(url, settings)


def test_local_files_when_allowed_get_only_the_file_protocol(tmp_path: Path) -> None:
    settings = IngestSettings(allowed_schemes=["rtsp", "file"])
    target = check_url("file://" + str(tmp_path / "a b.mp4").replace(" ", "%20"), settings)
    assert target.local and target.url == str(tmp_path / "a b.mp4")
    assert target.protocol_whitelist == ("file",)
    assert check_url("clip.mp4", settings).url.endswith("/clip.mp4")
    with pytest.raises(UrlRefused, match="remote host"):
        check_url("file://server/share/a.mp4", settings)
    with pytest.raises(UrlRefused, match="not allowed"):
        check_url("concat:a.mp4|b.mp4", settings)


def test_scheme_allowed_but_not_whitelisted_is_refused() -> None:
    settings = IngestSettings(allowed_schemes=["rtsp", "concat"])
    with pytest.raises(UrlRefused, match="protocol whitelist"):
        check_url("concat:a|b", settings)
    for bad in ("", "  ", "rtsp://cam/x\r\nInjected: 1"):
        with pytest.raises(UrlRefused):
            check_url(bad, settings)


def test_passwords_never_show() -> None:
    assert redact("rtsp://admin:s3cret@cam/live") == "rtsp://admin:***@cam/live"
    assert redact("failed: http://u:p@h/x and rtsp://h/y") == "failed: http://u:***@h/x and rtsp://h/y"
    assert redact("rtsp://cam/live") == "rtsp://cam/live"


def test_ffmpeg_options_bound_every_protocol() -> None:
    settings = IngestSettings(allowed_schemes=["rtsp", "rtmp", "https", "file"], read_timeout_s=3)
    rtsp = ffmpeg_options(check_url("rtsp://cam/x", settings), settings)
    assert rtsp["rtsp_transport"] == "tcp" and rtsp["timeout"] == "3000000"
    assert rtsp["allowed_media_types"] == "video"
    assert "file" not in rtsp["protocol_whitelist"].split(",")
    assert "mov" in rtsp["format_whitelist"].split(",")
    rtmp = ffmpeg_options(check_url("rtmp://h/app/key", settings), settings)
    assert rtmp["rw_timeout"] == "3000000" and "timeout" not in rtmp  # 'timeout' = listen
    https = ffmpeg_options(check_url("https://h/live.m3u8", settings), settings)
    assert https["rw_timeout"] == https["timeout"] == "3000000"
    local = ffmpeg_options(check_url("/tmp/a.mp4", settings), settings)
    assert local["protocol_whitelist"] == "file"


def test_fps_cap_takes_every_sixth_frame_of_30fps_at_5fps() -> None:
    cap = FpsCap(5.0)
    taken = [i for i in range(300) if cap.admit(i / 30)]
    assert taken == list(range(0, 300, 6))


def test_fps_cap_on_an_irregular_source_keeps_the_rate_and_restarts_after_gaps() -> None:
    cap = FpsCap(5.0)
    rng = random.Random(3)
    t, times = 0.0, []
    for _ in range(3000):
        t += rng.uniform(0.01, 0.06)  # VFR around 28 fps
        if cap.admit(t):
            times.append(t)
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert 4.6 < rate <= 5.0
    assert min(np.diff(times)) >= 0.2 - 1e-3 - 0.06
    cap.admit(1000.0)  # a long gap: the grid restarts there
    assert not cap.admit(1000.1) and cap.admit(1000.2)


def test_media_clock_never_goes_back_across_sessions() -> None:
    clock = MediaClock(1 / 30)
    first = [clock.advance(i / 30) for i in range(30)]
    assert first[0] == 0.0 and first[-1] == pytest.approx(29 / 30)
    clock.new_session()  # a reconnect: the source's clock restarts at 0
    assert clock.peek(0.0) == pytest.approx(1.0)
    second = [clock.advance(i / 30) for i in range(30)]
    assert second[0] == pytest.approx(1.0)
    clock.advance(None)  # no pts: one frame later
    clock.advance(0.5)  # the clock jumps back within a session
    after_jump = clock.advance(0.6)
    values = [*first, *second, after_jump]
    assert all(b > a for a, b in itertools.pairwise(values))


def test_realtime_pacer_releases_frames_on_media_time() -> None:
    pacer = RealtimePacer()
    assert pacer.wait_s(10.0, now=100.0) == 0.0
    assert pacer.wait_s(10.5, now=100.1) == pytest.approx(0.4)
    assert pacer.wait_s(11.0, now=101.2) == 0.0  # late: due now
    assert pacer.wait_s(11.5, now=103.0) == 0.0  # far behind: starts afresh
    assert pacer.wait_s(11.7, now=103.0) == pytest.approx(0.2)
    assert pacer.wait_s(50.0, now=103.1) == 0.0  # a timestamp jump, not a pause
    assert pacer.wait_s(50.1, now=103.1) == pytest.approx(0.1)


def test_backoff_grows_to_the_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(0.5, 4.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(8)]
    ceilings = [0.5, 1, 2, 4, 4, 4, 4, 4]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert len({round(d, 6) for d in delays[3:]}) > 1  # jittered, not all equal
    backoff.reset()
    assert backoff.next_delay() <= 0.5
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)


def test_a_session_whose_frames_flowed_a_second_resets_the_backoff() -> None:
    from stream.config import StreamSpec
    from stream.sources.pyav import STABLE_AFTER_S, PyAVSource

    ingest = IngestSettings(reconnect_base_s=0.5, reconnect_cap_s=30.0)
    source = PyAVSource.from_spec(StreamSpec(id="cam", url="rtsp://127.0.0.1:1/x"), ingest)
    now = time.monotonic()
    for _ in range(6):  # a camera that kept failing: the delay grew towards the cap
        source._schedule_retry(now)
    assert source._schedule_retry(now) > 4.0
    source._live_since = now - STABLE_AFTER_S  # then it came back and frames flowed a second
    assert source._schedule_retry(now) <= ingest.reconnect_base_s
    delays = []
    for _ in range(3):  # sessions that dropped at once do not reset it: it grows again
        source._live_since = now - 0.1
        delays.append(source._schedule_retry(now))
    assert delays[-1] >= 2.0, delays


def _frame(seq: int) -> Frame:
    return Frame("s", seq, seq / 5, time.time(), rgb=np.zeros((4, 4, 3), np.uint8))


def test_mailbox_keeps_only_the_newest_and_counts_the_rest() -> None:
    box = LatestFrameMailbox()
    assert box.take() is None
    for seq in range(1, 4):
        box.put(_frame(seq))
    taken = box.take()
    assert taken is not None and taken.seq == 3
    assert box.superseded == 2 and box.taken == 1 and box.take() is None


def test_mailbox_can_wait_for_analysis_instead_of_superseding() -> None:
    box = LatestFrameMailbox()
    box.put(_frame(1))
    released = threading.Event()

    def consumer() -> None:
        time.sleep(0.2)
        box.take()
        released.set()

    threading.Thread(target=consumer).start()
    assert box.wait_free(lambda: False)
    assert released.is_set() and box.superseded == 0
    box.put(_frame(2))
    box.close()
    assert not box.wait_free(lambda: False) and box.take() is None


def test_nal_units_find_idr_frames(face_video_360p: Path) -> None:
    with av.open(str(face_video_360p)) as container:
        stream = container.streams.video[0]
        nal = NalUnits("h264", bytes(stream.codec_context.extradata or b""))
        assert nal.length_size == 4  # MP4: length-prefixed NAL units
        packets = [bytes(p) for p in container.demux(stream) if p.size]
    assert nal.is_idr(packets[0]) and not any(nal.is_idr(p) for p in packets[1:])
    annexb = b"\x00\x00\x00\x01\x09\xf0" + b"\x00\x00\x00\x01\x67\x64" + b"\x00\x00\x01\x65\x88"
    assert NalUnits("h264", None).types(annexb) == [9, 7, 5]
    assert NalUnits("h264", None).has_parameter_sets(annexb)
    hevc_idr = b"\x00\x00\x01\x40\x01" + b"\x00\x00\x01\x26\x01"  # VPS, IDR_W_RADL
    assert NalUnits("hevc", None).is_idr(hevc_idr)
    assert not NalUnits("hevc", None).is_idr(b"\x00\x00\x01\x2a\x01")  # CRA: open GOP


def test_planner_skips_only_the_tail_before_an_idr(face_video_360p: Path) -> None:
    with av.open(str(face_video_360p)) as container:
        stream = container.streams.video[0]
        nal = NalUnits("h264", bytes(stream.codec_context.extradata or b""))
        packets = [p for p in container.demux(stream) if p.size]
    planner = DecodePlanner(nal)
    decoded: list[int] = []
    sampled = {0, 6, 12}
    for index, packet in enumerate(packets[:20]):
        decoded += [int(p.pts) for p in planner.plan(packet, index in sampled)]
    # Everything up to the last sampled packet, in order; 13..19 wait for a reason.
    assert decoded == [int(p.pts) for p in packets[:13]]
    assert planner.end() == 7 and planner.skipped == 7

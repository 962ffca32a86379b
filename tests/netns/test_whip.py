"""WHIP end to end, inside a network namespace with only ``lo``: a real aiortc publisher and a
real headless Chromium publish to a running service, whose scores and events reach a real
Redis; every refusal is a real request; a running RTSP stream is not disturbed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from aiortc import RTCPeerConnection

from stream.redis_server import EmbeddedRedis
from stream.rtsp_camera import RtspCamera
from stream.webrtc.client import LoopingTrack, WhipPublisher
from tests.support.http import HttpServer
from tests.support.service import ServiceServer, long_face_video, service_settings, wait_until

PREFIX = "whip:"
TOKEN = "api-token-9d2e"
PUBLISH_TOKEN = "publish-token-41aa"
TIMEOUT_S = 3.0
CHROMIUM = Path("/usr/bin/chromium")
PAGE = Path(__file__).with_name("whip_page.html")


@pytest.fixture(scope="module")
def module_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="module")
def camera(media_dir: Path) -> Iterator[RtspCamera]:
    with RtspCamera(long_face_video(media_dir)) as rtsp:
        yield rtsp


@pytest.fixture(scope="module")
def running(module_redis: EmbeddedRedis, camera: RtspCamera,
            retinaface_weights: Path) -> Iterator[ServiceServer]:
    settings = service_settings(
        module_redis.url,
        redis={"prefix": PREFIX},
        api={"token": TOKEN, "max_body_bytes": 16 * 1024},
        webrtc={"host_addresses": ["127.0.0.1"], "session_timeout_s": TIMEOUT_S,
                "max_sessions": 2, "publish_tokens": {"pub-only": PUBLISH_TOKEN}},
        streams=[{"id": "cam", "url": camera.url}],
    )
    with ServiceServer(settings) as server:
        online = wait_until(lambda: cam_frames(server)[0] == "online", 60)
        assert online, f"the RTSP stream beside the WHIP ones is not online: {cam_frames(server)}"
        yield server


@pytest.fixture()
def rdb(module_redis: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(module_redis.url, decode_responses=True)
    yield client
    client.close()


async def scores_of(url: str, stream: str, count: int, timeout_s: float) -> list[dict[str, Any]]:
    client = aioredis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(f"{PREFIX}scores:{stream}")
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < count and time.monotonic() < deadline:
            message = await pubsub.get_message(timeout=0.5)
            if message is not None:
                got.append(json.loads(message["data"]))
    finally:
        await pubsub.aclose()
        await client.aclose()
    return got


def scores_sync(url: str, stream: str, count: int, timeout_s: float) -> list[dict[str, Any]]:
    """As ``scores_of``, for a test whose thread runs another loop (Playwright's)."""
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"{PREFIX}scores:{stream}")
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < count and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
            if message is not None:
                got.append(json.loads(message["data"]))
    finally:
        pubsub.close()
        client.close()
    return got


def events_of(rdb: redis.Redis, stream: str) -> list[dict[str, Any]]:
    entries: Any = rdb.xrange(f"{PREFIX}events")
    events = [json.loads(fields["event"]) for _, fields in entries]
    return [e for e in events if e["stream"] == stream]


def cam_frames(running: ServiceServer) -> tuple[str, int, int]:
    view = httpx.get(f"{running.url}/api/streams/cam",
                     headers={"Authorization": f"Bearer {TOKEN}"}).json()
    return view["status"], view["frames_analysed"], view["reconnects"]


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_an_aiortc_publisher_is_scored_like_any_stream(
    running: ServiceServer, module_redis: EmbeddedRedis, rdb: redis.Redis, codec: str
) -> None:
    stream = f"call-{codec.lower()}"
    before = cam_frames(running)
    publisher = WhipPublisher(f"{running.url}/whip/{stream}", LoopingTrack(), token=TOKEN,
                              codec=codec)
    await publisher.start()
    try:
        scores = await scores_of(module_redis.url, stream, 6, timeout_s=60)
        assert len(scores) >= 6, scores
        seqs = [s["seq"] for s in scores]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert any(s["faces"] for s in scores), "the face in the published video was not seen"
        state = rdb.hgetall(f"{PREFIX}state:{stream}")
        assert state["status"] == "online"
        view = httpx.get(f"{running.url}/api/streams/{stream}",
                         headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert view["codec"] == codec.lower() and view["url"] == f"whip:{stream}"
    finally:
        status = await publisher.close()
    assert status == 200
    wait_until(lambda: rdb.hget(f"{PREFIX}state:{stream}", "status") == "offline", 10)
    kinds = [e["type"] for e in events_of(rdb, stream)]
    assert kinds[0] == "stream.online" and kinds[-1] == "stream.offline", kinds
    offline = events_of(rdb, stream)[-1]
    assert offline["reason"] == "the publisher ended the session"
    streams = httpx.get(f"{running.url}/api/streams",
                        headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert stream not in {s["id"] for s in streams}
    after = cam_frames(running)
    assert after[0] == "online" and after[1] > before[1] and after[2] == before[2]


async def test_a_publisher_that_vanishes_ends_its_session_and_frees_the_id(
    running: ServiceServer, module_redis: EmbeddedRedis, rdb: redis.Redis
) -> None:
    publisher = WhipPublisher(f"{running.url}/whip/vanish", LoopingTrack(), token=TOKEN)
    await publisher.start()
    assert len(await scores_of(module_redis.url, "vanish", 2, timeout_s=60)) == 2
    await publisher.pc.close()  # gone without DELETE
    ended = await asyncio.to_thread(
        wait_until, lambda: rdb.hget(f"{PREFIX}state:vanish", "status") == "offline", 30)
    assert ended
    again = WhipPublisher(f"{running.url}/whip/vanish", LoopingTrack(), token=TOKEN)
    await again.start()  # the id is free again
    assert await again.close() == 200


def offer_of(pc: RTCPeerConnection) -> str:
    return pc.localDescription.sdp


async def video_offer(tracks: int = 1) -> str:
    pc = RTCPeerConnection()
    for _ in range(tracks):
        pc.addTransceiver(LoopingTrack(seconds=0.2), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = offer_of(pc)
    await pc.close()
    return sdp


async def test_every_refusal_has_its_status(running: ServiceServer) -> None:
    url = f"{running.url}/whip/refusals"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    sdp = {"Content-Type": "application/sdp"}
    before = cam_frames(running)
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.post(url, content="v=0", headers=sdp)).status_code == 401
        wrong = await http.post(url, content="v=0", headers={**sdp, "Authorization": "Bearer x"})
        assert wrong.status_code == 401 and "Bearer" in wrong.headers["www-authenticate"]
        typed = await http.post(url, content="v=0", headers={**auth, "Content-Type": "text/plain"})
        assert typed.status_code == 415
        assert (await http.post(url, content="hello", headers={**auth, **sdp})).status_code == 400
        assert (await http.post(url, content="v=0\r\n", headers={**auth, **sdp})).status_code == 400
        two = await http.post(url, content=await video_offer(2), headers={**auth, **sdp})
        assert two.status_code == 422 and "2 video" in two.json()["detail"]
        big = await http.post(url, content="v=0\r\n" + "a=x\r\n" * 5000, headers={**auth, **sdp})
        assert big.status_code == 413
        taken = await http.post(f"{running.url}/whip/cam", content=await video_offer(),
                                headers={**auth, **sdp})
        assert taken.status_code == 409  # an RTSP stream has that id
        preflight = await http.options(url)
        assert preflight.status_code == 204
        assert preflight.headers["accept-post"] == "application/sdp"

        publisher = WhipPublisher(url, LoopingTrack(), token=TOKEN)
        await publisher.start()
        try:
            assert publisher.location is not None and publisher.etag is not None
            assert (await http.get(publisher.location, headers=auth)).status_code == 204
            again = WhipPublisher(url, LoopingTrack(), token=TOKEN)
            with pytest.raises(RuntimeError, match="409"):
                await again.start()
            frag = {**auth, "Content-Type": "application/trickle-ice-sdpfrag"}
            candidate = "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
            missing = await http.patch(publisher.location, content=candidate, headers=frag)
            assert missing.status_code == 428
            stale = await http.patch(publisher.location, content=candidate,
                                     headers={**frag, "If-Match": '"stale"'})
            assert stale.status_code == 412
            added = await http.patch(publisher.location, content=candidate,
                                     headers={**frag, "If-Match": publisher.etag})
            assert added.status_code == 204
            new_credentials = "a=ice-ufrag:new1\r\na=ice-pwd:newpasswordnewpassword1\r\n"
            restart = await http.patch(publisher.location, content=new_credentials,
                                       headers={**frag, "If-Match": publisher.etag})
            assert restart.status_code == 422
            # max_sessions is 2: this one and one more; the third is told to come back later.
            second = WhipPublisher(f"{running.url}/whip/pub-only", LoopingTrack(),
                                   token=PUBLISH_TOKEN)
            await second.start()  # a per-stream publish token is enough for its own stream
            full = WhipPublisher(f"{running.url}/whip/third", LoopingTrack(), token=TOKEN)
            with pytest.raises(RuntimeError, match="503"):
                await full.start()
            metrics = (await http.get(f"{running.url}/metrics", headers=auth)).text
            assert "dfstream_whip_sessions 2.0" in metrics
            for status in ("400", "401", "409", "412", "413", "415", "422", "428", "503"):
                if status != "413":  # refused before the app sees it, by the body limit
                    assert f'dfstream_whip_refused_total{{status="{status}"}}' in metrics, status
            await second.close()
        finally:
            await publisher.close()
        wrong_stream = await http.post(f"{running.url}/whip/other", content="v=0",
                                       headers={**sdp, "Authorization": f"Bearer {PUBLISH_TOKEN}"})
        assert wrong_stream.status_code == 401
    after = cam_frames(running)
    assert after[0] == "online" and after[1] > before[1] and after[2] == before[2]


@pytest.fixture(scope="module")
def y4m(media_dir: Path) -> Path:
    path = media_dir / "face.y4m"
    if not path.is_file():
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-y", "-i", str(long_face_video(media_dir)),
             "-t", "6", "-pix_fmt", "yuv420p", str(path)], check=True, timeout=120)
    return path


def test_headless_chromium_publishes_with_its_fake_camera(
    running: ServiceServer, module_redis: EmbeddedRedis, rdb: redis.Redis, y4m: Path
) -> None:
    if not CHROMIUM.is_file():
        pytest.fail(f"this test needs Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    stream = "browser"
    page_html = PAGE.read_bytes()
    with HttpServer({"/": ("text/html", page_html)}) as site, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={y4m}", "--allow-loopback-in-peer-connection",
            "--disable-features=WebRtcHideLocalIpsWithMdns", "--no-sandbox",
        ])
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        endpoint = f"{running.url}/whip/{stream}"
        page.goto(site.url(f"/?endpoint={endpoint}&token={TOKEN}"))
        page.wait_for_function("window.whipStatus !== undefined", timeout=60_000)
        assert page.evaluate("window.whipStatus") == 201, (page.evaluate("window.whipError"),
                                                           errors)
        got = scores_sync(module_redis.url, stream, 4, timeout_s=60)
        assert len(got) >= 4 and any(s["faces"] for s in got), got
        assert rdb.hget(f"{PREFIX}state:{stream}", "status") == "online"
        page.close()
        closed_at = time.monotonic()
        ended = wait_until(
            lambda: rdb.hget(f"{PREFIX}state:{stream}", "status") == "offline", TIMEOUT_S + 30)
        browser.close()
    assert ended, "closing the page did not end the stream"
    assert time.monotonic() - closed_at <= TIMEOUT_S + 30
    assert not errors, errors


def test_bench_whip_reports_latency_against_the_rtsp_baseline(tmp_path: Path) -> None:
    from stream.bench.whip import run
    from stream.config import Settings

    result = run(Settings(), steps=[1], window_s=3.0, warmup_s=2.0, codec="VP8", fps=5.0,
                 arch="tiny", media_dir=tmp_path)
    (step,) = result["steps"]
    assert step["publishers"] == 1 and step["end_to_end_ms"]["n"] > 0
    assert step["rtsp_service_ms"]["n"] > 0 and step["whip_vs_rtsp_service_p50"] is not None
    # The whole way includes the service's part: encode, network and decode come on top.
    assert step["end_to_end_ms"]["p50"] >= step["service_ms"]["p50"]


async def test_removing_a_whip_stream_through_the_api_ends_its_session(
    running: ServiceServer, module_redis: EmbeddedRedis
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    publisher = WhipPublisher(f"{running.url}/whip/removed", LoopingTrack(), token=TOKEN)
    await publisher.start()
    assert len(await scores_of(module_redis.url, "removed", 1, timeout_s=60)) == 1
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.delete(f"{running.url}/api/streams/removed", headers=auth)
                ).status_code == 204
        assert publisher.location is not None
        deadline = time.monotonic() + 10
        status = 204
        while status == 204 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            status = (await http.get(publisher.location, headers=auth)).status_code
    assert status == 404, "the session outlived its stream"
    await publisher.pc.close()

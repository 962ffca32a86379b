"""The publisher against a real redis-server: the contract, outages, exactly-once events."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from stream.config import RedisSettings, Thresholds
from stream.publish.publisher import Publisher
from stream.redis_server import EmbeddedRedis, free_tcp_port
from stream.scoring import AlertEvent, FaceScore, ScoreResult, StreamScoring
from stream.subscribe import EventFeed

BOX = (10.0, 20.0, 110.0, 140.0)
TH = Thresholds(enter=0.8, exit=0.6, min_duration_s=0.5, hold_s=0.5, cooldown_s=0.0,
                window_s=0.1)
# Every high frame opens an alert and every low frame closes it: an event per frame.
TOGGLE = Thresholds(enter=0.8, exit=0.6, min_duration_s=0.0, hold_s=0.0, cooldown_s=0.0,
                    window_s=0.01)
FAST = {"reconnect_base_s": 0.05, "reconnect_cap_s": 0.3, "socket_timeout_s": 2.0}


def frame(scorer: StreamScoring, seq: int, p: float) -> ScoreResult:
    return scorer.update(seq=seq, pts=seq * 0.25, captured_at=1000.0 + seq * 0.25,
                         now=seq * 0.25, faces=[FaceScore(3, BOX, 0.99, p)])


def entries(url: str, key: str = "dfstream:events") -> list[tuple[str, dict[str, Any]]]:
    client = redis.Redis.from_url(url)
    try:
        return [(i.decode(), orjson.loads(f[b"event"])) for i, f in client.xrange(key)]
    finally:
        client.close()


def identity(event: dict[str, Any] | AlertEvent) -> tuple[str, str, int]:
    if isinstance(event, AlertEvent):
        return (event.type, event.event_id, event.seq)
    return (event["type"], event["event_id"], event["seq"])


@pytest.fixture()
async def started() -> AsyncIterator[list[Publisher]]:
    """Publishers a test starts; closed even when the test fails."""
    publishers: list[Publisher] = []
    yield publishers
    for pub in publishers:
        await pub.close(timeout_s=1.0)


async def start(publishers: list[Publisher], url: str, **kwargs: Any) -> Publisher:
    pub = Publisher(url, **{**FAST, **kwargs})
    publishers.append(pub)
    await pub.start()
    return pub


async def read_channel(pubsub: Any, n: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is not None:
            out.append({"channel": message["channel"].decode(), **orjson.loads(message["data"])})
    return out


async def test_scores_state_events_evidence_and_liveness(
    redis_url: str, started: list[Publisher]
) -> None:
    listener = aioredis.Redis.from_url(redis_url)
    pubsub = listener.pubsub()
    await pubsub.subscribe("dfstream:scores:cam1", "dfstream:events")
    pub = await start(started, redis_url)
    assert await pub.wait_connected(5)

    pub.stream_online("cam1", epoch=7, url="rtsp://admin:cam-pw@camera/1")
    scorer = StreamScoring("cam1", TH, config_version=2)
    trace = [0.2] * 2 + [0.95] * 6 + [0.1] * 6
    alert_events: list[AlertEvent] = []
    evidence: dict[str, bytes] = {}
    for seq, p in enumerate(trace):
        result = frame(scorer, seq, p)
        pub.publish(result)
        alert_events += result.events
        if result.evidence is not None:
            evidence[result.evidence.event_id] = b"\xff\xd8 jpeg of seq %d" % seq
            pub.put_evidence(result.evidence.event_id, evidence[result.evidence.event_id])
    pub.stream_status("cam1", "online", fps_in=30.0, fps_analysed=4.0, fps_dropped=26.0)
    assert await pub.flush(5)

    messages = await read_channel(pubsub, len(trace) + 3)
    scores = [m for m in messages if m["channel"] == "dfstream:scores:cam1"]
    assert [m["seq"] for m in scores] == list(range(len(trace)))
    first = scores[0]
    assert set(first) == {
        "channel", "v", "stream", "seq", "epoch", "pts", "captured_at", "published_at", "faces",
        "p_stream", "state", "alert", "config_version",
    }
    assert (first["v"], first["stream"], first["epoch"], first["config_version"]) == (
        1, "cam1", 7, 2,
    )
    assert first["faces"] == [
        {"track": 3, "box": list(BOX), "det_score": 0.99, "p_fake": 0.2, "p_rolling": 0.2}
    ]
    assert [m["state"] for m in scores].count("alert") > 0

    stored = entries(redis_url)
    assert [e["type"] for _, e in stored] == ["stream.online", "alert.start", "alert.end"]
    assert [identity(e) for _, e in stored[1:]] == [identity(e) for e in alert_events]
    online, start_event, end_event = (e for _, e in stored)
    assert online["url"] == "rtsp://admin:***@camera/1" and online["epoch"] == 7
    for event in (start_event, end_event):
        assert event["epoch"] == 7 and event["v"] == 1 and event["config_version"] == 2
        assert event["thresholds"] == TH.model_dump()
        assert event["evidence"] == f"dfstream:evidence:{event['event_id']}"
        assert event["tracks"] == [3]
    # The channel carries the same events with their Stream entry ids.
    live = [m for m in messages if m["channel"] == "dfstream:events"]
    assert [m["id"] for m in live] == [entry_id for entry_id, _ in stored]

    client = aioredis.Redis.from_url(redis_url)
    key = start_event["evidence"]
    assert await client.get(key) == evidence[start_event["event_id"]]
    assert 0 < await client.ttl(key) <= 7 * 24 * 3600
    raw_state = await client.hgetall("dfstream:state:cam1")
    state = {k.decode(): v.decode() for k, v in raw_state.items()}
    assert state["status"] == "online" and state["state"] == "clear"
    assert (state["seq"], state["epoch"], state["config_version"]) == (str(len(trace) - 1),
                                                                       "7", "2")
    assert (state["fps_in"], state["fps_analysed"], state["fps_dropped"]) == ("30.0", "4.0", "26.0")
    assert orjson.loads(state["faces"])[0]["track"] == 3
    service = orjson.loads(await client.get("dfstream:service"))
    assert service["instance"] == pub.instance and service["streams"] == ["cam1"]
    assert 0 < await client.ttl("dfstream:service") <= 10

    await pub.close()
    _, last = entries(redis_url)[-1]
    assert (last["type"], last["stream"], last["reason"]) == ("stream.offline", "cam1", "shutdown")
    assert await client.hget("dfstream:state:cam1", "status") == b"offline"
    assert await client.exists("dfstream:service") == 0
    await pubsub.aclose()
    await listener.aclose()
    await client.aclose()


async def test_heatmaps_are_stored_beside_the_evidence_with_its_ttl(
    redis_url: str, started: list[Publisher]
) -> None:
    pub = await start(started, redis_url, evidence_ttl_s=600)
    assert await pub.wait_connected(5)
    pub.put_evidence("cam1-1000-1", b"\xff\xd8 crop")
    pub.put_heatmap("cam1-1000-1", b"\xff\xd8 heatmap of an earlier peak")
    pub.put_heatmap("cam1-1000-1", b"\xff\xd8 heatmap")  # the latest one wins
    assert await pub.flush(5)
    client = aioredis.Redis.from_url(redis_url)
    assert await client.get("dfstream:evidence:cam1-1000-1") == b"\xff\xd8 crop"
    assert await client.get("dfstream:heatmap:cam1-1000-1") == b"\xff\xd8 heatmap"
    assert 0 < await client.ttl("dfstream:heatmap:cam1-1000-1") <= 600
    await client.aclose()
    stats = pub.stats
    assert (stats.evidence_written, stats.heatmaps_written) == (1, 1)
    assert (stats.evidence_dropped, stats.heatmaps_dropped) == (0, 0)


def test_heatmaps_waiting_for_redis_are_bounded_like_the_evidence() -> None:
    from stream.publish.publisher import EVIDENCE_PENDING

    pub = Publisher(f"redis://127.0.0.1:{free_tcp_port()}", **FAST)  # never started
    for n in range(EVIDENCE_PENDING + 3):
        pub.put_heatmap(f"cam1-1000-{n}", b"\xff\xd8")
    pub.put_evidence("cam1-1000-0", b"\xff\xd8")
    stats = pub.stats
    assert (stats.heatmaps_dropped, stats.evidence_dropped) == (3, 0)


async def test_stopping_a_stream_in_alert_ends_the_alert_first(
    redis_url: str, started: list[Publisher]
) -> None:
    pub = await start(started, redis_url)
    pub.stream_online("cam1", epoch=3)
    scorer = StreamScoring("cam1", TH)
    for seq in range(4):
        pub.publish(frame(scorer, seq, 0.95))
    final = scorer.finish(seq=4, pts=1.0, captured_at=1001.0, now=1.0)
    pub.stream_offline("cam1", reason="removed", final_events=final)
    assert await pub.flush(5)
    stored = [e for _, e in entries(redis_url)]
    assert [(e["type"], e.get("reason")) for e in stored] == [
        ("stream.online", None), ("alert.start", None), ("alert.end", "stream_ended"),
        ("stream.offline", "removed"),
    ]
    assert stored[2]["epoch"] == 3
    state = redis.Redis.from_url(redis_url).hgetall("dfstream:state:cam1")
    assert (state[b"status"], state[b"state"], state[b"alert"]) == (b"offline", b"clear", b"")


async def test_subscriber_resumes_from_its_last_id_without_loss(
    redis_url: str, started: list[Publisher]
) -> None:
    pub = await start(started, redis_url)
    for i in range(10):
        pub.stream_online(f"cam{i}", epoch=1)
    assert await pub.flush(5)

    feed = EventFeed(redis_url, last_id="0", count=3)
    seen = await feed.read(block_ms=100) + await feed.read(block_ms=100)
    assert len(seen) == 6
    await feed.close()  # the subscriber goes away; events keep coming
    for i in range(10, 25):
        pub.stream_online(f"cam{i}", epoch=1)
    assert await pub.flush(5)

    while len(seen) < 18:
        seen += await feed.read(block_ms=100)
    # A new subscriber process that kept only the last id continues the same way.
    successor = EventFeed(redis_url, last_id=feed.last_id)
    await feed.close()
    while len(seen) < 25:
        seen += await successor.read(block_ms=100)
    assert await successor.read(block_ms=50) == []
    await successor.close()
    assert [s.event["stream"] for s in seen] == [f"cam{i}" for i in range(25)]
    assert [s.id for s in seen] == [entry_id for entry_id, _ in entries(redis_url)]


async def test_redis_restart_mid_run_every_event_once_in_order(
    tmp_path: Path, started: list[Publisher]
) -> None:
    server = EmbeddedRedis(port=free_tcp_port(), persist_dir=tmp_path).start()
    try:
        pub = await start(started, server.url)
        assert await pub.wait_connected(5)
        feed = EventFeed(server.url, last_id="0", reconnect_base_s=0.05, reconnect_cap_s=0.3)
        received: list[Any] = []
        done = asyncio.Event()

        async def subscribe() -> None:
            while not done.is_set():
                received.extend(await feed.read(block_ms=50))

        subscriber = asyncio.create_task(subscribe())
        pub.stream_online("cam1", epoch=4)
        scorer = StreamScoring("cam1", TOGGLE)
        expected: list[tuple[str, str, int]] = [("stream.online", "", 0)]
        for seq in range(240):
            result = frame(scorer, seq, 0.9 if seq % 2 == 0 else 0.1)
            pub.publish(result)
            expected += [identity(e) for e in result.events]
            if seq == 80:
                server.stop()
            if seq == 160:
                assert not pub.connected and pub.stats.events_pending > 0
                server.start()
            await asyncio.sleep(0.005)
        assert await pub.flush(10)
        deadline = time.monotonic() + 10
        while len(received) < len(expected) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        done.set()
        await subscriber
        await feed.close()

        def without_online_id(ids: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
            return [(t, "" if t == "stream.online" else i, s) for t, i, s in ids]

        stored = without_online_id([identity(e) for _, e in entries(server.url)])
        assert len(expected) == 241
        assert stored == expected
        assert without_online_id([identity(r.event) for r in received]) == expected
        stats = pub.stats
        assert stats.reconnects >= 1 and feed.reconnects >= 1
        assert stats.scores_dropped > 0 and stats.outbox_overflow == 0
        assert stats.events_written + stats.events_deduplicated == len(expected)
        await pub.close()
    finally:
        server.close()


async def wait_until_async(predicate: Any, timeout_s: float, poll_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(poll_s)
    return True


async def test_redis_killed_and_restarted_three_times_loses_and_repeats_nothing(
    tmp_path: Path, started: list[Publisher]
) -> None:
    server = EmbeddedRedis(port=free_tcp_port(), persist_dir=tmp_path).start()
    try:
        pub = await start(started, server.url)
        assert await pub.wait_connected(5)
        pub.stream_online("cam1", epoch=2)
        scorer = StreamScoring("cam1", TOGGLE)
        expected: list[tuple[str, str, int]] = [("stream.online", "", 0)]
        crashes = {60: server.kill, 140: server.stop, 220: server.kill}  # SIGKILL, SHUTDOWN
        for seq in range(300):
            result = frame(scorer, seq, 0.9 if seq % 2 == 0 else 0.1)
            pub.publish(result)
            expected += [identity(e) for e in result.events]
            if seq in crashes:
                crashes[seq]()
            if seq - 40 in crashes:
                server.start()
                # Back before the next crash, however slow the machine: else two crashes fall
                # in one outage and are one reconnect.
                restarts = sorted(crashes).index(seq - 40) + 1
                assert await wait_until_async(lambda n=restarts: pub.stats.reconnects >= n, 15)
            await asyncio.sleep(0.005)
        final = scorer.finish(seq=300, pts=75.0, captured_at=1075.0, now=75.0)
        pub.stream_offline("cam1", reason="removed", final_events=final)
        expected += [identity(e) for e in final] + [("stream.offline", "", 0)]
        assert await pub.flush(10)

        def lifecycle_blind(ids: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
            return [(t, "", 0) if t.startswith("stream.") else (t, i, s) for t, i, s in ids]

        stored = lifecycle_blind([identity(e) for _, e in entries(server.url)])
        assert stored == lifecycle_blind(expected)  # 0 lost, 0 repeated, in order
        kinds = [t for t, _, _ in stored]
        assert kinds.count("alert.start") == kinds.count("alert.end") > 10
        assert pub.stats.reconnects >= 3 and pub.stats.outbox_overflow == 0
        await pub.close()
    finally:
        server.close()


class CuttingProxy:
    """A TCP proxy in front of Redis that, when armed, passes one request on to Redis and then
    drops the client's connection before the reply: the write landed, its sender cannot know."""

    def __init__(self, target_port: int, marker: bytes) -> None:
        self.target_port = target_port
        self.marker = marker
        self.armed = False
        self.cuts = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        cutting = False

        async def upstream() -> None:
            nonlocal cutting
            while data := await client_r.read(65536):
                if self.armed and self.marker in data:
                    self.armed = False
                    cutting = True
                server_w.write(data)
                await server_w.drain()
                if cutting:
                    self.cuts += 1
                    break

        async def downstream() -> None:
            while data := await server_r.read(65536):
                if cutting:
                    return
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        client_w.close()
        server_w.close()


async def test_a_write_that_landed_unacknowledged_is_not_written_twice(
    redis_url: str, redis_server: EmbeddedRedis, started: list[Publisher]
) -> None:
    proxy = await CuttingProxy(redis_server.port, marker=b"EVALSHA").start()
    try:
        pub = await start(started, f"redis://127.0.0.1:{proxy.port}/0")
        assert await pub.wait_connected(5)
        proxy.armed = True
        pub.stream_online("cam1", epoch=1)
        assert await pub.flush(10)
        assert proxy.cuts == 1
        pub.stream_offline("cam1", reason="stopped")
        assert await pub.flush(10)
        assert [e["type"] for _, e in entries(redis_url)] == ["stream.online", "stream.offline"]
        stats = pub.stats
        assert stats.reconnects == 1
        assert stats.events_deduplicated == 1 and stats.events_written == 1
    finally:
        await proxy.close()


async def test_outbox_is_bounded_counted_and_replayed_in_order_when_redis_returns(
    started: list[Publisher], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_tcp_port()
    url = f"redis://127.0.0.1:{port}/0"
    pub = await start(started, url, outbox_size=5)
    await asyncio.sleep(0.1)
    for i in range(8):
        pub.stream_online(f"cam{i}", epoch=i)
    pub.publish(frame(StreamScoring("cam0", TH), 0, 0.5))
    stats = pub.stats
    assert not stats.connected and stats.last_error is not None
    assert (stats.outbox_overflow, stats.events_pending, stats.scores_dropped) == (3, 5, 1)
    assert "EVENT OUTBOX FULL" in caplog.text
    # Analysis was never blocked: all of the above returned at once, with Redis absent.
    with EmbeddedRedis(port=port) as server:
        assert await pub.flush(10)
        assert [e["stream"] for _, e in entries(server.url)] == [f"cam{i}" for i in range(3, 8)]
        assert [e["epoch"] for _, e in entries(server.url)] == [3, 4, 5, 6, 7]
        assert pub.stats.reconnects == 1
        await pub.close()


async def test_events_refused_by_redis_are_kept_until_it_accepts_them(
    redis_url: str, started: list[Publisher], caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("dfstream:events", "not a stream")
    pub = await start(started, redis_url)
    pub.stream_online("cam1", epoch=1)
    pub.stream_online("cam2", epoch=1)
    assert not await pub.flush(0.5)
    assert pub.stats.events_pending == 2
    assert "refused the write" in caplog.text and "WRONGTYPE" in caplog.text
    client.delete("dfstream:events")
    assert await pub.flush(10)
    assert [e["stream"] for _, e in entries(redis_url)] == ["cam1", "cam2"]
    client.close()


@pytest.mark.parametrize("tcp", [True, False], ids=["tcp-auth", "unix-socket-auth"])
async def test_auth_urls_work_and_a_wrong_password_is_an_outage_not_a_leak(
    tcp: bool, started: list[Publisher], caplog: pytest.LogCaptureFixture
) -> None:
    with EmbeddedRedis(tcp=tcp, password="pw-s3cret") as server:
        assert ("unix://" in server.url) != tcp
        pub = await start(started, server.url)
        pub.stream_online("cam1", epoch=1)
        assert await pub.flush(5)
        assert [e["stream"] for _, e in entries(server.url)] == ["cam1"]

        wrong = server.url.replace("pw-s3cret", "wrong-pw")
        bad = await start(started, wrong)
        assert not await bad.wait_connected(0.5)
        error = bad.stats.last_error or ""
        assert "password" in error.lower() or "auth" in error.lower()
        assert "wrong-pw" not in caplog.text
        await bad.close(timeout_s=0.1)
        await pub.close()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture()
def tls_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server that speaks TLS only; yields its rediss:// URL."""
    cert, key = _self_signed(tmp_path)
    port = free_tcp_port()
    process = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis.from_url(url, socket_timeout=1).ping():
                    break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=5)


async def test_tls_url_works(tls_redis: str, started: list[Publisher]) -> None:
    pub = await start(started, tls_redis)
    pub.stream_online("cam1", epoch=2)
    assert await pub.flush(5)
    assert [e["epoch"] for _, e in entries(tls_redis)] == [2]
    plain = tls_redis.replace("rediss://", "redis://").split("?")[0]
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis.from_url(plain, socket_timeout=1).ping()


async def test_publish_from_another_thread(redis_url: str, started: list[Publisher]) -> None:
    listener = aioredis.Redis.from_url(redis_url)
    pubsub = listener.pubsub()
    await pubsub.subscribe("dfstream:scores:cam1")
    latencies: list[float] = []
    pub = await start(started, redis_url, on_latency=latencies.extend)
    assert await pub.wait_connected(5)
    scorer = StreamScoring("cam1", TH)
    results = [frame(scorer, seq, 0.3) for seq in range(500)]

    def produce() -> None:
        for result in results:
            pub.publish(result)

    await asyncio.to_thread(produce)
    assert await pub.flush(10)
    messages = await read_channel(pubsub, 500)
    assert [m["seq"] for m in messages] == list(range(500))
    assert pub.stats.scores_published == 500 and len(latencies) == 500
    await pubsub.aclose()
    await listener.aclose()


async def test_liveness_key_is_renewed_and_from_settings(
    redis_url: str, started: list[Publisher]
) -> None:
    settings = RedisSettings(service_ttl_s=1.0, prefix="df2:", outbox_size=7)
    pub = Publisher.from_settings(settings, redis_url)
    started.append(pub)
    assert (pub.keys.prefix, pub.config.outbox_size, pub.config.service_ttl_s) == ("df2:", 7, 1.0)
    await pub.start()
    client = aioredis.Redis.from_url(redis_url)
    for _ in range(5):  # 2.5 s, well past the 1 s TTL
        await asyncio.sleep(0.5)
        assert await client.exists("df2:service") == 1
    await pub.close()
    assert await client.exists("df2:service") == 0
    await client.aclose()


def test_log_lines_never_show_the_password(caplog: pytest.LogCaptureFixture) -> None:
    from stream.sources.urls import redact

    caplog.set_level(logging.INFO)
    assert redact("redis://user:hunter2@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact("unix:///run/redis.sock?password=hunter2&db=1") == (
        "unix:///run/redis.sock?password=***&db=1"
    )
    assert redact("rediss://:hunter2@h/0") == "rediss://:***@h/0"


async def test_state_hash_is_rate_limited_but_scores_are_not(
    redis_url: str, started: list[Publisher]
) -> None:
    listener = aioredis.Redis.from_url(redis_url)
    pubsub = listener.pubsub()
    await pubsub.subscribe("dfstream:scores:cam1")
    pub = await start(started, redis_url, state_interval_s=60.0)
    assert await pub.wait_connected(5)
    scorer = StreamScoring("cam1", TH)
    pub.publish(frame(scorer, 0, 0.3))
    client = aioredis.Redis.from_url(redis_url)
    for _ in range(100):
        if await client.hget("dfstream:state:cam1", "seq") is not None:
            break
        await asyncio.sleep(0.02)
    for seq in range(1, 5):
        pub.publish(frame(scorer, seq, 0.3))
    assert [m["seq"] for m in await read_channel(pubsub, 5)] == [0, 1, 2, 3, 4]
    assert await client.hget("dfstream:state:cam1", "seq") == b"0"
    assert await pub.flush(5)  # a flush writes the latest state at once
    assert await client.hget("dfstream:state:cam1", "seq") == b"4"
    await pubsub.aclose()
    await listener.aclose()
    await client.aclose()


def test_bench_publish_command_reports_against_redis_benchmark() -> None:
    from typer.testing import CliRunner

    from stream.cli import app

    out = CliRunner().invoke(app, [
        "bench", "publish", "--json", "--messages", "5000", "--streams", "10",
        "--latency-rate", "2000", "--latency-seconds", "0.3", "--reference-requests", "5000",
    ])
    assert out.exit_code == 0, out.output
    result = orjson.loads(out.stdout)
    assert result["messages_per_s"] > 0 and result["p99_ms"] > 0
    assert result["throughput"]["dropped"] == 0 and result["throughput"]["flushed"]
    assert result["redis_benchmark"]["unpipelined"]["publish_per_s"] > 0
    assert result["ratio_vs_redis_benchmark"] == pytest.approx(
        result["messages_per_s"] / result["redis_benchmark"]["unpipelined"]["publish_per_s"],
        rel=0.01,
    )
    assert result["message_bytes"] > 200

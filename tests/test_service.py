"""The running service end to end: real redis-server, real RTSP servers with real face media, the
tiny untrained scorer, the published RetinaFace weights, the HTTP API under a real uvicorn.

One service (three RTSP streams, auth on) is shared by the module; `dfstream serve` runs as a
subprocess for the SIGTERM test. Bounds are generous liveness bounds, never timings.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from stream.redis_server import EmbeddedRedis, free_tcp_port
from stream.rtsp_camera import RtspCamera
from tests.support.service import (
    TEST_INGEST,
    ServiceServer,
    long_face_video,
    service_settings,
    wait_until,
)

pytestmark = pytest.mark.slow

DFSTREAM = Path(sys.executable).parent / "dfstream"
PREFIX = "svc:"
TOKEN = "test-token-5b7c"
STREAMS = ("cam0", "cam1", "cam2")
MAX_BODY = 2048

Scores = dict[str, list[dict[str, Any]]]


@pytest.fixture(scope="module")
def face_media(media_dir: Path) -> Path:
    return long_face_video(media_dir)


@pytest.fixture(scope="module")
def module_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server of this module's own, so that one test can take it down."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="module")
def rtsp(face_media: Path) -> Iterator[dict[str, RtspCamera]]:
    servers = {stream: RtspCamera(face_media).start() for stream in STREAMS}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="module")
def running(
    module_redis: EmbeddedRedis, rtsp: dict[str, RtspCamera], retinaface_weights: Path
) -> Iterator[ServiceServer]:
    settings = service_settings(
        module_redis.url,
        redis={"prefix": PREFIX, "reconnect_base_s": 0.1, "reconnect_cap_s": 0.5},
        api={"token": TOKEN, "max_body_bytes": MAX_BODY},
        streams=[{"id": stream, "url": server.url} for stream, server in rtsp.items()],
    )
    with ServiceServer(settings) as server:
        yield server


@pytest.fixture()
def api(running: ServiceServer) -> Iterator[httpx.Client]:
    with running.client() as client:
        yield client


@pytest.fixture()
def rdb(module_redis: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(module_redis.url, decode_responses=True)
    yield client
    client.close()


# -- helpers --------------------------------------------------------------------------------------


def collect_scores(
    url: str, until: Callable[[Scores], bool], timeout_s: float, prefix: str = PREFIX
) -> Scores:
    """Live score messages per stream from `{prefix}scores:*` until ``until`` holds."""
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(f"{prefix}scores:*")
    scores: Scores = {}
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not until(scores):
            message = pubsub.get_message(timeout=0.2)
            if message is not None:
                payload = json.loads(message["data"])
                scores.setdefault(payload["stream"], []).append(payload)
    finally:
        pubsub.close()
        client.close()
    return scores


def events_of(rdb: redis.Redis, prefix: str = PREFIX) -> list[dict[str, Any]]:
    entries: Any = rdb.xrange(f"{prefix}events")
    return [json.loads(fields["event"]) for _, fields in entries]


def analysed(api: httpx.Client) -> dict[str, int]:
    return {s["id"]: s["frames_analysed"] for s in api.get("/api/streams").json()}


def dfstream(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DFSTREAM), *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )


# -- streams --------------------------------------------------------------------------------------


def test_three_streams_flow_to_redis_with_increasing_seq(
    running: ServiceServer, module_redis: EmbeddedRedis, rdb: redis.Redis
) -> None:
    scores = collect_scores(
        module_redis.url,
        until=lambda got: all(len(got.get(s, [])) >= 10 for s in STREAMS),
        timeout_s=40,
    )
    for stream in STREAMS:
        messages = scores.get(stream, [])
        assert len(messages) >= 10, f"{stream}: {len(messages)} score messages"
        seqs = [m["seq"] for m in messages]
        assert all(b > a for a, b in itertools.pairwise(seqs)), f"{stream}: {seqs}"
        for m in messages:
            assert m["v"] == 1 and m["stream"] == stream
            assert m["epoch"] >= 1
            assert isinstance(m["captured_at"], float) and isinstance(m["pts"], float)
            assert m["published_at"] >= m["captured_at"]
            assert m["state"] in ("clear", "alert")
        faces = [f for m in messages for f in m["faces"]]
        assert faces, f"{stream}: the astronaut's face was never scored"
        assert all(0.0 <= f["p_fake"] <= 1.0 and len(f["box"]) == 4 for f in faces)
        state = rdb.hgetall(f"{PREFIX}state:{stream}")
        assert state["status"] == "online"
        assert int(state["seq"]) >= 1 and float(state["fps_analysed"]) > 0


def test_stream_added_and_removed_through_the_api(
    api: httpx.Client, rtsp: dict[str, RtspCamera], rdb: redis.Redis
) -> None:
    url = rtsp["cam0"].url  # a second client of cam0's shared media
    created = api.post("/api/streams", json={"id": "extra", "url": url, "analysis_fps": 4})
    assert created.status_code == 201, created.text
    assert created.json()["id"] == "extra"
    assert api.post("/api/streams", json={"id": "extra", "url": url}).status_code == 409
    assert "extra" in [s["id"] for s in api.get("/api/streams").json()]
    assert rdb.hexists(f"{PREFIX}streams", "extra")

    flowing = wait_until(
        lambda: api.get("/api/streams/extra").json()["frames_analysed"] >= 3, timeout_s=30
    )
    assert flowing, api.get("/api/streams/extra").json()
    assert api.get("/api/streams/extra").json()["status"] == "online"
    assert 'stream="extra"' in api.get("/metrics").text

    assert api.delete("/api/streams/extra").status_code == 204
    assert 'stream="extra"' not in api.get("/metrics").text  # no series left behind
    assert api.get("/api/streams/extra").status_code == 404
    assert api.delete("/api/streams/extra").status_code == 404
    assert not rdb.hexists(f"{PREFIX}streams", "extra")

    def lifecycle() -> list[tuple[str, str | None]]:
        return [
            (e["type"], e["reason"]) for e in events_of(rdb)
            if e["stream"] == "extra" and e["type"].startswith("stream.")
        ]

    assert wait_until(lambda: len(lifecycle()) >= 2, timeout_s=10)
    assert lifecycle() == [("stream.online", None), ("stream.offline", "removed")]
    online = next(e for e in events_of(rdb) if e["stream"] == "extra")
    assert online["url"] == url and online["epoch"] >= 1


def test_a_stream_that_never_connects_is_never_online(
    api: httpx.Client, rdb: redis.Redis
) -> None:
    from stream.redis_server import free_tcp_port

    url = f"rtsp://127.0.0.1:{free_tcp_port()}/nobody-serves-this"
    assert api.post("/api/streams", json={"id": "dark", "url": url}).status_code == 201
    # It keeps trying: its status says so, in the API and the state hash, never "online".
    tried = wait_until(lambda: api.get("/api/streams/dark").json()["reconnects"] >= 1
                       or api.get("/api/streams/dark").json()["last_error"], timeout_s=30)
    assert tried, api.get("/api/streams/dark").json()
    view = api.get("/api/streams/dark").json()
    assert view["status"] in ("connecting", "reconnecting") and view["frames_analysed"] == 0
    assert rdb.hget(f"{PREFIX}state:dark", "status") in ("connecting", "reconnecting")
    assert api.delete("/api/streams/dark").status_code == 204

    def lifecycle() -> list[str]:
        return [e["type"] for e in events_of(rdb) if e["stream"] == "dark"]

    assert wait_until(lambda: "stream.offline" in lifecycle(), timeout_s=10)
    assert lifecycle() == ["stream.offline"]


@pytest.mark.parametrize(
    "url",
    [
        "concat:/etc/passwd|/etc/hosts",
        "file:///etc/passwd",
        "/etc/passwd",
        "subfile,,start,0,end,10,,:/etc/passwd",
        "data:text/plain;base64,aGk=",
    ],
)
def test_refused_url_schemes_get_422(api: httpx.Client, url: str) -> None:
    response = api.post("/api/streams", json={"id": "sneaky", "url": url})
    assert response.status_code == 422, response.text
    assert "scheme" in response.text or "allowed" in response.text
    assert api.get("/api/streams/sneaky").status_code == 404


def test_a_stream_calibration_that_is_missing_or_for_other_weights_gets_422(
    api: httpx.Client, rtsp: dict[str, RtspCamera], tmp_path: Path
) -> None:
    from engines import store
    from engines.calibration import Calibrator
    from engines.stream_calibrations import StreamCalibration, save

    store.configure(home=tmp_path, weights_dir=store.locations().weights_dir)  # restored after

    spec = {"id": "calibrated", "url": rtsp["cam0"].url, "calibration": "no-such-camera"}
    missing = api.post("/api/streams", json=spec)
    assert missing.status_code == 422 and "no stream calibration named" in missing.text
    save(StreamCalibration("other-weights", "0" * 64, "elsewhere", Calibrator("platt", (1, -1))),
         overwrite=True)
    other = api.post("/api/streams", json={**spec, "calibration": "other-weights"})
    assert other.status_code == 422 and "fitted for detector elsewhere" in other.text
    assert api.get("/api/streams/calibrated").status_code == 404


def test_bad_stream_ids_get_422(api: httpx.Client, rtsp: dict[str, RtspCamera]) -> None:
    for bad in ("", "has space", "a/b", "x" * 300):
        response = api.post("/api/streams", json={"id": bad, "url": rtsp["cam0"].url})
        assert response.status_code == 422, (bad, response.text)


def test_malformed_bodies_get_a_readable_4xx_never_a_500(
    api: httpx.Client, rtsp: dict[str, RtspCamera]
) -> None:
    loopback = rtsp["cam0"].url
    bad_numbers = (float("nan"), float("inf"), float("-inf"), 1e309)
    cases = [("POST", "/api/streams", {"id": "nan", "url": loopback, "analysis_fps": x})
             for x in bad_numbers]
    cases += [("PUT", "/api/thresholds", {"enter": x}) for x in bad_numbers]
    cases.append(("POST", "/api/streams", {"id": "surrogate", "url": "rtsp://h/\ud800"}))
    for method, path, body in cases:
        # json.dumps writes NaN and Infinity as Python's json does, as a client might send.
        raw = json.dumps(body).encode()
        response = api.request(method, path, content=raw,
                               headers={"content-type": "application/json"})
        assert response.status_code == 422, (body, response.text)
        detail = response.json()["detail"]
        assert detail and all("msg" in d and "loc" in d for d in detail), detail


@hypothesis_settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(
    st.binary(max_size=300),
    st.dictionaries(
        st.sampled_from(["id", "url", "analysis_fps", "watchdog_s", "realtime", "loop",
                         "enter", "exit", "window_s", "extra"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=40),
                  st.floats(allow_nan=True, allow_infinity=True), st.lists(st.integers())),
    ).map(lambda d: json.dumps({**d, "url": "not a url: " + str(d.get("url"))}).encode()),
), route=st.sampled_from([("POST", "/api/streams"), ("PUT", "/api/thresholds"),
                          ("PUT", "/api/thresholds?stream=nope")]))
def test_fuzzed_bodies_never_get_a_500(
    api: httpx.Client, body: bytes, route: tuple[str, str]
) -> None:
    method, path = route
    response = api.request(method, path, content=body,
                           headers={"content-type": "application/json"})
    assert response.status_code < 500, (body, response.text)
    for stream in api.get("/api/streams").json():  # a body that was valid added a stream
        if stream["id"] not in STREAMS:
            api.delete(f"/api/streams/{stream['id']}")


def test_streams_commands_against_the_running_server(
    running: ServiceServer, rtsp: dict[str, RtspCamera]
) -> None:
    common = ["--api", running.url, "--token", TOKEN]
    added = dfstream("streams", "add", "cli-cam", rtsp["cam1"].url, "--fps", "3", *common,
                     "--json")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["id"] == "cli-cam"

    listed = dfstream("streams", "list", *common, "--json")
    assert listed.returncode == 0, listed.stderr
    assert {s["id"] for s in json.loads(listed.stdout)} == {*STREAMS, "cli-cam"}

    table = dfstream("streams", "list", *common)
    assert table.returncode == 0 and "cli-cam" in table.stderr + table.stdout

    removed = dfstream("streams", "remove", "cli-cam", *common)
    assert removed.returncode == 0, removed.stderr
    gone = dfstream("streams", "remove", "cli-cam", *common)
    assert gone.returncode != 0 and "404" in gone.stderr

    refused = dfstream("streams", "list", "--api", running.url)
    assert refused.returncode != 0 and "401" in refused.stderr


def test_a_killed_stream_leaves_the_others_flowing(
    api: httpx.Client, rtsp: dict[str, RtspCamera]
) -> None:
    others = ("cam0", "cam1")
    window_s = 2.5

    def rates() -> dict[str, float]:
        before = analysed(api)
        time.sleep(window_s)
        after = analysed(api)
        return {s: (after[s] - before[s]) / window_s for s in others}

    wait_until(lambda: all(analysed(api)[s] > 0 for s in STREAMS), timeout_s=20)
    rates_before = rates()
    assert all(rate > 0 for rate in rates_before.values()), rates_before

    rtsp["cam2"].stop()
    try:
        noticed = wait_until(
            lambda: api.get("/api/streams/cam2").json()["status"] != "online", timeout_s=20
        )
        assert noticed, api.get("/api/streams/cam2").json()
        rates_after = rates()
        for stream in others:
            # Generous: the point is that they keep flowing, not a rate to the decimal.
            assert rates_after[stream] >= 0.4 * rates_before[stream], (rates_before, rates_after)
        dead = api.get("/api/streams/cam2").json()
        assert dead["status"] in ("reconnecting", "connecting"), dead
    finally:
        rtsp["cam2"].start()  # the same port: the stream comes back by itself

    def back() -> bool:
        view = api.get("/api/streams/cam2").json()
        return bool(view["status"] == "online" and view["reconnects"] >= 1)

    assert wait_until(back, timeout_s=30), api.get("/api/streams/cam2").json()
    before = analysed(api)["cam2"]
    assert wait_until(lambda: analysed(api)["cam2"] > before, timeout_s=20)


# -- HTTP surface ---------------------------------------------------------------------------------


def test_requests_without_the_token_are_refused(running: ServiceServer) -> None:
    with running.client(token="") as anonymous:
        for path in ("/api/streams", "/api/info", "/metrics", "/api/thresholds", "/",
                     "/api/events", "/api/streams/cam0", "/openapi.json"):
            response = anonymous.get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"] == "Bearer"
        assert anonymous.post("/api/streams", json={"id": "x", "url": "rtsp://h/"}
                              ).status_code == 401
        assert anonymous.delete("/api/streams/cam0").status_code == 401
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/readyz").status_code in (200, 503)
    with running.client(token="wrong-token") as wrong:
        assert wrong.get("/api/streams").status_code == 401
    with httpx.Client(base_url=running.url) as odd:  # bytes no token has: refused, not a 500
        assert odd.get("/api/streams", headers={"Authorization": b"Bearer \xe9t\xe9"}
                       ).status_code == 401
        assert odd.get("/api/streams", headers={"Cookie": b"dfstream_token=\xff"}
                       ).status_code == 401
    with running.client() as bearer:
        assert bearer.get("/api/streams").status_code == 200
    with httpx.Client(base_url=running.url, cookies={"dfstream_token": TOKEN}) as cookie:
        assert cookie.get("/api/streams").status_code == 200
    # The dashboard link with ?token= sets the cookie, and the cookie then opens the API.
    with httpx.Client(base_url=running.url) as browser:
        opened = browser.get("/", params={"token": TOKEN})
        assert opened.status_code == 303 and "token" not in opened.headers["location"]
        assert browser.cookies.get("dfstream_token") == TOKEN
        assert browser.get("/").status_code == 200
        assert browser.get("/api/streams").status_code == 200
    with httpx.Client(base_url=running.url) as guesser:
        assert guesser.get("/", params={"token": "guess"}).status_code == 401


def test_request_bodies_over_the_limit_get_413(api: httpx.Client) -> None:
    big = {"id": "big", "url": "rtsp://127.0.0.1:9/" + "a" * (MAX_BODY + 100)}
    declared = api.post("/api/streams", json=big)
    assert declared.status_code == 413, declared.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        body = json.dumps(big).encode()
        for i in range(0, len(body), 512):
            yield body[i : i + 512]

    streamed = api.post("/api/streams", content=chunks(),
                        headers={"content-type": "application/json"})
    assert streamed.status_code == 413, streamed.text
    assert api.get("/api/streams/big").status_code == 404
    small = api.put("/api/thresholds", json={"window_s": 2.0})
    assert small.status_code == 200, small.text


def test_metrics_have_per_stream_counters(api: httpx.Client) -> None:
    wait_until(lambda: all(analysed(api)[s] > 0 for s in STREAMS), timeout_s=20)
    response = api.get("/metrics")
    assert response.status_code == 200
    samples = {
        (sample.name, sample.labels.get("stream")): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    for stream in STREAMS:
        assert samples[("dfstream_frames_analysed_total", stream)] > 0
        assert samples[("dfstream_frames_decoded_total", stream)] > 0
        assert samples[("dfstream_frames_delivered_total", stream)] > 0
        assert ("dfstream_reconnects_total", stream) in samples
        assert ("dfstream_fps_in", stream) in samples
        assert ("dfstream_faces_total", stream) in samples
    names = {name for name, _ in samples}
    for family in ("dfstream_stage_seconds_count", "dfstream_batch_size_count",
                   "dfstream_end_to_end_seconds_count", "dfstream_streams",
                   "dfstream_outbox_depth"):
        assert family in names, family
    assert samples[("dfstream_streams", None)] == len(STREAMS)

    def timed_stages() -> set[str]:
        return {
            sample.labels["stage"]
            for family in text_string_to_metric_families(api.get("/metrics").text)
            for sample in family.samples
            if sample.name == "dfstream_stage_seconds_count" and sample.value > 0
        }

    every_stage = {"decode", "queue", "detect", "score", "publish"}
    assert wait_until(lambda: every_stage <= timed_stages(), timeout_s=20), timed_stages()


def test_info_and_openapi(api: httpx.Client) -> None:
    info = api.get("/api/info").json()
    assert info["detector"]["trained"] is False
    assert info["redis"]["prefix"] == PREFIX
    paths = api.get("/openapi.json").json()["paths"]
    for path in ("/api/streams", "/api/streams/{stream_id}", "/api/thresholds", "/readyz"):
        assert path in paths


def test_thresholds_apply_live_with_their_config_version(
    api: httpx.Client, module_redis: EmbeddedRedis, rdb: redis.Redis
) -> None:
    assert api.put("/api/thresholds", json={"enter": 0.5, "exit": 0.9}).status_code == 422
    assert api.put("/api/thresholds", json={"enter": 2}).status_code == 422
    assert api.put("/api/thresholds", params={"stream": "nope"},
                   json={"window_s": 1.0}).status_code == 404

    # Everything at zero: any face (the random scorer gives p in (0, 1)) starts an alert.
    changed = api.put(
        "/api/thresholds",
        json={"enter": 0.0, "exit": 0.0, "min_duration_s": 0.0, "cooldown_s": 0.0},
    )
    assert changed.status_code == 200, changed.text
    version = changed.json()["version"]
    assert changed.json()["default"]["enter"] == 0.0
    assert api.get("/api/thresholds").json()["version"] == version

    scores = collect_scores(
        module_redis.url,
        until=lambda got: all(
            any(m["config_version"] == version for m in got.get(s, [])) for s in STREAMS
        ),
        timeout_s=20,
    )
    for stream in STREAMS:
        assert any(m["config_version"] == version for m in scores.get(stream, [])), stream
        later = [m for m in scores[stream] if m["config_version"] == version]
        assert all(m["config_version"] == version for m in scores[stream][-len(later):])

    def started() -> list[dict[str, Any]]:
        return [e for e in events_of(rdb)
                if e["type"] == "alert.start" and e["config_version"] == version]

    alerts = wait_until(started, timeout_s=20)
    assert alerts, "no alert.start under thresholds of zero"
    alert = alerts[0]
    assert alert["thresholds"]["enter"] == 0.0 and alert["tracks"]
    assert api.get("/api/streams/" + alert["stream"]).json()["config_version"] == version
    listed = api.get("/api/events", params={"count": 1000, "stream": alert["stream"]}).json()
    assert alert["event_id"] in {e["event_id"] for e in listed}


def test_evidence_is_in_redis_when_alert_start_is_announced(
    api: httpx.Client, module_redis: EmbeddedRedis
) -> None:
    """A live listener that reacts to alert.start can fetch its evidence at once."""
    cam = "cam0"
    # A fresh alert: a per-stream override that clears it, then one that raises it again.
    assert api.put("/api/thresholds", params={"stream": cam},
                   json={"enter": 1.0, "exit": 1.0, "hold_s": 0.0}).status_code == 200
    client = redis.Redis.from_url(module_redis.url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"{PREFIX}events")
    try:
        time.sleep(1.0)
        assert api.put("/api/thresholds", params={"stream": cam},
                       json={"enter": 0.0, "exit": 0.0}).status_code == 200
        deadline = time.monotonic() + 20
        start = None
        while time.monotonic() < deadline and start is None:
            message = pubsub.get_message(timeout=0.2)
            if message is None:
                continue
            event = json.loads(message["data"])
            if event["type"] == "alert.start" and event["stream"] == cam:
                start = event
                jpeg = client.get(event["evidence"])  # at once, as a listener would
        assert start is not None, "no alert.start on the events channel"
        assert jpeg is not None and jpeg[:2] == b"\xff\xd8", "evidence missing at alert.start"
        image = api.get(f"/api/evidence/{start['event_id']}")
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    finally:
        pubsub.close()
        client.close()
    assert api.get("/api/evidence/no-such-event").status_code == 404
    # Its heatmap follows, computed off the analysis path.
    heatmap = wait_until(
        lambda: (found := api.get(f"/api/heatmap/{start['event_id']}")).status_code == 200
        and found,
        timeout_s=60,
    )
    assert heatmap, "no heatmap for the alert"
    assert heatmap.headers["content-type"] == "image/jpeg" and heatmap.content[:2] == b"\xff\xd8"
    assert heatmap.content != image.content
    missing = api.get("/api/heatmap/no-such-event")
    assert missing.status_code == 404 and "no heatmap" in missing.json()["detail"]


def test_live_feed_keeps_going_through_quiet_spells(
    running: ServiceServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep-alives (here after every quiet 20 ms) must not end the live feed."""
    import stream.api

    monkeypatch.setattr(stream.api, "LIVE_KEEPALIVE_S", 0.02)
    seen: list[str] = []
    with running.client() as api, api.stream("GET", "/api/live") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        deadline = time.monotonic() + 15
        for line in response.iter_lines():
            if line.startswith(": keep-alive"):
                seen.append("keep-alive")
            elif line == "event: score":
                seen.append("score")
            keepalive_then_scores = "keep-alive" in seen and seen[
                seen.index("keep-alive"):].count("score") >= 5
            if keepalive_then_scores or time.monotonic() > deadline:
                break
    first = seen.index("keep-alive") if "keep-alive" in seen else len(seen)
    assert seen[first:].count("score") >= 5, seen[-20:]


# -- shutdown -------------------------------------------------------------------------------------


def test_sigterm_shuts_down_cleanly_with_no_event_lost(
    tmp_path: Path, module_redis: EmbeddedRedis, rtsp: dict[str, RtspCamera], rdb: redis.Redis,
    retinaface_weights: Path,
) -> None:
    prefix = "sigterm:"
    port = free_tcp_port()
    config = {
        "redis": {"url": module_redis.url, "prefix": prefix},
        "detector": {"arch": "tiny", "allow_untrained": True},
        "ingest": TEST_INGEST,
        "api": {"port": port},
        # Alerts that open at the first face and stay open (nothing is below exit; a missed
        # face would have to be gone for an hour): each must end before its stream's offline.
        "scoring": {"thresholds": {"enter": 0.0, "exit": 0.0, "min_duration_s": 0.0,
                                   "hold_s": 3600.0}},
        "streams": [{"id": "a", "url": rtsp["cam0"].url}, {"id": "b", "url": rtsp["cam1"].url}],
    }
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (tmp_path / "serve.log").open("w+")
    process = subprocess.Popen(
        [str(DFSTREAM), "serve", "-c", str(path)], stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )
    base = f"http://127.0.0.1:{port}"
    live_lines: list[str] = []
    try:
        def alerting() -> bool:
            try:
                streams = httpx.get(base + "/api/streams", timeout=5).json()
            except httpx.HTTPError:
                return False
            return len(streams) == 2 and all(s["state"] == "alert" for s in streams)

        assert wait_until(alerting, timeout_s=60, poll_s=0.3), _tail(log)
        assert rdb.exists(f"{prefix}service")

        # A dashboard's live feed is open: shutdown must not wait for it to hang up.
        def follow() -> None:
            with contextlib.suppress(httpx.HTTPError), httpx.stream("GET", base + "/api/live",
                                                     timeout=None) as response:
                for line in response.iter_lines():
                    live_lines.append(line)

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        assert wait_until(lambda: "event: score" in live_lines, timeout_s=10)

        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=25)
        assert code == 0, _tail(log)
        reader.join(5)
        assert not reader.is_alive(), "the live feed stayed open after shutdown"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    events = events_of(rdb, prefix)
    for stream in ("a", "b"):
        mine = [e for e in events if e["stream"] == stream]
        kinds = [e["type"] for e in mine]
        assert kinds[0] == "stream.online" and kinds[-1] == "stream.offline", kinds
        assert kinds.count("stream.offline") == 1 and mine[-1]["reason"] == "shutdown"
        # The alert open at shutdown ended with the stream, before its offline event.
        core = [kind for kind in kinds if kind != "alert.update"]
        assert core == ["stream.online", "alert.start", "alert.end", "stream.offline"], kinds
        assert mine[-2]["reason"] == "stream_ended"
        assert mine[-2]["event_id"] == mine[1]["event_id"]
    # The outbox was flushed: the publisher's mark counts every event it numbered, and each is
    # in the Stream once.
    marks = rdb.keys(f"{prefix}outbox:*")
    assert len(marks) == 1
    assert int(rdb.get(marks[0]) or 0) == len(events) == rdb.xlen(f"{prefix}events")
    assert not rdb.exists(f"{prefix}service"), "the liveness key outlived the service"
    assert "not written" not in _tail(log)


def _tail(log: Any, lines: int = 40) -> str:
    log.flush()
    log.seek(0)
    return "\n".join(log.read().splitlines()[-lines:])


# -- Redis outage (last: it restarts this module's redis-server) ---------------------------------


def test_readyz_follows_engines_and_redis(
    running: ServiceServer, api: httpx.Client, module_redis: EmbeddedRedis, rdb: redis.Redis
) -> None:
    url = running.settings.streams[0].url
    assert api.post("/api/streams", json={"id": "probe", "url": url}).status_code == 201
    with running.client(token="") as anonymous:
        ready = anonymous.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["ready"] is True
        assert ready.json()["checks"]["engines"]["ok"] is True
        assert ready.json()["checks"]["redis"]["ok"] is True

        module_redis.stop()
        try:
            down = anonymous.get("/readyz")
            assert down.status_code == 503, down.text
            body = down.json()
            assert body["ready"] is False and body["checks"]["redis"]["ok"] is False
            assert str(module_redis.port) in body["checks"]["redis"]["detail"]
            assert body["checks"]["engines"]["ok"] is True
            assert anonymous.get("/healthz").status_code == 200

            # The service rides the outage out: streams are still analysed, the API answers,
            # and what needs Redis says so.
            before = analysed(api)
            assert wait_until(lambda: all(analysed(api)[s] > before[s] for s in STREAMS),
                              timeout_s=20)
            refused = api.put("/api/thresholds", json={"window_s": 2.0})
            assert refused.status_code == 503, refused.text
            # The live feed says why it has nothing and ends cleanly; the browser comes back.
            with api.stream("GET", "/api/live") as feed:
                lines = list(feed.iter_lines())
            assert "event: unavailable" in lines and any(
                line.startswith("retry: ") for line in lines), lines
            # A new stream needs its fencing epoch from Redis: refused for now, nothing started.
            added = api.post("/api/streams", json={"id": "outage", "url": url})
            assert added.status_code == 503 and "epoch" in added.text, added.text
            assert api.get("/api/streams/outage").status_code == 404
            # Events decided during the outage wait in the outbox.
            assert api.delete("/api/streams/probe").status_code == 204
        finally:
            module_redis.start()

        back = wait_until(lambda: anonymous.get("/readyz").status_code == 200, timeout_s=20)
        assert back, anonymous.get("/readyz").text

    # Live scores were dropped meanwhile (Pub/Sub is at-most-once), and counted; the counter
    # follows the publisher's once a second.
    def dropped() -> float:
        return next(sample.value
                    for family in text_string_to_metric_families(api.get("/metrics").text)
                    for sample in family.samples
                    if sample.name == "dfstream_publish_dropped_total")

    assert wait_until(lambda: dropped() > 0, timeout_s=5), dropped()

    def replayed() -> list[dict[str, Any]]:  # this redis-server restarted empty
        return [e for e in events_of(rdb) if e["stream"] == "probe"]

    assert wait_until(replayed, timeout_s=20)
    assert [(e["type"], e["reason"]) for e in replayed()][-1] == ("stream.offline", "removed")
    scores = collect_scores(
        module_redis.url,
        until=lambda got: all(len(got.get(s, [])) >= 2 for s in STREAMS),
        timeout_s=20,
    )
    assert all(len(scores.get(s, [])) >= 2 for s in STREAMS), {s: len(v) for s, v in
                                                                scores.items()}


def test_configured_streams_wait_for_redis_at_start(
    rtsp: dict[str, RtspCamera], retinaface_weights: Path
) -> None:
    """Redis down at start-up: the service starts, and its streams start once Redis answers
    (with a real fencing epoch, not a made-up one)."""
    late = EmbeddedRedis()
    settings = service_settings(
        late.url,
        redis={"prefix": "late:", "reconnect_base_s": 0.1, "reconnect_cap_s": 0.5},
        streams=[{"id": "early", "url": rtsp["cam0"].url}],
    )
    try:
        with ServiceServer(settings) as server, server.client() as api:
            assert api.get("/api/streams").json() == []
            assert api.get("/readyz").status_code == 503
            late.start()
            assert wait_until(lambda: analysed(api).get("early", 0) >= 2, timeout_s=30)
            assert api.get("/readyz").status_code == 200
            client = redis.Redis.from_url(late.url, decode_responses=True)
            try:
                online = [e for e in events_of(client, "late:") if e["type"] == "stream.online"]
            finally:
                client.close()
            assert [e["stream"] for e in online] == ["early"] and online[0]["epoch"] == 1
    finally:
        late.close()

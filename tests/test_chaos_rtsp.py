"""Chaos: the RTSP camera of a running service SIGKILLed (a camera losing power) and restarted,
again and again, next to a second camera that is left alone.

Each time the killed camera's state hash says ``reconnecting``, then ``online`` again with new
frames, and no ``stream.offline`` is announced (a camera restart does not end the stream); the
neighbour keeps delivering frames throughout. The recovery time of every restart (from the
restarted server listening to the first frame decoded from it, on the service's own clock) is
printed. Reconnects use the shipped backoff (0.5 s doubling up to 30 s); the camera stays up
long enough between cuts for the backoff to reset. Bounds are generous liveness bounds, never
timings. ``DFSTREAM_CHAOS_RESTARTS`` sets how many restarts (3).
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from stream.rtsp_camera import RtspCamera
from stream.sources.pyav import STABLE_AFTER_S
from tests.support.service import (
    TEST_INGEST,
    ServiceServer,
    long_face_video,
    service_settings,
    wait_until,
)

pytestmark = pytest.mark.slow

RESTARTS = int(os.environ.get("DFSTREAM_CHAOS_RESTARTS", "3"))
OUTAGE_S = 3.0
"""How long the camera stays dead once the service has noticed."""
UPTIME_S = STABLE_AFTER_S + 2.0
"""How long it stays up again before the next power cut: longer than a session must live to
reset the reconnect backoff (``STABLE_AFTER_S``), so every restart starts from the base delay."""
LIVENESS_S = 60.0
PREFIX = "chaos:"


class ScoreLog:
    """Every live score message of the service, gathered on a thread of its own."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe(f"{PREFIX}scores:*")
        self._lock = threading.Lock()
        self._seen: list[tuple[str, int, float]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._gather, name="chaos-scores", daemon=True)
        self._thread.start()

    def _gather(self) -> None:
        while not self._done.is_set():
            message = self._pubsub.get_message(timeout=0.2)
            if message is not None:
                score = json.loads(message["data"])
                with self._lock:
                    self._seen.append((score["stream"], score["seq"], score["captured_at"]))

    def captured(self, stream: str, after: float, before: float = float("inf")) -> list[float]:
        """When the frames of ``stream`` scored so far were decoded, within (after, before)."""
        with self._lock:
            return [t for s, _, t in self._seen if s == stream and after < t < before]

    def close(self) -> None:
        self._done.set()
        self._thread.join(5)
        self._pubsub.close()
        self._client.close()


@pytest.fixture()
def cameras(media_dir: Path) -> Iterator[dict[str, RtspCamera]]:
    media = long_face_video(media_dir)
    servers = {"cam": RtspCamera(media).start(), "neighbour": RtspCamera(media).start()}
    yield servers
    for server in servers.values():
        server.stop()


def kill_and_restart(
    camera: RtspCamera, scores: ScoreLog, status: Callable[[str], str | None], api: httpx.Client
) -> tuple[float, float, int]:
    """One power cut of ``cam``: how long it was down, its recovery time, and the neighbour's
    frames meanwhile."""
    killed_at = time.time()
    camera.kill()
    assert wait_until(lambda: status("cam") == "reconnecting", LIVENESS_S), status("cam")
    time.sleep(OUTAGE_S)
    camera.start()  # the same port, as a camera that boots again
    listening_at = time.time()
    back = wait_until(lambda: scores.captured("cam", listening_at), LIVENESS_S)
    assert back, api.get("/api/streams/cam").json()
    recovered_at = min(back)
    assert wait_until(lambda: status("cam") == "online", LIVENESS_S), status("cam")
    # The neighbour was analysed while the camera was down (frames decoded during the outage
    # may be scored a little later: wait for them).
    during = wait_until(lambda: scores.captured("neighbour", killed_at, recovered_at), LIVENESS_S)
    assert during, api.get("/api/streams/neighbour").json()
    time.sleep(max(0.0, recovered_at + UPTIME_S - time.time()))
    return listening_at - killed_at, recovered_at - listening_at, len(during)


def test_a_camera_killed_again_and_again_comes_back_each_time_and_its_neighbour_flows(
    redis_url: str, cameras: dict[str, RtspCamera], retinaface_weights: Path,
    capsys: pytest.CaptureFixture[str], record_property: Callable[[str, object], None],
) -> None:
    settings = service_settings(
        redis_url,
        redis={"prefix": PREFIX},
        ingest={**TEST_INGEST, "reconnect_base_s": 0.5, "reconnect_cap_s": 30.0,
                "open_timeout_s": 5.0, "read_timeout_s": 5.0, "watchdog_s": 10.0},
        streams=[{"id": name, "url": camera.url} for name, camera in cameras.items()],
    )
    rdb = redis.Redis.from_url(redis_url, decode_responses=True)
    scores = ScoreLog(redis_url)

    def status(stream: str) -> str | None:
        return rdb.hget(f"{PREFIX}state:{stream}", "status")

    downs: list[float] = []
    recoveries: list[float] = []
    neighbour_frames: list[int] = []
    try:
        with ServiceServer(settings) as server, server.client() as api:
            started = time.time()
            for stream in cameras:
                assert wait_until(lambda s=stream: scores.captured(s, started), LIVENESS_S), stream
            for _ in range(RESTARTS):
                down_s, recovery_s, frames = kill_and_restart(cameras["cam"], scores, status, api)
                downs.append(down_s)
                recoveries.append(recovery_s)
                neighbour_frames.append(frames)
            view = api.get("/api/streams/cam").json()
            assert view["status"] == "online" and view["reconnects"] >= RESTARTS, view
        entries = rdb.xrange(f"{PREFIX}events")
    finally:
        scores.close()
        rdb.close()
    events = [json.loads(fields["event"]) for _, fields in entries]
    lifecycle = sorted((e["type"], e["stream"], e["reason"]) for e in events
                       if e["type"].startswith("stream."))
    # One online per stream, and offline only at the service's shutdown: restarts end nothing.
    assert lifecycle == [("stream.offline", "cam", "shutdown"),
                         ("stream.offline", "neighbour", "shutdown"),
                         ("stream.online", "cam", None), ("stream.online", "neighbour", None)]

    record_property("recovery_s", recoveries)
    with capsys.disabled():
        print(f"\nRTSP chaos, {RESTARTS} SIGKILLs of a camera, down "
              f"{', '.join(f'{d:.1f}' for d in downs)} s: back online "
              f"{', '.join(f'{r:.2f}' for r in recoveries)} s after it listened again "
              f"(median {statistics.median(recoveries):.2f} s); the neighbour analysed "
              f"{', '.join(map(str, neighbour_frames))} frames during the outages")

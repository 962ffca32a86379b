"""``dfstream watch`` against a real Redis: the view's data, its rendering, resuming events."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import redis
from rich.console import Console
from typer.testing import CliRunner

from stream.cli import app
from stream.commands.watch import WatchView
from stream.config import Thresholds
from stream.publish.publisher import Publisher
from stream.redis_server import EmbeddedRedis, free_tcp_port
from stream.scoring import FaceScore, StreamScoring
from tests.support.cli import one_line_error, run_cli

BOX = (0.0, 0.0, 80.0, 80.0)
TOGGLE = Thresholds(enter=0.8, exit=0.6, min_duration_s=0.0, hold_s=0.0, cooldown_s=0.0,
                    window_s=0.01)


async def run_streams(url: str, streams: dict[str, list[float]], **kwargs: float) -> Publisher:
    """Publish a score trace per stream; returns the (still open) publisher."""
    pub = Publisher(url, reconnect_base_s=0.05, reconnect_cap_s=0.3, **kwargs)
    await pub.start()
    for epoch, (name, trace) in enumerate(streams.items(), start=1):
        pub.stream_online(name, epoch=epoch)
        scorer = StreamScoring(name, TOGGLE, config_version=5)
        for seq, p in enumerate(trace):
            pub.publish(scorer.update(seq=seq, pts=seq / 5, captured_at=time.time(),
                                      now=seq / 5, faces=[FaceScore(2, BOX, 0.97, p)]))
        pub.stream_status(name, "online", fps_in=25, fps_analysed=5, fps_dropped=20)
    assert await pub.flush(5)
    return pub


def rendered(view: WatchView) -> str:
    console = Console(record=True, width=200, color_system=None)
    console.print(view.render())
    return console.export_text()


async def test_view_shows_streams_states_scores_and_latest_events(redis_url: str) -> None:
    pub = await run_streams(redis_url, {"cam1": [0.1, 0.2, 0.95], "cam2": [0.3, 0.2]})
    view = WatchView(redis_url, history=5)
    await view.refresh()
    snap = view.snapshot()
    assert set(snap["streams"]) == {"cam1", "cam2"}
    assert snap["streams"]["cam1"]["state"] == "alert"
    assert snap["streams"]["cam2"]["state"] == "clear"
    assert snap["service"]["instance"] == pub.instance
    assert [e["type"] for e in snap["events"]] == ["stream.online", "alert.start",
                                                  "stream.online"]
    text = rendered(view)
    for expected in ("cam1", "cam2", "alert.start", "0.950", "25.0/5.0/20.0", "service "):
        assert expected in text
    # New events arrive at the next refresh; a stream filter hides the others.
    pub.publish(StreamScoring("cam2", TOGGLE).update(
        seq=9, pts=0, captured_at=0, now=0, faces=[FaceScore(4, BOX, 0.9, 0.99)]))
    assert await pub.flush(5)
    await view.refresh(block_ms=200)
    assert [e.event["type"] for e in view.events][-1] == "alert.start"
    only = WatchView(redis_url, stream="cam1")
    await only.refresh()
    assert set(only.states) == {"cam1"}
    assert {e.event["stream"] for e in only.events} == {"cam1"}
    await pub.close()
    await view.refresh(block_ms=200)
    assert view.service is None
    assert "no service is running" in rendered(view)
    await view.close()
    await only.close()


async def test_view_resumes_the_event_stream_after_a_lost_connection(tmp_path: Path) -> None:
    server = EmbeddedRedis(port=free_tcp_port(), persist_dir=tmp_path).start()
    try:
        pub = await run_streams(server.url, {"cam1": [0.9, 0.1] * 5})
        view = WatchView(server.url, history=1000)
        view.feed.count = 4  # read in small batches, so the outage falls between reads
        await view.refresh()
        first = len(view.events)
        assert first == 11
        server.stop()
        await view.refresh(block_ms=100)
        assert view.error is not None
        assert "reconnecting" in rendered(view)
        server.start()
        scorer = StreamScoring("cam1", TOGGLE)
        for seq in range(10, 30):
            pub.publish(scorer.update(seq=seq, pts=0, captured_at=0, now=seq / 5,
                                      faces=[FaceScore(2, BOX, 0.97, 0.9 if seq % 2 else 0.1)]))
        assert await pub.flush(10)
        deadline = time.monotonic() + 10
        stored = [i.decode() for i, _ in redis.Redis.from_url(server.url).xrange(
            "dfstream:events")]
        while len(view.events) < len(stored) and time.monotonic() < deadline:
            await view.refresh(block_ms=100)
        assert [e.id for e in view.events] == stored
        assert view.error is None and view.feed.reconnects >= 1
        await pub.close()
        await view.close()
    finally:
        server.close()


def test_cli_once_json_and_text(redis_url: str) -> None:
    async def populate() -> None:
        pub = await run_streams(redis_url, {"cam1": [0.2, 0.9], "cam2": [0.1]})
        await pub.close(timeout_s=2)

    asyncio.run(populate())
    runner = CliRunner()
    out = runner.invoke(app, ["watch", "--once", "--json", "--redis-url", redis_url])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert set(data["streams"]) == {"cam1", "cam2"}
    assert data["streams"]["cam1"]["status"] == "offline"
    assert data["events"][-1]["type"] == "stream.offline"
    text = runner.invoke(app, ["watch", "cam2", "--once", "--redis-url", redis_url],
                         terminal_width=200)
    assert text.exit_code == 0, text.output
    assert "cam2" in text.stdout and "cam1" not in text.stdout
    live = runner.invoke(app, ["watch", "--duration", "0.3", "--refresh", "0.1",
                               "--redis-url", redis_url], terminal_width=200)
    assert live.exit_code == 0, live.output
    assert "cam1" in live.stdout and "stream.offline" in live.stdout
    assert runner.invoke(app, ["watch", "--json", "--redis-url", redis_url]).exit_code == 2


def test_cli_once_against_a_dead_redis_prints_only_the_error() -> None:
    url = f"redis://:pw@127.0.0.1:{free_tcp_port()}/0"
    error = one_line_error(run_cli("watch", "--once", "--redis-url", url))
    assert error.startswith("error: cannot read Redis at redis://:***@127.0.0.1:"), error


def test_cli_live_view_says_redis_is_unreachable_once() -> None:
    url = f"redis://:pw@127.0.0.1:{free_tcp_port()}/0"
    done = run_cli("watch", "--duration", "1.5", "--refresh", "0.1", "--redis-url", url)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.startswith(f"Redis {url.replace(':pw@', ':***@')} is unreachable ("), \
        done.stdout
    assert "no service is running" not in done.stdout and "pw@" not in done.stdout


def test_cli_rounds_every_rate_alike(redis_url: str) -> None:
    async def populate() -> None:
        pub = Publisher(redis_url)
        await pub.start()
        pub.stream_online("cam1", epoch=1)
        pub.stream_status("cam1", "online", fps_in=30, fps_analysed=5.127, fps_dropped=0)
        assert await pub.flush(5)
        await pub.close(timeout_s=2)

    asyncio.run(populate())
    done = run_cli("watch", "--once", "--redis-url", redis_url)
    assert done.returncode == 0, done.stderr
    assert "30.0/5.1/0.0" in done.stdout, done.stdout

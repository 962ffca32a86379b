"""Live thresholds in a real Redis: versioned writes, validation, the listener, the CLI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from typer.testing import CliRunner

from stream.cli import app
from stream.config import Thresholds
from stream.publish.publisher import Publisher
from stream.redis_server import free_tcp_port
from stream.scoring import FaceScore, StreamScoring
from stream.thresholds import (
    ThresholdError,
    ThresholdListener,
    ThresholdStore,
    ThresholdUpdate,
)

BOX = (0.0, 0.0, 50.0, 50.0)


@pytest.fixture()
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    await c.hset("dfstream:streams", mapping={"cam1": '{"url": "rtsp://a"}',
                                              "cam2": '{"url": "rtsp://b"}'})
    yield c
    await c.aclose()


async def snapshot(c: aioredis.Redis) -> dict[bytes, bytes]:
    return await c.hgetall("dfstream:config")


async def next_message(pubsub: Any, timeout_s: float) -> dict[str, Any] | None:
    """The next published message, past subscribe confirmations; None after ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (remaining := deadline - asyncio.get_running_loop().time()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
        if message is not None:
            return orjson.loads(message["data"])
    return None


async def test_set_and_get_default_and_per_stream_with_versions_and_announcements(
    client: aioredis.Redis,
) -> None:
    pubsub = client.pubsub()
    await pubsub.subscribe("dfstream:control")
    store = ThresholdStore(client)
    book = await store.get()
    assert (book.version, book.default, book.default_stored) == (0, Thresholds(), False)

    book = await store.set({"enter": 0.9, "hold_s": 3})
    assert book.version == 1 and book.default_stored
    assert book.default == Thresholds(enter=0.9, hold_s=3.0)
    book = await store.set({"exit": 0.4, "window_s": 4}, stream="cam1")
    assert book.version == 2
    assert book.overrides == {"cam1": {"exit": 0.4, "window_s": 4.0}}
    assert book.for_stream("cam1") == Thresholds(enter=0.9, exit=0.4, hold_s=3.0, window_s=4.0)
    assert book.for_stream("cam2") == book.default
    book = await store.set({"enter": 0.7}, stream="cam1")
    assert book.overrides["cam1"] == {"exit": 0.4, "window_s": 4.0, "enter": 0.7}

    announced = [await next_message(pubsub, 2) for _ in range(3)]
    assert announced == [
        {"type": "thresholds", "version": 1, "stream": None},
        {"type": "thresholds", "version": 2, "stream": "cam1"},
        {"type": "thresholds", "version": 3, "stream": "cam1"},
    ]
    book = await store.reset("cam1")
    assert book.version == 4 and book.overrides == {}
    stored = await snapshot(client)
    assert orjson.loads(stored[b"thresholds"]) == book.default.model_dump()
    assert stored[b"version"] == b"4"
    await pubsub.aclose()


@pytest.mark.parametrize(
    ("changes", "stream", "message"),
    [
        ({"enter": 0.5}, None, "exit (0.6) must not be above enter (0.5)"),
        ({"exit": 0.9}, "cam1", "exit (0.9) must not be above enter (0.8)"),
        ({"enter": 1.5}, None, "enter: Input should be less than or equal to 1"),
        ({"exit": -0.1}, None, "exit: Input should be greater than or equal to 0"),
        ({"hold_s": -1}, "cam2", "hold_s: Input should be greater than or equal to 0"),
        ({"min_duration_s": -0.5}, None, "min_duration_s: Input should be greater than or equal"),
        ({"window_s": 0}, None, "window_s: Input should be greater than 0"),
        ({"enter": 0.9}, "cam9", "unknown stream 'cam9'; known streams: cam1, cam2"),
        ({"enter": 0.9}, "bad id!", "not a valid stream id"),
        ({"treshold": 0.9}, None, "unknown threshold field(s) ['treshold']"),
        ({"enter": "high"}, None, "enter must be a number"),
        ({}, None, "no threshold given"),
    ],
)
async def test_bad_values_are_refused_and_nothing_is_written(
    client: aioredis.Redis, changes: dict[str, Any], stream: str | None, message: str
) -> None:
    store = ThresholdStore(client)
    await store.set({"cooldown_s": 1.0})
    before = await snapshot(client)
    pubsub = client.pubsub()
    await pubsub.subscribe("dfstream:control")
    with pytest.raises(ThresholdError) as info:
        await store.set(changes, stream)
    assert message in str(info.value)
    assert info.value.unknown_stream == (stream == "cam9")
    assert await snapshot(client) == before
    assert await next_message(pubsub, 0.2) is None
    await pubsub.aclose()


async def test_partial_updates_as_the_http_api_takes_them(client: aioredis.Redis) -> None:
    store = ThresholdStore(client)
    update = ThresholdUpdate.model_validate({"hold_s": 3.5})
    book = await store.set(update, stream="cam2")
    assert book.overrides == {"cam2": {"hold_s": 3.5}}
    with pytest.raises(ValueError, match="less than or equal to 1"):
        ThresholdUpdate.model_validate({"enter": 2})
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        ThresholdUpdate.model_validate({"entr": 0.5})
    with pytest.raises(ThresholdError) as info:
        await store.reset("cam9")
    assert info.value.unknown_stream and "is not a known stream" in str(info.value)


async def test_a_default_that_would_break_an_override_is_refused(client: aioredis.Redis) -> None:
    store = ThresholdStore(client)
    await store.set({"exit": 0.7}, stream="cam2")
    before = await snapshot(client)
    with pytest.raises(ThresholdError, match="stream 'cam2' with the new default: exit"):
        await store.set({"enter": 0.65})
    assert await snapshot(client) == before


async def test_concurrent_changes_all_land_with_distinct_versions(redis_url: str,
                                                                 client: aioredis.Redis) -> None:
    others = [aioredis.Redis.from_url(redis_url) for _ in range(4)]
    stores = [ThresholdStore(c) for c in others]
    windows = [1.0 + i for i in range(12)]
    books = await asyncio.gather(*(
        stores[i % 4].set({"window_s": w}, stream="cam1" if i % 2 else None)
        for i, w in enumerate(windows)
    ))
    assert sorted(b.version for b in books) == list(range(1, 13))
    final = await ThresholdStore(client).get()
    assert final.version == 12
    for c in others:
        await c.aclose()


async def test_listener_follows_changes_and_catches_unannounced_ones(
    redis_url: str, client: aioredis.Redis
) -> None:
    listener = ThresholdListener(redis_url, fallback=Thresholds(enter=0.75), poll_s=0.2)
    await listener.start()
    try:
        assert await listener.wait_version(0, 2)
        assert listener.for_stream("cam1") == (Thresholds(enter=0.75), 0)
        store = ThresholdStore(client, fallback=Thresholds(enter=0.75))
        await store.set({"exit": 0.5}, stream="cam1")
        assert await listener.wait_version(1, 5)
        assert listener.for_stream("cam1") == (Thresholds(enter=0.75, exit=0.5), 1)
        scorer = StreamScoring("cam1")
        listener.apply(scorer)
        assert (scorer.thresholds.exit, scorer.config_version) == (0.5, 1)
        # A change whose announcement was lost (written without PUBLISH) is found by the poll.
        await client.hset("dfstream:config", mapping={
            "thresholds:cam1": '{"exit": 0.3}', "version": 2})
        assert await listener.wait_version(2, 5)
        listener.apply(scorer)
        assert (scorer.thresholds.exit, scorer.config_version) == (0.3, 2)
        # Unusable data written by hand is refused; the last good book stays in force.
        await client.hset("dfstream:config", mapping={"thresholds": "{not json", "version": 3})
        await asyncio.sleep(0.6)
        assert listener.book.version == 2
    finally:
        await listener.close()


async def test_listener_without_redis_keeps_the_configured_default() -> None:
    url = f"redis://127.0.0.1:{free_tcp_port()}/0"
    listener = ThresholdListener(url, fallback=Thresholds(enter=0.9), reconnect_base_s=0.05,
                                 reconnect_cap_s=0.1)
    await listener.start()
    await asyncio.sleep(0.3)
    assert listener.for_stream("cam1") == (Thresholds(enter=0.9), 0)
    await listener.close()


async def test_a_change_applies_live_and_its_version_shows_in_the_next_events(
    redis_url: str, client: aioredis.Redis
) -> None:
    """The running loop: listener + scorer + publisher; the change comes from the CLI."""
    sharp = Thresholds(enter=0.8, exit=0.6, min_duration_s=0.0, hold_s=0.0, cooldown_s=0.0,
                       window_s=0.1)
    await ThresholdStore(client).set(sharp.model_dump())
    listener = ThresholdListener(redis_url, fallback=sharp)
    publisher = Publisher(redis_url)
    await listener.start()
    await publisher.start()
    assert await listener.wait_version(1, 5)
    scorer = StreamScoring("cam1")
    publisher.stream_online("cam1", epoch=1)

    async def frames(first: int, n: int, p: float) -> list[Any]:
        results = []
        for seq in range(first, first + n):
            listener.apply(scorer)
            result = scorer.update(seq=seq, pts=seq * 0.2, captured_at=seq * 0.2, now=seq * 0.2,
                                   faces=[FaceScore(1, BOX, 0.9, p)])
            publisher.publish(result)
            results.append(result)
            await asyncio.sleep(0)
        return results

    before = await frames(0, 5, 0.7)
    assert all(not r.events and r.config_version == 1 for r in before)
    cli = await asyncio.to_thread(
        CliRunner().invoke, app,
        ["thresholds", "set", "--stream", "cam1", "--enter", "0.65", "--exit", "0.5", "--json",
         "--redis-url", redis_url],
    )
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.stdout)["version"] == 2
    assert await listener.wait_version(2, 5)
    after = await frames(5, 3, 0.7)
    assert [e.type for e in after[0].events] == ["alert.start"]
    assert after[0].config_version == 2
    assert await publisher.flush(5)
    stored = [orjson.loads(f[b"event"]) for _, f in await client.xrange("dfstream:events")]
    alert = [e for e in stored if e["type"] == "alert.start"]
    assert len(alert) == 1
    assert alert[0]["config_version"] == 2
    assert (alert[0]["thresholds"]["enter"], alert[0]["thresholds"]["exit"]) == (0.65, 0.5)
    await publisher.close()
    await listener.close()


def flat(text: str) -> str:
    """CLI output with the terminal's line wrapping undone."""
    return " ".join(text.split())


def test_seed_stores_the_configured_default_only_once(redis_url: str) -> None:
    async def main() -> None:
        c = aioredis.Redis.from_url(redis_url)
        store = ThresholdStore(c)
        assert await store.seed(Thresholds(enter=0.85))
        assert not await store.seed(Thresholds(enter=0.95))
        assert (await store.get()).default.enter == 0.85
        await c.aclose()

    asyncio.run(main())


def test_cli_get_set_reset_and_errors(redis_url: str) -> None:
    sync = redis.Redis.from_url(redis_url)
    sync.hset("dfstream:streams", "cam1", "{}")
    runner = CliRunner()

    def cli(*args: str) -> Any:
        return runner.invoke(app, ["thresholds", *args, "--redis-url", redis_url])

    got = cli("get", "--json")
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout) == {
        "version": 0, "default": Thresholds().model_dump(), "default_stored": False,
        "streams": {},
    }
    done = cli("set", "--stream", "cam1", "--hold", "4", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {
        "version": 1, "stream": "cam1", "override": {"hold_s": 4.0},
        "thresholds": Thresholds(hold_s=4.0).model_dump(),
    }
    table = cli("get")
    assert table.exit_code == 0
    assert "version 1" in table.stdout and "cam1" in table.stdout and "hold_s" in table.stdout

    refused = cli("set", "--enter", "0.3")
    assert refused.exit_code == 2
    assert "exit (0.6) must not be above enter (0.3)" in flat(refused.output)
    assert "nothing was written" in flat(refused.output)
    unknown = cli("set", "--stream", "nope", "--enter", "0.9")
    assert unknown.exit_code == 2 and "unknown stream 'nope'" in flat(unknown.output)
    assert cli("set").exit_code == 2
    assert sync.hget("dfstream:config", "version") == b"1"

    reset = cli("reset", "--stream", "cam1", "--json")
    assert reset.exit_code == 0 and json.loads(reset.stdout)["override"] == {}
    again = cli("reset", "--stream", "cam1")
    assert again.exit_code == 2 and "has no threshold override" in flat(again.output)
    sync.close()


def test_cli_says_where_redis_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DFSTREAM_REDIS__URL", raising=False)
    runner = CliRunner()
    missing = runner.invoke(app, ["thresholds", "get"])
    assert missing.exit_code == 2 and "no Redis URL" in flat(missing.output)
    url = f"redis://:secret-pw@127.0.0.1:{free_tcp_port()}/0"
    down = runner.invoke(app, ["thresholds", "get", "--redis-url", url])
    assert down.exit_code == 2 and "cannot use Redis at" in flat(down.output)
    assert "secret-pw" not in down.output
    bad = runner.invoke(app, ["thresholds", "get", "--redis-url", "http://x"])
    assert bad.exit_code == 2 and "must start with redis://" in flat(bad.output)

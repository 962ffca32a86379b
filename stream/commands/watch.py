"""``dfstream watch [STREAM]``: a live terminal view of streams, scores and alerts from Redis.

It reads what any subscriber can read: the state hashes for the current picture, and the events
Stream for what happened. The events come through an ``EventFeed``, so after a lost connection
the view resumes from the last event it showed and misses none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Iterator
from typing import Annotated, Any

import orjson
import typer
from redis.exceptions import RedisError
from rich.console import Console, ConsoleOptions, RenderableType
from rich.table import Table
from rich.text import Text

from stream.cli import ConfigOption, app, fail, settings_or_exit
from stream.console import make_console
from stream.redis_contract import RedisKeys, connect, resolve_url
from stream.sources.base import StreamStatus
from stream.sources.urls import redact
from stream.subscribe import EventFeed, StreamEvent

STATE_STYLE = {"alert": "bold white on red", "clear": "green"}
STATUS_STYLE: dict[str, str] = {StreamStatus.ONLINE: "green", StreamStatus.OFFLINE: "dim",
                StreamStatus.RECONNECTING: "yellow", StreamStatus.CONNECTING: "yellow",
                StreamStatus.FAILED: "red"}


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


class WatchView:
    """What the view shows, refreshed from Redis; rendering is separate so it can be tested."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "dfstream:",
        stream: str | None = None,
        history: int = 12,
        socket_timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self.keys = RedisKeys(prefix)
        self.stream = stream
        # The view's header shows a lost feed; log lines would scroll above the table.
        self.feed = EventFeed(url, prefix=prefix, last_id="$", socket_timeout_s=socket_timeout_s,
                              log_losses=False)
        self.events: deque[StreamEvent] = deque(maxlen=history)
        self.states: dict[str, dict[str, str]] = {}
        self.service: dict[str, Any] | None = None
        self.error: str | None = None
        self._history = history
        self._timeout_s = socket_timeout_s
        self._client: Any = None
        self._started = False

    async def refresh(self, block_ms: int = 500) -> None:
        """Read new events (waiting up to ``block_ms`` for one) and the current states."""
        if not self._started:
            # Start from recent history so that the view is not empty at first.
            backlog = await self.feed.latest(self._history * 20 if self.stream else self._history)
            self._started = bool(backlog) or self.feed.connected
            self._add(backlog)
        else:
            self._add(await self.feed.read(block_ms=block_ms))
        await self._read_states()
        self.error = None if self.feed.connected and self._client is not None else (
            self.feed.last_error or self.error
        )

    async def close(self) -> None:
        await self.feed.close()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None

    def _add(self, events: list[StreamEvent]) -> None:
        for item in events:
            if self.stream is None or item.event.get("stream") == self.stream:
                self.events.append(item)

    async def _read_states(self) -> None:
        try:
            if self._client is None:
                self._client = connect(self.url, timeout_s=self._timeout_s)
            client = self._client
            if self.stream is not None:
                keys = [self.keys.state(self.stream)]
            else:
                keys = sorted([_text(k) async for k in client.scan_iter(
                    match=self.keys.state_pattern, count=500)])
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            pipe.get(self.keys.service)
            replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            if self._client is not None:
                with contextlib.suppress(Exception):
                    await self._client.aclose()
            self._client = None
            return
        prefix_len = len(self.keys.state(""))
        self.states = {
            key[prefix_len:]: {_text(k): _text(v) for k, v in fields.items()}
            for key, fields in zip(keys, replies[:-1], strict=True)
            if fields
        }
        raw_service = replies[-1]
        self.service = orjson.loads(raw_service) if raw_service else None

    # ------------------------------------------------------------------ output

    def snapshot(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "streams": self.states,
            "events": [{"id": e.id, **e.event} for e in self.events],
            "last_event_id": self.feed.last_id,
            "error": self.error,
        }

    def render(self, now: float | None = None) -> RenderableType:
        """The view; columns that do not fit the terminal's width are left out."""
        return _Rendered(self, time.time() if now is None else now)


class _Rendered:
    def __init__(self, view: WatchView, now: float) -> None:
        self.view = view
        self.now = now

    def __rich_console__(
        self, console: Console, options: ConsoleOptions
    ) -> Iterator[RenderableType]:
        wide = options.max_width >= 140
        yield self._header()
        yield self._streams_table(wide)
        yield self._events_table(wide)

    def _header(self) -> Text:
        view, header = self.view, Text()
        if view.error:
            shown = "; showing the last data read" if view.states or view.events else ""
            header.append(f"Redis {redact(view.url)} is unreachable ({view.error}); "
                          f"reconnecting{shown}", style="bold yellow")
            if view.service is None:  # whether a service runs cannot be told without Redis
                return header
            header.append("\n")
        service = view.service
        if service is not None:
            age = self.now - float(service.get("renewed_at", self.now))
            header.append(
                f"service {service.get('instance')} on {service.get('host')} "
                f"(v{service.get('version')}), {len(service.get('streams', []))} "
                f"stream(s), seen {age:.0f}s ago",
                style="green",
            )
        else:
            header.append("no service is running (liveness key absent)", style="bold red")
        return header

    def _streams_table(self, wide: bool) -> RenderableType:
        if not self.view.states:
            return Text("streams: no stream state in Redis yet", style="dim")
        table = Table(title="streams", title_justify="left",
                      caption="fps: in/analysed/dropped; cfg: thresholds version; age: since "
                      "the last update", caption_justify="left")
        columns = ["stream", "status", "state", "p_stream", "faces", "fps", "seq", "cfg",
                   "age"] + (["epoch", "alert"] if wide else [])
        for name in columns:
            table.add_column(name, no_wrap=True, justify="left" if name in (
                "stream", "status", "state", "alert") else "right")
        for stream, s in sorted(self.view.states.items()):
            p_stream = _number(s.get("p_stream"))
            faces = json.loads(s["faces"]) if s.get("faces") else []
            fps = "/".join(
                f"{v:.1f}" if (v := _number(s.get(k))) is not None else "-"
                for k in ("fps_in", "fps_analysed", "fps_dropped")
            )
            updated = _number(s.get("updated_at"))
            state = s.get("state", "")
            status = s.get("status", "")
            row: list[RenderableType] = [
                stream,
                Text(status, style=STATUS_STYLE.get(status, "yellow")),
                Text(state, style=STATE_STYLE.get(state, "")),
                f"{p_stream:.3f}" if p_stream is not None else "—",
                str(len(faces)),
                fps,
                s.get("seq", ""),
                s.get("config_version", ""),
                f"{self.now - updated:.1f}s" if updated is not None else "",
            ]
            if wide:
                row += [s.get("epoch", ""), s.get("alert", "")]
            table.add_row(*row)
        return table

    def _events_table(self, wide: bool) -> RenderableType:
        if not self.view.events:
            return Text("latest events: none yet", style="dim")
        table = Table(title="latest events", title_justify="left")
        columns = ["time", "type", "stream", "score", "top", "tracks", "cfg"] + (
            ["event_id", "id"] if wide else [])
        for name in columns:
            table.add_column(name, no_wrap=True)
        for item in reversed(self.view.events):
            e = item.event
            at = e.get("at")
            when = time.strftime("%H:%M:%S", time.localtime(at)) if isinstance(at, int | float) \
                else ""
            kind = str(e.get("type", ""))
            style = "bold red" if kind == "alert.start" else "green" if kind == "alert.end" else ""
            row: list[RenderableType] = [
                when,
                Text(kind, style=style),
                str(e.get("stream", "")),
                _fmt(e.get("score")),
                _fmt(e.get("top_score")),
                ",".join(str(t) for t in e.get("tracks") or []),
                "" if e.get("config_version") is None else str(e["config_version"]),
            ]
            if wide:
                row += [str(e.get("event_id", "")), item.id]
            table.add_row(*row)
        return table


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else ""


@app.command()
def watch(
    stream: Annotated[str | None, typer.Argument(help="Only this stream.",
                                                 show_default=False)] = None,
    redis_url: Annotated[
        str | None,
        typer.Option("--redis-url", envvar="DFSTREAM_REDIS__URL",
                     help="redis://, rediss:// or unix:// URL; default: redis.url of the config.",
                     show_default=False),
    ] = None,
    history: Annotated[int, typer.Option(min=1, max=1000, help="Events shown.")] = 12,
    refresh: Annotated[float, typer.Option(min=0.05, max=60, help="Seconds between "
                                           "redraws.")] = 0.5,
    duration: Annotated[float | None, typer.Option(min=0, help="Stop after this many seconds "
                                                   "(default: until Ctrl-C).",
                                                   show_default=False)] = None,
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="With --once: print JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """Live table of streams, their state and scores, and the latest events, from Redis."""
    settings = settings_or_exit(config)
    url = resolve_url(redis_url, settings.redis.url)
    if json_out and not once:
        raise fail("--json needs --once (the live view is for terminals)")
    view = WatchView(url, prefix=settings.redis.prefix, stream=stream, history=history,
                     socket_timeout_s=settings.redis.socket_timeout_s)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(view, once, json_out, refresh, duration))


async def _run(
    view: WatchView, once: bool, json_out: bool, refresh: float, duration: float | None
) -> None:
    from rich.live import Live

    try:
        if once:
            await view.refresh(block_ms=0)
            if view.error and not view.states and not view.events:
                raise fail(f"cannot read Redis at {redact(view.url)}: {view.error}")
            if json_out:
                typer.echo(json.dumps(view.snapshot(), indent=2))
            else:
                make_console().print(view.render())
            return
        deadline = None if duration is None else time.monotonic() + duration
        block_ms = max(1, int(refresh * 1000))
        console = make_console()
        with Live(view.render(), console=console, refresh_per_second=max(1.0, 1 / refresh),
                  screen=False) as live:
            while deadline is None or time.monotonic() < deadline:
                await view.refresh(block_ms=block_ms)
                live.update(view.render())
        if not console.is_terminal:
            console.line()  # piped, the view is printed once at the end, without a newline
    finally:
        await view.close()

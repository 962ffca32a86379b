"""``dfstream thresholds get|set|reset``: live tuning of the alert thresholds in Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from redis.exceptions import RedisError
from rich.table import Table

from stream.cli import ConfigOption, app, fail, group, settings_or_exit
from stream.config import Settings
from stream.console import make_console
from stream.redis_contract import connect, resolve_url
from stream.sources.urls import redact

thresholds_app = group(
    "Live thresholds: read and change them in Redis; a running service applies a change at its "
    "next frame.",
    no_args_is_help=True,
)
app.add_typer(thresholds_app, name="thresholds")

T = TypeVar("T")

RedisUrlOption = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        envvar="DFSTREAM_REDIS__URL",
        help="redis://[:PASSWORD@]HOST:PORT/DB, rediss:// (TLS) or unix:///PATH?password=...; "
        "default: redis.url of the config.",
        show_default=False,
    ),
]
StreamOption = Annotated[
    str | None,
    typer.Option("--stream", "-s", help="A stream's thresholds instead of the default.",
                 show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

SECONDS = {"min_duration_s", "hold_s", "cooldown_s", "window_s"}


def run_against_redis(
    config: Path | None, redis_url: str | None, work: Callable[[Any, Settings], Awaitable[T]]
) -> T:
    """Run ``work(client, settings)`` with a client for the configured Redis; clear errors."""
    from stream.thresholds import ThresholdError

    settings = settings_or_exit(config)
    url = resolve_url(redis_url, settings.redis.url)

    async def main() -> T:
        client = connect(url, timeout_s=settings.redis.socket_timeout_s)
        try:
            return await work(client, settings)
        finally:
            await client.aclose()

    try:
        return asyncio.run(main())
    except ThresholdError as exc:
        raise fail(f"{exc}; nothing was written") from None
    except (RedisError, OSError) as exc:
        raise fail(f"cannot use Redis at {redact(url)}: {exc}") from None


def _show(book: Any, stream: str | None, json_out: bool, changed: bool = False) -> None:
    from stream.thresholds import FIELDS

    if json_out:
        data = book.to_dict()
        if stream is not None:
            data = {
                "version": book.version,
                "stream": stream,
                "override": dict(book.overrides.get(stream, {})),
                "thresholds": book.for_stream(stream).model_dump(),
            }
        typer.echo(json.dumps(data, indent=2))
        return
    out = make_console()
    origin = "stored in Redis" if book.default_stored else "the configured default (none in Redis)"
    title = f"thresholds, version {book.version}" + (" (changed)" if changed else "")
    table = Table(title=title, caption=f"default: {origin}")
    table.add_column("field")
    table.add_column("default", justify="right")
    streams = [stream] if stream is not None else sorted(book.overrides)
    for name in streams:
        table.add_column(name, justify="right")
    for field_name in FIELDS:
        unit = " s" if field_name in SECONDS else ""
        row = [field_name, _value(getattr(book.default, field_name), unit)]
        for name in streams:
            override = book.overrides.get(name, {})
            value = override.get(field_name)
            row.append(f"[bold]{_value(value, unit)}[/bold]" if value is not None else "·")
        table.add_row(*row)
    out.print(table)
    if streams:
        out.print("[dim]bold: the stream's override; ·: follows the default[/dim]")


def _value(value: object, unit: str) -> str:
    return f"{value:g}{unit}" if isinstance(value, float | int) else str(value)


@thresholds_app.command("get")
def thresholds_get(
    stream: StreamOption = None,
    json_out: JsonOption = False,
    redis_url: RedisUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Show the default thresholds and every per-stream override (or one stream's)."""
    from stream.thresholds import ThresholdStore

    async def work(client: Any, settings: Settings) -> Any:
        store = ThresholdStore.from_settings(client, settings)
        book = await store.get()
        if stream is not None and stream not in book.overrides:
            known = await store.known_streams()
            if stream not in known:
                raise fail(f"unknown stream {stream!r}; known streams: "
                           f"{', '.join(known) or 'none'}")
        return book

    _show(run_against_redis(config, redis_url, work), stream, json_out)


@thresholds_app.command("set")
def thresholds_set(
    stream: StreamOption = None,
    enter: Annotated[float | None, typer.Option(help="p_stream at or above this starts an alert "
                                                "(0..1).", show_default=False)] = None,
    exit_: Annotated[float | None, typer.Option("--exit", help="p_stream below this ends an "
                                                "alert (0..1, <= enter).",
                                                show_default=False)] = None,
    min_duration: Annotated[float | None, typer.Option(help="Seconds above enter before an "
                                                       "alert.", show_default=False)] = None,
    hold: Annotated[float | None, typer.Option(help="Seconds below exit before clearing.",
                                               show_default=False)] = None,
    cooldown: Annotated[float | None, typer.Option(help="Quiet seconds before a new alert.",
                                                   show_default=False)] = None,
    window: Annotated[float | None, typer.Option(help="Rolling window per face track, seconds.",
                                                 show_default=False)] = None,
    rule: Annotated[str | None, typer.Option(help="The alert rule: hysteresis or cusum.",
                                             show_default=False)] = None,
    cusum_prior: Annotated[float | None, typer.Option(help="cusum: the p_fake of zero evidence "
                                                      "(0..1).", show_default=False)] = None,
    cusum_h: Annotated[float | None, typer.Option(help="cusum: S_t at or above this alerts.",
                                                  show_default=False)] = None,
    cusum_exit: Annotated[float | None, typer.Option(help="cusum: S_t below this ends an "
                                                     "alert (<= cusum-h).",
                                                     show_default=False)] = None,
    from_file: Annotated[Path | None, typer.Option(
        "--from", exists=True, dir_okay=False, help="A result of `dfstream eval "
        "--operating-point --json`: apply its rule and parameters (options given as well "
        "override them).", show_default=False)] = None,
    json_out: JsonOption = False,
    redis_url: RedisUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Change thresholds (default, or one stream's with --stream); the running service applies
    them at its next frame. Invalid values are refused and nothing is written."""
    from pydantic import ValidationError

    from stream.thresholds import ThresholdStore, ThresholdUpdate, describe

    requested = {
        "enter": enter, "exit": exit_, "min_duration_s": min_duration, "hold_s": hold,
        "cooldown_s": cooldown, "window_s": window, "rule": rule, "cusum_prior": cusum_prior,
        "cusum_h": cusum_h, "cusum_exit": cusum_exit,
    }
    changes = {**(operating_point(from_file) if from_file else {}),
               **{k: v for k, v in requested.items() if v is not None}}
    if not changes:
        raise fail("nothing to set: give at least one of --enter, --exit, --min-duration, "
                   "--hold, --cooldown, --window, --rule, --cusum-prior, --cusum-h, "
                   "--cusum-exit or --from")

    try:  # each value on its own before Redis is asked (the store checks them together)
        ThresholdUpdate(**changes)
    except ValidationError as exc:
        raise fail(describe(exc, f"stream {stream!r}" if stream else "the defaults")) from None

    async def work(client: Any, settings: Settings) -> Any:
        store = ThresholdStore.from_settings(client, settings)
        return await store.set(changes, stream)

    _show(run_against_redis(config, redis_url, work), stream, json_out, changed=True)


def operating_point(path: Path) -> dict[str, Any]:
    """The thresholds an operating-point result file proposes: ``rule`` and ``parameters``."""
    try:
        data = json.loads(path.read_text())
        changes = {"rule": data["rule"], **data["parameters"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise fail(f"{path} is not an operating-point result ({exc}); write one with `dfstream "
                   "eval PREP --bundle B --operating-point --false-alerts-per-hour X --json > "
                   "FILE`") from None
    return dict(changes)


@thresholds_app.command("reset")
def thresholds_reset(
    stream: Annotated[str, typer.Option("--stream", "-s", help="The stream whose override to "
                                        "remove.")],
    json_out: JsonOption = False,
    redis_url: RedisUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Remove a stream's override so that it follows the default again."""
    from stream.thresholds import ThresholdStore

    async def work(client: Any, settings: Settings) -> Any:
        store = ThresholdStore.from_settings(client, settings)
        return await store.reset(stream)

    _show(run_against_redis(config, redis_url, work), stream, json_out, changed=True)

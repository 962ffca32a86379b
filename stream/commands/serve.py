"""``dfstream serve`` and the ``dfstream streams`` commands that manage a running service."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Annotated, Any

import typer
from rich.table import Table

from stream.cli import ConfigOption, app, console, fail, group, settings_or_exit
from stream.config import Settings, invalid_value
from stream.console import make_console
from stream.sources.urls import check_streams, redact

streams_app = group("Manage the streams of a running service (over its HTTP API).")
app.add_typer(streams_app, name="streams")

log = logging.getLogger("dfstream")


class Redacted(logging.Filter):
    """Masks URL passwords in every record the service logs, whichever module (or library)
    wrote it, so that no log holds a camera's or Redis's password."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        return True


def configure_logging(level: str = "INFO") -> None:
    """Rich log lines on a terminal; plain, timestamped ones in a log file or a pipe."""
    from rich.logging import RichHandler

    handler: logging.Handler
    if console.is_terminal:
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=True)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(Redacted())
    logging.basicConfig(level=level, handlers=[handler], force=True)


def check_bind(settings: Settings) -> None:
    """Beyond loopback the API must have a token: refuse to start an open service."""
    from stream.api import is_loopback

    if not is_loopback(settings.api.host) and not settings.api.token:
        raise fail(
            f"api.host is {settings.api.host!r} (beyond loopback) but api.token is not set: "
            "set DFSTREAM_API__TOKEN or api.token so that requests need a bearer token",
            code=2,
        )


def listen(host: str, port: int) -> socket.socket:
    """Bind the API's socket first, so that a taken port is a clear error before anything
    starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def run_service(settings: Settings) -> None:
    """Serve the API and run the pipeline until SIGINT/SIGTERM, then shut down gracefully."""
    import uvicorn

    from stream.api import create_app, end_live_feeds
    from stream.service import Service

    class GracefulServer(uvicorn.Server):
        """On SIGINT/SIGTERM: live feeds end at once (the shutdown waits for open responses,
        and a dashboard never hangs up by itself), and after the graceful shutdown the process
        exits 0 rather than re-raising the signal as uvicorn does, so that supervisors see a
        clean stop, not a kill."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            end_live_feeds(api_app)
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    class ServiceServer(GracefulServer):
        """Starts the service before uvicorn's own start-up, so that a refusal (no detector, a
        refused stream) ends the command as one line rather than a lifespan traceback."""

        async def _serve(self, sockets: list[socket.socket] | None = None) -> None:
            await service.start()
            log.info("serving http://%s:%d/ (the dashboard; the API docs at /docs)",
                     f"[{host}]" if ":" in host else host, listener.getsockname()[1])
            try:
                await super()._serve(sockets)
            finally:
                await service.close()

    check_bind(settings)
    host = settings.api.host
    listener = listen(host, settings.api.port)
    service = Service(settings)
    api_app = create_app(service, manage_service=False)
    config = uvicorn.Config(api_app, log_config=None, access_log=False,
                            timeout_graceful_shutdown=30)
    with listener:
        ServiceServer(config).run(sockets=[listener])


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Bind address (overrides api.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Bind port (overrides api.port).")] = None,
    allow_untrained: Annotated[bool, typer.Option(
        "--allow-untrained", help="Run with random weights (loudly flagged) when no trained "
        "detector is installed (overrides detector.allow_untrained).")] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Run the service: the HTTP API (docs at /docs), the dashboard at / and the pipeline."""
    settings = settings_or_exit(config, **{
        "api.host": host, "api.port": port, "detector.allow_untrained": allow_untrained or None,
    })
    check_streams(settings)
    configure_logging(log_level.upper())
    run_service(settings)


ApiOption = Annotated[
    str,
    typer.Option("--api", envvar="DFSTREAM_API_URL", help="Base URL of the running service."),
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar="DFSTREAM_API__TOKEN", help="Bearer token of the service."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _request(
    method: str, api: str, path: str, token: str | None, *, names: dict[str, str] | None = None,
    **kwargs: Any,
) -> Any:
    """Call the service's API; a refusal is one line, validation errors as ``config check``
    prints them, with each field under the name the command gives it (``names``)."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(
            method, api.rstrip("/") + path, headers=headers, timeout=30.0, **kwargs
        )
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach the service at {api}: {exc}") from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise fail(f"{_readable(detail, names or {})} ({method} {path}: HTTP "
                   f"{response.status_code})")
    return response.json() if response.content else None


def _readable(detail: Any, names: dict[str, str]) -> str:
    """An API error's detail as text: its validation errors (``stream.api.readable_errors``)
    one after the other, like ``config check``'s."""
    if not isinstance(detail, list):
        return str(detail)
    refused = []
    for error in detail:
        loc = [part for part in error.get("loc", ()) if part != "body"]
        field = ".".join(str(part) for part in loc)
        if field in names:
            loc = [f"{names[field]} ({field})"]
        refused.append(invalid_value(loc, str(error.get("msg")), str(error.get("input"))))
    return "; ".join(refused)


@streams_app.command("list")
def streams_list(
    api: ApiOption = "http://127.0.0.1:8000", token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """The service's streams with their status and latest scores."""
    streams = _request("GET", api, "/api/streams", token)
    if as_json:
        typer.echo(json.dumps(streams, indent=2))
        return
    table = Table("stream", "status", "state", "p_stream", "fps in/analysed", "reconnects", "error")
    for s in streams:
        p = s.get("p_stream")
        table.add_row(
            s["id"], s["status"], s["state"], "-" if p is None else f"{p:.3f}",
            f"{s['fps_in']:.1f}/{s['fps_analysed']:.1f}", str(s["reconnects"]),
            s.get("last_error") or "",
        )
    make_console().print(table)


@streams_app.command("add")
def streams_add(
    stream_id: Annotated[str, typer.Argument(help="Stream id (letters, digits, _ . -).")],
    url: Annotated[str, typer.Argument(help="rtsp://, rtmp://, http(s)://, HLS or a file.")],
    fps: Annotated[float | None, typer.Option(help="Analysis frames per second.")] = None,
    calibration: Annotated[str | None, typer.Option(
        help="A per-stream calibration (`dfstream calibrate-stream --name`).",
        show_default=False)] = None,
    api: ApiOption = "http://127.0.0.1:8000",
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start analysing a stream."""
    body: dict[str, Any] = {"id": stream_id, "url": url}
    if fps is not None:
        body["analysis_fps"] = fps
    if calibration is not None:
        body["calibration"] = calibration
    created = _request("POST", api, "/api/streams", token, json=body, names={
        "id": "STREAM_ID", "url": "URL", "analysis_fps": "--fps", "calibration": "--calibration",
    })
    typer.echo(json.dumps(created, indent=2) if as_json else f"added {stream_id}")


@streams_app.command("remove")
def streams_remove(
    stream_id: Annotated[str, typer.Argument(help="Stream id.")],
    api: ApiOption = "http://127.0.0.1:8000",
    token: TokenOption = None,
) -> None:
    """Stop analysing a stream (an open alert is ended, stream.offline is published)."""
    _request("DELETE", api, f"/api/streams/{stream_id}", token)
    typer.echo(f"removed {stream_id}")



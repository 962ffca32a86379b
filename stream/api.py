"""The HTTP API: streams, thresholds, health, metrics, the dashboard and its live feed.

The app is built around a running ``Service``; it never touches frames itself. Auth is a bearer
token (header, or a cookie set by opening the dashboard with ``?token=``) on every route but
``/healthz``, ``/readyz`` and ``/favicon.ico``; a browser refused it gets a page saying how to get
in, API clients the JSON 401. Request bodies are capped before they are read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stream.config import StreamSpec
from stream.sources.urls import redact
from stream.thresholds import ThresholdError, ThresholdUpdate
from stream.webrtc.routes import PREFIX as WHIP_PREFIX
from stream.webrtc.routes import whip_router

if TYPE_CHECKING:
    from stream.service import Service

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/favicon.ico"})
TOKEN_COOKIE = "dfstream_token"
LIVE_MAX_HZ_PER_STREAM = 4.0
LIVE_KEEPALIVE_S = 15.0
LIVE_RETRY_MS = 3000


MAX_ECHOED_INPUT = 200


def readable_errors(errors: Any) -> list[dict[str, Any]]:
    """Validation errors as JSON that always encodes: where, what is wrong, and the input as an
    ASCII repr (a NaN, an infinity or a lone surrogate there would break the response)."""
    readable = []
    for error in errors:
        shown = ascii(error.get("input"))
        if len(shown) > MAX_ECHOED_INPUT:
            shown = shown[:MAX_ECHOED_INPUT] + "..."
        readable.append({
            "loc": [ascii(part) if isinstance(part, str) and not part.isascii() else part
                    for part in error.get("loc", ())],
            "msg": ascii(str(error.get("msg", "invalid value")))[1:-1],
            "type": error.get("type"),
            "input": shown,
        })
    return readable


def static_text(name: str) -> str:
    return resources.files("stream").joinpath("static", name).read_text()


def wants_html(request: Request) -> bool:
    """A browser opening a page (it asks for text/html); API clients ask for JSON or anything."""
    return request.method in ("GET", "HEAD") and "text/html" in request.headers.get("accept", "")


def is_whip(path: str) -> bool:
    return path == WHIP_PREFIX or path.startswith(WHIP_PREFIX + "/")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BodyLimit:
    """Refuse request bodies above ``limit`` bytes, declared or streamed, with 413."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen = 0
        refused = False

        async def counting_receive() -> Message:
            # An exception raised here would reach the app's body parsing, which reports any
            # error there as 400; so answer 413 first and tell the app the client has gone.
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    refused = True
                    await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:  # after the 413, whatever the app answers is dropped
                await send(message)

        await self.app(scope, counting_receive, guarded_send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": f"request body over {self.limit} bytes"}).encode()
        await send({
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json")],
        })
        await send({"type": "http.response.body", "body": body})


def create_app(service: Service, *, manage_service: bool = True) -> FastAPI:
    """The app over ``service``; with ``manage_service`` it starts and closes the service with
    the server (so SIGTERM to the server is a graceful shutdown of everything)."""
    settings = service.settings
    token = settings.api.token.get_secret_value() if settings.api.token else None

    @contextlib.asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[None]:
        application.state.loop = asyncio.get_running_loop()
        if manage_service:
            await service.start()
        try:
            yield
        finally:
            if manage_service:
                await service.close()

    app = FastAPI(
        title="dfstream",
        version=service.version,
        summary="Streaming deepfake detection: streams, thresholds, health and metrics.",
        lifespan=lifespan,
    )
    app.state.loop = None
    app.state.closing = asyncio.Event()
    app.add_middleware(BodyLimit, limit=settings.api.max_body_bytes)

    @app.exception_handler(RedisError)
    async def redis_unreachable(_request: Request, exc: RedisError) -> JSONResponse:
        return JSONResponse(
            {"detail": f"Redis is unreachable, try again: {redact(str(exc))}"}, status_code=503
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": readable_errors(exc.errors())}, status_code=422)

    @app.middleware("http")
    async def bearer_auth(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if token is None or request.url.path in OPEN_PATHS or is_whip(request.url.path):
            return await call_next(request)
        supplied = request.cookies.get(TOKEN_COOKIE)
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            supplied = header[7:].strip()
        if request.url.path == "/" and request.query_params.get("token"):
            supplied = request.query_params["token"]
        # As bytes: compare_digest refuses str with non-ASCII characters (a 500, not a 401).
        if supplied is None or not hmac.compare_digest(
            supplied.encode("utf-8", "replace"), token.encode()
        ):
            if wants_html(request):  # a person: say how to get in (the /?token= link)
                return HTMLResponse(
                    static_text("unauthorized.html"), status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            return JSONResponse(
                {"detail": "missing or wrong bearer token"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await call_next(request)

    if settings.webrtc.enabled:
        # WHIP checks its own bearer tokens (the API's, or a stream's publish token).
        app.include_router(
            whip_router(lambda: service.whip, settings.webrtc, token, service.metrics)
        )

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up and serving requests."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """Engines loaded and warmed up, Redis reachable."""
        checks = await service.readiness()
        ready = all(ok for ok, _ in checks.values())
        body = {
            "ready": ready,
            "checks": {name: {"ok": ok, "detail": detail} for name, (ok, detail) in checks.items()},
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"])
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/info", tags=["service"])
    async def info() -> dict[str, Any]:
        """Version, detector (trained or not, calibration), face detector and Redis prefix."""
        return service.info()

    @app.get("/api/streams", tags=["streams"])
    async def list_streams() -> list[dict[str, Any]]:
        return service.list_streams()

    @app.post("/api/streams", status_code=201, tags=["streams"])
    async def add_stream(spec: StreamSpec) -> dict[str, Any]:
        """Start analysing a stream (the fields of a configured stream: id, url, ...). The URL
        must use an allowed scheme."""
        try:
            return await service.add_stream(spec)
        except KeyError as exc:
            raise HTTPException(409, detail=str(exc.args[0])) from None
        except ValueError as exc:
            raise HTTPException(422, detail=str(exc)) from None

    @app.get("/api/streams/{stream_id}", tags=["streams"])
    async def get_stream(stream_id: str) -> dict[str, Any]:
        found = service.get_stream(stream_id)
        if found is None:
            raise HTTPException(404, detail=f"no stream {stream_id!r}")
        return found

    @app.get("/api/streams/{stream_id}/history", tags=["streams"])
    async def stream_history(stream_id: str) -> dict[str, Any]:
        """The stream's last two minutes of scores, oldest first: ``points`` of ``at`` (the
        service's clock, as ``now``), ``p_stream`` (null: no face) and ``state``. Kept in this
        process's memory only (live scores on Redis are Pub/Sub, which keeps nothing)."""
        found = service.history(stream_id)
        if found is None:
            raise HTTPException(404, detail=f"no stream {stream_id!r}")
        return found

    @app.delete("/api/streams/{stream_id}", status_code=204, tags=["streams"])
    async def remove_stream(stream_id: str) -> Response:
        if await service.remove_stream(stream_id) is None:
            raise HTTPException(404, detail=f"no stream {stream_id!r}")
        return Response(status_code=204)

    @app.get("/api/thresholds", tags=["thresholds"])
    async def get_thresholds(stream: str | None = None) -> dict[str, Any]:
        """The thresholds in force (per-stream overrides over the defaults) and their version."""
        try:
            return await service.get_thresholds(stream)
        except ThresholdError as exc:
            raise HTTPException(404 if exc.unknown_stream else 422, detail=str(exc)) from None

    @app.put("/api/thresholds", tags=["thresholds"])
    async def set_thresholds(update: ThresholdUpdate, stream: str | None = None) -> dict[str, Any]:
        """Change thresholds live; every stream applies them at its next frame."""
        try:
            return await service.set_thresholds(update, stream)
        except ThresholdError as exc:
            raise HTTPException(404 if exc.unknown_stream else 422, detail=str(exc)) from None

    @app.get("/api/events", tags=["events"])
    async def recent_events(
        count: int = Query(50, ge=1, le=1000), stream: str | None = None
    ) -> list[dict[str, Any]]:
        """The latest events, newest first (the durable Redis Stream, not the live channel)."""
        return await service.recent_events(count, stream)

    @app.get("/api/evidence/{event_id}", tags=["events"])
    async def evidence(event_id: str) -> Response:
        """The JPEG of the face crop at an alert's peak, while its TTL lasts."""
        jpeg = await service.evidence(event_id)
        if jpeg is None:
            raise HTTPException(404, detail=f"no evidence for {event_id!r} (expired or unknown)")
        return Response(jpeg, media_type="image/jpeg")

    @app.get("/api/heatmap/{event_id}", tags=["events"])
    async def heatmap(event_id: str) -> Response:
        """That crop with a heatmap of where the detector looks overlaid (red: most support for
        fake), while its TTL lasts; computed shortly after the evidence, for alerts only."""
        jpeg = await service.heatmap(event_id)
        if jpeg is None:
            raise HTTPException(
                404,
                detail=f"no heatmap for {event_id!r} (not computed yet, expired, unknown, or "
                "scoring.heatmap is off)",
            )
        return Response(jpeg, media_type="image/jpeg")

    @app.get("/api/live", tags=["events"])
    async def live(request: Request) -> StreamingResponse:
        """Server-sent events: live scores (at most a few per second per stream) and events."""
        return StreamingResponse(
            _live_feed(service, request, app.state.closing), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/", include_in_schema=False)
    async def dashboard(request: Request) -> Response:
        if token is not None and request.query_params.get("token"):
            response: Response = RedirectResponse("/", status_code=303)
            response.set_cookie(
                TOKEN_COOKIE, request.query_params["token"], httponly=True, samesite="strict"
            )
            return response
        return HTMLResponse(static_text("dashboard.html"))

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        """The pages declare their icon inline; this is for the browser's own request (on a
        JSON page, say), so that it finds one rather than a 404. Open, like /healthz."""
        return Response(
            static_text("favicon.svg"), media_type="image/svg+xml",
            headers={"Cache-Control": "max-age=86400"},
        )

    return app


def end_live_feeds(app: FastAPI) -> None:
    """End the open live feeds; safe from a signal handler or any thread. A graceful shutdown
    waits for open responses, and a dashboard's feed never ends by itself."""
    loop: asyncio.AbstractEventLoop | None = app.state.loop
    if loop is not None and not loop.is_closed():
        loop.call_soon_threadsafe(app.state.closing.set)


async def _next(messages: AsyncIterator[tuple[str, dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    return await anext(messages)


async def _live_feed(
    service: Service, request: Request, closing: asyncio.Event
) -> AsyncIterator[bytes]:
    last_sent: dict[str, float] = {}
    yield b": connected\n\n"
    try:
        async with service.subscribe_live() as messages:
            # One read stays pending across keep-alives: cancelling a read would close the
            # subscription's generator, and with it the feed.
            reading = asyncio.ensure_future(_next(messages))
            ended = asyncio.ensure_future(closing.wait())
            try:
                while not await request.is_disconnected():
                    done, _ = await asyncio.wait(
                        {reading, ended}, timeout=LIVE_KEEPALIVE_S,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if ended in done:
                        return
                    if reading not in done:
                        yield b": keep-alive\n\n"
                        continue
                    try:
                        kind, payload = reading.result()
                    except StopAsyncIteration:
                        return
                    reading = asyncio.ensure_future(_next(messages))
                    if kind == "score":
                        stream_id = str(payload.get("stream", ""))
                        now = time.monotonic()
                        if now - last_sent.get(stream_id, 0.0) < 1.0 / LIVE_MAX_HZ_PER_STREAM:
                            continue
                        last_sent[stream_id] = now
                    yield f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()
            finally:
                reading.cancel()
                ended.cancel()
    except (RedisError, OSError) as exc:
        # Say why and end the feed cleanly; the browser's EventSource comes back after `retry`.
        detail = json.dumps({"detail": f"Redis is unreachable: {redact(str(exc))}"})
        yield f"retry: {LIVE_RETRY_MS}\nevent: unavailable\ndata: {detail}\n\n".encode()

"""The WHIP endpoint (RFC 9725) on the service's API: ``POST /whip/{stream}`` and its session.

Statuses: 201 with the SDP answer, ``Location``, a strong ``ETag`` and the ICE servers as
``Link`` headers; 401 without the bearer token; 415 for another content type; 400 for a body
that is not SDP; 422 for SDP the service cannot take; 409 for a stream id already analysed;
503 with ``Retry-After`` at capacity. On the session: PATCH adds trickled candidates (204;
428 without ``If-Match``, 412 for a stale one, 422 for an ICE restart), DELETE ends it, GET
answers 204. OPTIONS answers CORS preflights without a token (a preflight cannot carry one).
"""

from __future__ import annotations

import functools
import hmac
import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from stream.config import STREAM_ID_PATTERN, WebRTCSettings
from stream.metrics import ServiceMetrics
from stream.webrtc import rtc
from stream.webrtc.offer import OfferError, check_offer, parse_fragment
from stream.webrtc.sessions import WhipError, WhipSessions

SDP = "application/sdp"
SDP_FRAGMENT = "application/trickle-ice-sdpfrag"
PREFIX = "/whip"
ALLOW_METHODS = "POST, PATCH, DELETE, GET, OPTIONS"
EXPOSED = "Location, ETag, Link, Accept-Post, Retry-After"
Handler = Callable[..., Awaitable[Response]]


def whip_router(
    sessions: Callable[[], WhipSessions | None],
    settings: WebRTCSettings,
    api_token: str | None,
    metrics: ServiceMetrics,
) -> APIRouter:
    """The WHIP routes; ``sessions`` gives the running service's sessions (None: starting)."""
    router = APIRouter(prefix=PREFIX, tags=["whip"])

    def refuse(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
        metrics.whip_refused.labels(str(status)).inc()
        return JSONResponse({"detail": detail}, status_code=status,
                            headers={**cors(), **(headers or {})})

    def answering_refusals(handler: Handler) -> Handler:
        """Every refusal a route raises (its gate, the offer, the sessions) as its response."""
        @functools.wraps(handler)
        async def route(*args: Any, **kwargs: Any) -> Response:
            try:
                return await handler(*args, **kwargs)
            except OfferError as exc:
                return refuse(exc.status, exc.detail)
            except WhipError as exc:
                return refuse(exc.status, exc.detail, exc.headers)
        return route

    def authorised(request: Request, stream_id: str) -> bool:
        own = settings.publish_tokens.get(stream_id)
        tokens = [t for t in (api_token, own.get_secret_value() if own else None) if t]
        if not tokens:
            return True
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            return False
        supplied = header[7:].strip().encode("utf-8", "replace")
        # Every token compared, each in constant time: the answer does not say which matched.
        return sum(hmac.compare_digest(supplied, t.encode()) for t in tokens) > 0

    def gate(request: Request, stream_id: str, content_type: str | None) -> WhipSessions:
        """The running sessions, once the request may reach them; else WhipError."""
        if not authorised(request, stream_id):
            raise WhipError(401, "missing or wrong bearer token",
                            {"WWW-Authenticate": 'Bearer realm="whip"'})
        if not re.match(STREAM_ID_PATTERN, stream_id):
            raise WhipError(400, f"stream id {stream_id!r} must match {STREAM_ID_PATTERN}")
        if content_type is not None:
            given = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if given != content_type:
                raise WhipError(415, f"Content-Type must be {content_type} (got "
                                     f"{given or 'none'})", {"Accept-Post": SDP})
        found = sessions()
        if found is None:
            raise WhipError(503, "the service is starting; try again", {"Retry-After": "2"})
        return found

    @router.options("/{stream_id}")
    @router.options("/{stream_id}/{session_id}")
    async def preflight(stream_id: str, session_id: str | None = None) -> Response:
        return Response(status_code=204, headers={
            **cors(), "Accept-Post": SDP, "Allow": ALLOW_METHODS,
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
            "Access-Control-Max-Age": "600",
        })

    @router.post("/{stream_id}", status_code=201)
    @answering_refusals
    async def publish(stream_id: str, request: Request) -> Response:
        found = gate(request, stream_id, SDP)
        try:
            text = (await request.body()).decode("utf-8")
        except UnicodeDecodeError:
            raise WhipError(400, "the body is not UTF-8 text, so not an SDP offer") from None
        session, answer = await found.publish(stream_id, check_offer(text))
        headers = {**cors(), "Location": f"{PREFIX}/{stream_id}/{session.id}",
                   "ETag": session.etag}
        response = Response(answer, status_code=201, media_type=SDP, headers=headers)
        for link in rtc.link_headers(settings):
            response.headers.append("Link", link)
        return response

    @router.patch("/{stream_id}/{session_id}")
    @answering_refusals
    async def trickle(stream_id: str, session_id: str, request: Request) -> Response:
        found = gate(request, stream_id, SDP_FRAGMENT)
        session = found.get(session_id, stream_id)
        match = request.headers.get("if-match")
        if match is None:
            raise WhipError(428, "If-Match with the session's ETag is required")
        if match.strip() not in ("*", session.etag):
            raise WhipError(412, "stale ETag: the session has another ICE state")
        fragment = parse_fragment((await request.body()).decode("utf-8", "replace"))
        await found.trickle(session, fragment)
        return Response(status_code=204, headers={**cors(), "ETag": session.etag})

    @router.get("/{stream_id}/{session_id}")
    @answering_refusals
    async def session_exists(stream_id: str, session_id: str, request: Request) -> Response:
        session = gate(request, stream_id, None).get(session_id, stream_id)
        return Response(status_code=204, headers={**cors(), "ETag": session.etag})

    @router.delete("/{stream_id}/{session_id}")
    @answering_refusals
    async def end(stream_id: str, session_id: str, request: Request) -> Response:
        found = gate(request, stream_id, None)
        session = found.get(session_id, stream_id)
        await found.end(session.id, "the publisher ended the session")
        return Response(status_code=200, headers=cors())

    return router


def cors() -> dict[str, str]:
    """A browser page on another origin may publish: the token, not the origin, is the gate."""
    return {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": EXPOSED}

"""WHIP sessions: one peer connection per publisher, each feeding one stream of the service.

A session is made from a checked offer (``offer.py``), answers with every candidate gathered
(no server trickle), and adds its stream to the service like any other stream, with a
``WebRTCSource``. It ends when the publisher deletes it, when the peer connection fails or
closes (ICE consent freshness lapsing included), or when no video frame came for
``session_timeout_s``; ending it takes the stream offline (its events closed) and frees the id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import SessionDescription

from stream.config import IngestSettings, StreamSpec, WebRTCSettings
from stream.metrics import ServiceMetrics
from stream.sources.base import FrameCallback, FrameSource
from stream.webrtc import rtc
from stream.webrtc.offer import Fragment, Offer, OfferError
from stream.webrtc.source import WebRTCSource

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.5
RETRY_AFTER_S = 5


class WhipError(Exception):
    """A WHIP request refused: the HTTP status, the reason, and headers to send with it."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


class StreamHost(Protocol):
    """What sessions need of the service: streams added with a ready source, and removed."""

    async def add_stream(
        self, spec: StreamSpec, source: FrameSource | None = None
    ) -> dict[str, Any]: ...

    async def remove_stream(
        self, stream_id: str, *, reason: str = "removed", forget: bool | None = None
    ) -> dict[str, Any] | None: ...

    def has_stream(self, stream_id: str) -> bool: ...


@dataclass
class WhipSession:
    id: str
    stream_id: str
    pc: RTCPeerConnection
    source: WebRTCSource
    offer: Offer
    etag: str
    started_at: float = field(default_factory=time.time)
    ending: bool = False


class WhipSessions:
    """Every WHIP session of one service; see the module docstring."""

    def __init__(
        self,
        host: StreamHost,
        settings: WebRTCSettings,
        ingest: IngestSettings,
        on_frame: FrameCallback,
        metrics: ServiceMetrics,
    ) -> None:
        rtc.configure(settings)
        self.metrics = metrics
        self.host = host
        self.settings = settings
        self.ingest = ingest
        self.on_frame = on_frame
        self._sessions: dict[str, WhipSession] = {}
        self._by_stream: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._watch_task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str, stream_id: str) -> WhipSession:
        session = self._sessions.get(session_id)
        if session is None or session.stream_id != stream_id:
            raise WhipError(404, f"no WHIP session {session_id!r} for stream {stream_id!r}")
        return session

    async def publish(self, stream_id: str, offer: Offer) -> tuple[WhipSession, str]:
        """A new session for ``stream_id`` and its SDP answer."""
        async with self._lock:
            if stream_id in self._by_stream or self.host.has_stream(stream_id):
                raise WhipError(409, f"stream {stream_id!r} is already being analysed: end "
                                     "its session (DELETE) or pick another id")
            if len(self._sessions) >= self.settings.max_sessions:
                raise WhipError(
                    503, f"at capacity ({self.settings.max_sessions} WHIP sessions); "
                         f"try again later", {"Retry-After": str(RETRY_AFTER_S)})
            session_id = secrets.token_urlsafe(24)
            source = WebRTCSource(
                stream_id, analysis_fps=self.ingest.analysis_fps, on_frame=self.on_frame,
                description=f"whip:{stream_id}",
            )
            pc = RTCPeerConnection(rtc.rtc_configuration(self.settings))
            session = WhipSession(session_id, stream_id, pc, source, offer,
                                  etag=f'"{secrets.token_hex(12)}"')
            try:
                answer = await self._negotiate(session)
                await self.host.add_stream(
                    StreamSpec(id=stream_id, url=f"whip:{stream_id}"), source=source
                )
            except OfferError as exc:
                await pc.close()
                raise WhipError(exc.status, exc.detail) from None
            except Exception:
                await pc.close()
                raise
            self._sessions[session_id] = session
            self._by_stream[stream_id] = session_id
            self.metrics.whip_sessions.set(len(self._sessions))
            self._ensure_watching()
        log.info("WHIP session for stream %s started", stream_id)
        return session, answer

    async def _negotiate(self, session: WhipSession) -> str:
        pc, source = session.pc, session.source

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video":
                source.attach(track)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.end(session.id, f"peer connection {pc.connectionState}")

        try:
            await pc.setRemoteDescription(RTCSessionDescription(session.offer.sdp, "offer"))
        except Exception as exc:  # aiortc names what it could not take
            raise OfferError(422, f"the offer cannot be answered: {exc}") from None
        for transceiver in pc.getTransceivers():
            # Audio is accepted and never asked for; video is received only.
            transceiver.direction = "recvonly" if transceiver.kind == "video" else "inactive"
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)  # gathers every candidate first
        sdp = pc.localDescription.sdp
        source.set_codec(answered_video_codec(sdp))
        source.start()
        return sdp

    async def trickle(self, session: WhipSession, fragment: Fragment) -> None:
        """Add a publisher's late candidates; an ICE restart is refused (aiortc has none)."""
        offer = session.offer
        if (fragment.ice_ufrag is not None and fragment.ice_ufrag != offer.ice_ufrag) or (
            fragment.ice_pwd is not None and fragment.ice_pwd != offer.ice_pwd
        ):
            raise WhipError(422, "ICE restart is not supported: end this session (DELETE) "
                                 "and publish again")
        for candidate in fragment.candidates:
            await session.pc.addIceCandidate(candidate)
        if fragment.end_of_candidates:
            await session.pc.addIceCandidate(None)

    async def end(self, session_id: str, reason: str) -> bool:
        """End a session: its stream offline and forgotten, its peer connection closed."""
        session = self._sessions.get(session_id)
        if session is None or session.ending:
            return False
        session.ending = True
        session.source.end(reason)
        with contextlib.suppress(Exception):
            await self.host.remove_stream(session.stream_id, reason=reason, forget=True)
        self._sessions.pop(session_id, None)
        self._by_stream.pop(session.stream_id, None)
        self.metrics.whip_sessions.set(len(self._sessions))
        with contextlib.suppress(Exception):
            await session.pc.close()
        log.info("WHIP session for stream %s ended: %s", session.stream_id, reason)
        return True

    async def close(self) -> None:
        """End every session (service shutdown)."""
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        for session_id in list(self._sessions):
            await self.end(session_id, "service shutting down")

    def _ensure_watching(self) -> None:
        if self._watch_task is None or self._watch_task.done():
            self._watch_task = asyncio.get_running_loop().create_task(
                self._watch(), name="whip-liveness")

    async def _watch(self) -> None:
        """End sessions whose publisher is gone (no frame for ``session_timeout_s``) or whose
        stream was removed through the API."""
        timeout = self.settings.session_timeout_s
        while self._sessions:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = time.monotonic()
            for session in list(self._sessions.values()):
                quiet = session.source.quiet_s(now)
                if not self.host.has_stream(session.stream_id):
                    await self._end_logged(session, "the stream was removed")
                elif quiet >= timeout:
                    await self._end_logged(session, f"no video from the publisher for "
                                                    f"{quiet:.0f} s (session timeout)")

    async def _end_logged(self, session: WhipSession, reason: str) -> None:
        try:
            await self.end(session.id, reason)
        except Exception:  # one session's failure to end must not stop the watch
            log.exception("ending WHIP session of %s failed", session.stream_id)


def answered_video_codec(answer: str) -> str:
    """The video codec the answer settled on (its first), e.g. ``vp8`` or ``h264``."""
    video = next(m for m in SessionDescription.parse(answer).media if m.kind == "video")
    return video.rtp.codecs[0].name.lower() if video.rtp.codecs else "unknown"

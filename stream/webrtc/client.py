"""A WHIP publisher (aiortc): sends a looping video of the sample face to a WHIP endpoint.

Used by ``dfstream bench whip`` and the tests to publish as a video-call bridge would. The
track records when each frame left for the encoder, so that a score can be traced back to the
moment its frame was sent (``sent_at``).
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Sequence

import av
import httpx
import numpy as np
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from stream.samples import face_frames

VIDEO_CLOCK = 90_000


class LoopingTrack(MediaStreamTrack):
    """Frames of the moving face at ``fps``, looped; pts on the 90 kHz clock from 0."""

    kind = "video"

    def __init__(self, width: int = 640, height: int = 480, fps: int = 15,
                 seconds: float = 4.0, pictures: Sequence[np.ndarray] | None = None) -> None:
        super().__init__()
        self.fps = fps
        self.pictures = list(pictures) if pictures is not None else [
            rgb for rgb, _ in face_frames(width, height, max(1, round(seconds * fps)))
        ]
        self.sent_at: dict[int, float] = {}
        """Frame index -> wall-clock time it was handed to the encoder."""
        self._index = 0
        self._began: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self._began is None:
            self._began = time.monotonic()
        due = self._began + self._index / self.fps
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        picture = self.pictures[self._index % len(self.pictures)]
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
        frame.pts = round(self._index * VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.sent_at[self._index] = time.time()
        self._index += 1
        return frame

    def index_of(self, media_time_s: float) -> int:
        """The frame index a receiver's media time (seconds from the first frame) stands for."""
        return round(media_time_s * self.fps)


class WhipPublisher:
    """One WHIP session: offer (all candidates gathered), POST, answer; ``close`` DELETEs it."""

    def __init__(self, endpoint: str, track: LoopingTrack, *, token: str | None = None,
                 codec: str | None = None) -> None:
        self.endpoint = endpoint
        self.track = track
        self.token = token
        self.codec = codec
        self.pc = RTCPeerConnection()
        self.location: str | None = None
        self.etag: str | None = None

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def start(self, timeout_s: float = 30.0) -> None:
        transceiver = self.pc.addTransceiver(self.track, direction="sendonly")
        if self.codec is not None:
            wanted = f"video/{self.codec}".lower()
            transceiver.setCodecPreferences([
                c for c in RTCRtpSender.getCapabilities("video").codecs
                if c.mimeType.lower() == wanted
            ])
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.post(
                self.endpoint, content=self.pc.localDescription.sdp,
                headers=self._headers("application/sdp"),
            )
        if response.status_code != 201:
            await self.pc.close()
            raise RuntimeError(f"WHIP POST answered {response.status_code}: {response.text}")
        self.location = str(httpx.URL(self.endpoint).join(response.headers["location"]))
        self.etag = response.headers.get("etag")
        await self.pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))

    async def close(self) -> int | None:
        """End the session (DELETE) and the peer connection; the DELETE's status."""
        status = None
        if self.location is not None:
            async with httpx.AsyncClient(timeout=10.0) as client:
                status = (await client.delete(self.location, headers=self._headers())).status_code
            self.location = None
        await self.pc.close()
        return status

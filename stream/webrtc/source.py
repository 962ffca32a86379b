"""A frame source fed by a WebRTC video track: what a WHIP publisher sends, as ``Frame``s.

aiortc decodes on its own receiver thread and hands frames to the event loop. This source
subscribes to the track through an unbuffered relay (the track's own queue is unbounded, and
a queue of decoded video is latency), and a task on the loop moves each frame into the same
latest-frame mailbox and fps cap as a PyAV source, with the same counters. The session that
owns the peer connection (``sessions.py``) decides when the stream ends; this source says
when the last frame came, so that a publisher that vanished can be noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

import av
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from stream.sources.base import DropCause, Frame, FrameCallback, SourceStats, SourceStatus
from stream.sources.mailbox import LatestFrameMailbox
from stream.sources.rates import RateMeter
from stream.sources.sampling import FpsCap

log = logging.getLogger(__name__)

RTP_TIMESTAMP_WRAP = 1 << 32


class WebRTCSource:
    """A ``FrameSource`` over one remote video track; see the module docstring.

    Frame times start at 0 with the first frame received (RTP timestamps start at a random
    value) and run on the publisher's media clock.
    """

    def __init__(
        self,
        stream_id: str,
        *,
        analysis_fps: float,
        on_frame: FrameCallback | None = None,
        description: str = "webrtc",
    ) -> None:
        self.stream_id = stream_id
        self.description = description
        self._on_frame = on_frame
        self._mailbox = LatestFrameMailbox()
        self._cap = FpsCap(analysis_fps)
        self._relay = MediaRelay()
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Guarded by _lock.
        self._status = SourceStatus.STOPPED
        self._last_error: str | None = None
        self._created = time.monotonic()
        self._last_frame: float | None = None
        self._first_raw: int | None = None
        self._last_raw = 0
        self._unwrapped = 0
        self._last_t = 0.0
        self._seq = 0
        self._frames_in = 0
        self._frames_delivered = 0
        self._fps_cap_drops = 0
        self._in_rate = RateMeter()
        self._out_rate = RateMeter()
        self._width = 0
        self._height = 0
        self._codec: str | None = None

    # -- fed by the session ------------------------------------------------------------------

    def attach(self, track: MediaStreamTrack, codec: str | None = None) -> None:
        """Start moving frames from ``track`` (call on the event loop)."""
        self._loop = asyncio.get_running_loop()
        self._codec = codec
        proxy = self._relay.subscribe(track, buffered=False)
        self._task = self._loop.create_task(self._pump(proxy), name=f"webrtc-{self.stream_id}")

    def set_codec(self, codec: str) -> None:
        with self._lock:
            self._codec = codec

    def quiet_s(self, now: float) -> float:
        """Seconds since the last frame arrived (or since the source was made, before one)."""
        with self._lock:
            return now - (self._last_frame if self._last_frame is not None else self._created)

    def end(self, reason: str, *, failed: bool = False) -> None:
        """The session is over: say why in the status (the service then removes the stream)."""
        with self._lock:
            self._status = SourceStatus.FAILED if failed else SourceStatus.STOPPED
            self._last_error = reason

    async def _pump(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if isinstance(frame, av.VideoFrame):
                    self._arrived(frame)
        except MediaStreamError:
            with self._lock:
                if self._status is not SourceStatus.FAILED:
                    self._status = SourceStatus.STOPPED
                    self._last_error = self._last_error or "the publisher's video track ended"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must end this stream, not the service
            log.exception("stream %s: WebRTC frame pump failed", self.stream_id)
            self.end(f"frame pump failed: {exc}", failed=True)
        finally:
            track.stop()

    def _arrived(self, frame: av.VideoFrame) -> None:
        now = time.monotonic()
        with self._lock:
            if self._status is SourceStatus.STOPPED or self._status is SourceStatus.FAILED:
                return
            self._frames_in += 1
            self._in_rate.mark(now)
            self._last_frame = now
            self._status = SourceStatus.LIVE
            self._width, self._height = frame.width, frame.height
            t = self._media_time(frame)
            if not self._cap.admit(t):
                self._fps_cap_drops += 1
                return
            self._seq += 1
            item = Frame(self.stream_id, self._seq, t, time.time(), av_frame=frame)
            self._frames_delivered += 1
            self._mailbox.put(item)
        if self._on_frame is not None:
            try:
                self._on_frame()
            except Exception:  # a consumer's bug must not stop the pump
                log.exception("on_frame callback of %s failed", self.stream_id)

    def _media_time(self, frame: av.VideoFrame) -> float:
        # Called with _lock held. RTP timestamps are 32-bit and wrap (every 13 h at 90 kHz).
        raw = frame.pts
        time_base = frame.time_base
        if raw is None or time_base is None:  # aiortc always sets both; be safe all the same
            self._last_t += 1 / 30
            return self._last_t
        if self._first_raw is None:
            self._first_raw = self._last_raw = raw
        step = (raw - self._last_raw) % RTP_TIMESTAMP_WRAP
        if step < RTP_TIMESTAMP_WRAP // 2:  # forwards; a late frame keeps the clock
            self._unwrapped += step
            self._last_raw = raw
        self._last_t = float(self._unwrapped * time_base)
        return self._last_t

    # -- FrameSource -------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._status is SourceStatus.STOPPED and self._last_error is None:
                self._status = SourceStatus.CONNECTING
        self._mailbox.reopen()

    def stop(self) -> None:
        """Stop taking frames (thread-safe: the service calls it from a worker thread)."""
        with self._lock:
            if self._status is not SourceStatus.FAILED:
                self._status = SourceStatus.STOPPED
        self._mailbox.close()
        task, loop = self._task, self._loop
        if task is not None and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is already shutting down
                loop.call_soon_threadsafe(task.cancel)

    def take(self) -> Frame | None:
        frame = self._mailbox.take()
        if frame is not None:
            with self._lock:
                self._out_rate.mark()
        return frame

    def stats(self) -> SourceStats:
        now = time.monotonic()
        with self._lock:
            dropped = {cause.value: 0 for cause in DropCause}
            dropped[DropCause.FPS_CAP.value] = self._fps_cap_drops
            dropped[DropCause.SUPERSEDED.value] = self._mailbox.superseded
            return SourceStats(
                stream_id=self.stream_id,
                status=self._status,
                url=self.description,
                frames_in=self._frames_in,
                frames_decoded=self._frames_in,
                frames_delivered=self._frames_delivered,
                frames_taken=self._mailbox.taken,
                dropped=dropped,
                last_error=self._last_error,
                fps_in=self._in_rate.rate(now),
                fps_out=self._out_rate.rate(now),
                width=self._width,
                height=self._height,
                codec=self._codec,
            )

"""One decode session of a PyAV source: an open input demuxed, planned, decoded, sampled and
delivered, on the source's reader thread.

The session reports through a narrow ``SessionSink`` (what was opened, counted, decoded,
delivered) instead of reaching into its source, so the supervisor (``pyav.py``: lifecycle,
reconnects, status, watchdog) and the decode loop can be read, and changed, apart.
"""

from __future__ import annotations

import time
from enum import Enum
from fractions import Fraction
from typing import TYPE_CHECKING, Protocol

import av

from stream.config import IngestSettings
from stream.sources.base import DropCause
from stream.sources.decodeplan import PLANNED_CODECS, DecodePlanner, NalUnits
from stream.sources.failures import SourceFailure
from stream.sources.orientation import Orientation
from stream.sources.sampling import FpsCap, MediaClock
from stream.sources.urls import redact

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.codeccontext import VideoCodecContext
    from av.video.stream import VideoStream

MAX_DECODE_ERRORS_IN_A_ROW = 100
"""More undecodable packets in a row than this and the stream counts as broken."""

DECODE_THREAD_TYPE = "SLICE"
"""Decoders never use frame threads: with PyAV's FFmpeg log callback on (set process-wide by
the PyAV source), a frame-threaded decoder can deadlock when its context is freed while its
workers wait for the GIL to log (PyAV issues #751 and #909)."""


class End(Enum):
    EOF = "eof"
    ABANDONED = "abandoned"


class SessionSink(Protocol):
    """What a session tells its source. Every call returning bool answers "go on?": False
    means the source no longer wants this session (stopped, or replaced by the watchdog)."""

    def wanted(self) -> bool: ...

    def opened(self, codec: str, width: int, height: int, skipping_nonref: bool) -> bool: ...

    def packet_in(self, now: float) -> None: ...

    def count(self, cause: DropCause, n: int = 1) -> None: ...

    def decode_error(self) -> None: ...

    def resized(self, width: int, height: int) -> None: ...

    def stopped_skipping_nonref(self) -> None: ...

    def decoded(self, now: float, t: float) -> bool | None:
        """A frame decoded at media time ``t``: True admitted by the fps cap, False dropped
        over it (counted), None abandoned."""
        ...

    def pace(self, t: float) -> bool:
        """Wait until media time ``t`` is due (live replay of a file)."""
        ...

    def wait_for_room(self) -> bool:
        """Wait until the mailbox is free (lossless reading of a file)."""
        ...

    def deliver(
        self, frame: av.VideoFrame, t: float, decode_s: float, orientation: Orientation
    ) -> bool: ...


class DecodeSession:
    """One open input: demux, plan, decode, sample, deliver. Lives on the reader thread and
    touches nothing of its source but ``sink`` and the sampling objects it is given."""

    def __init__(
        self,
        container: InputContainer,
        logs: list[tuple[int, str, str]],
        sink: SessionSink,
        *,
        settings: IngestSettings,
        analysis_fps: float,
        clock: MediaClock,
        cap: FpsCap,
        local: bool,
        realtime: bool,
    ) -> None:
        self.container = container
        self.logs = logs
        self.sink = sink
        self.settings = settings
        self.analysis_fps = analysis_fps
        self.clock = clock
        self.cap = cap
        self.local = local
        self.lossless = local and not realtime
        self.paced = local and realtime
        self.errors_in_a_row = 0
        self.pending_nonref: list[int] = []
        self.nonref = False
        self.last_decoded_t: float | None = None
        self.guard_gaps = True
        self.time_base: Fraction | None = None
        self.width = 0
        self.height = 0
        self.orientation: Orientation | None = None
        """The display matrix's turn, read from the session's first frame (see Orientation.of)."""

    # -- setup -------------------------------------------------------------------------------

    def _video_stream(self) -> VideoStream:
        streams = self.container.streams
        if not streams.video:
            found = ", ".join(
                f"{s.type} ({s.codec_context.name if s.codec_context else 'unknown codec'})"
                for s in streams
            ) or "nothing"
            raise SourceFailure(f"no video stream in the input (found: {found})", permanent=True)
        return streams.video[0]

    def _codec_context(self, stream: VideoStream) -> VideoCodecContext:
        settings = self.settings
        ctx = stream.codec_context
        if ctx is None:
            raise SourceFailure(
                "unsupported codec: no decoder for the video stream", permanent=True
            )
        if ctx.name not in settings.codecs:
            raise SourceFailure(
                f"unsupported codec {ctx.name!r} (allowed: {', '.join(settings.codecs)})",
                permanent=True,
            )
        if ctx.width and ctx.height:
            self._check_size(ctx.width, ctx.height)
        ctx.thread_type = DECODE_THREAD_TYPE
        ctx.thread_count = settings.decode_threads
        return ctx

    def _check_size(self, width: int, height: int) -> None:
        settings = self.settings
        if (
            width < settings.min_side
            or height < settings.min_side
            or width * height > settings.max_pixels
        ):
            raise SourceFailure(
                f"frame size {width}x{height} is out of bounds (sides at least "
                f"{settings.min_side}, at most {settings.max_pixels} pixels)",
                permanent=True,
            )

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> End:
        settings = self.settings
        stream = self._video_stream()
        ctx = self._codec_context(stream)
        rate = _frame_rate(stream)
        sparse = rate is not None and rate >= settings.skip_min_ratio * self.analysis_fps
        self.nonref = settings.skip_nonref and sparse
        if self.nonref:
            ctx.skip_frame = "NONREF"
        planner: DecodePlanner | None = None
        in_display_order = ctx.name in PLANNED_CODECS and not ctx.has_b_frames
        if settings.skip_gop_tail and sparse and in_display_order:
            planner = DecodePlanner(NalUnits(ctx.name, bytes(ctx.extradata or b"")))
        # With the planner at work, gaps between decoded frames are by design.
        self.guard_gaps = planner is None
        # The pacer keeps its anchor: the media clock runs on across sessions (a looped file
        # starts again one frame after its last), and after a real pause the pacer re-anchors.
        self.clock.new_session(1.0 / rate if rate else None)
        if not self.sink.opened(ctx.name, ctx.width, ctx.height, self.nonref):
            return End.ABANDONED
        if ctx.width and ctx.height:
            self.width, self.height = ctx.width, ctx.height
        time_base = self.time_base = stream.time_base
        last_raw: float | None = None
        for packet in self.container.demux(stream):
            if not self.sink.wanted():
                return End.ABANDONED
            if packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            self.sink.packet_in(time.monotonic())
            raw = _seconds(packet.pts, time_base)
            if planner is not None:
                if raw is not None and last_raw is not None and raw < last_raw:
                    batch = [*planner.release(), packet]  # reorders after all: decode everything
                    planner = None
                    self.guard_gaps = True
                else:
                    # No pts: no prediction either, so decode it as if it were kept.
                    sampled = raw is None or self.cap.would_admit(self.clock.peek(raw))
                    batch = planner.plan(packet, sampled)
                    self._count_gop_tail(planner)
            else:
                batch = [packet]
            last_raw = raw
            for item in batch:
                if not self._decode(ctx, item):
                    return End.ABANDONED
            if self.logs:
                self.logs.clear()
        if planner is not None:
            planner.end()
            self._count_gop_tail(planner)
        if not self._decode(ctx, None):
            return End.ABANDONED
        return End.EOF

    def _count_gop_tail(self, planner: DecodePlanner) -> None:
        if planner.skipped:
            self.sink.count(DropCause.SKIPPED_GOP_TAIL, planner.skipped)
            planner.skipped = 0

    def _decode(self, ctx: VideoCodecContext, packet: av.Packet | None) -> bool:
        """Decode one packet (None flushes) and handle its frames; False if abandoned."""
        if self.nonref and packet is not None and packet.pts is not None:
            self.pending_nonref.append(packet.pts)
        started = time.perf_counter()
        try:
            frames = ctx.decode(packet)
        except av.error.EOFError:
            frames = []
        except av.error.FFmpegError as exc:
            self.errors_in_a_row += 1
            self.sink.decode_error()
            if self.errors_in_a_row >= MAX_DECODE_ERRORS_IN_A_ROW:
                message = last_error(self.logs) or exc.strerror or type(exc).__name__
                raise SourceFailure(
                    f"{self.errors_in_a_row} undecodable packets in a row ({message})",
                    permanent=self.local,
                ) from exc
            return True
        self.errors_in_a_row = 0
        decode_s = time.perf_counter() - started
        return all(self._frame(ctx, frame, decode_s) for frame in frames)

    def _frame(self, ctx: VideoCodecContext, frame: av.VideoFrame, decode_s: float) -> bool:
        # Sizes are reported as shown: a phone's portrait video is stored landscape.
        if self.orientation is None:
            self.orientation = Orientation.of(frame)
        orientation = self.orientation
        shown = orientation.displayed_size(frame.width, frame.height)
        if shown != (self.width, self.height):
            self._check_size(*shown)
            self.width, self.height = shown
            self.sink.resized(*shown)
        if self.nonref and frame.pts is not None:
            self._count_skipped_nonref(frame.pts)
        t = self.clock.advance(_seconds(frame.pts, frame.time_base or self.time_base))
        too_sparse = (
            self.last_decoded_t is not None and t - self.last_decoded_t > self.cap.period_s
        )
        if self.nonref and self.guard_gaps and too_sparse:
            # The frames left after skipping are too sparse for the sampling rate.
            ctx.skip_frame = "DEFAULT"
            self.nonref = False
            self.pending_nonref.clear()
            self.sink.stopped_skipping_nonref()
        self.last_decoded_t = t
        admitted = self.sink.decoded(time.monotonic(), t)
        if admitted is None:
            return False
        if not admitted:
            return True
        if self.paced and not self.sink.pace(t):
            return False
        if self.lossless and not self.sink.wait_for_room():
            return False
        return self.sink.deliver(frame, t, decode_s, orientation)

    def _count_skipped_nonref(self, pts: int) -> None:
        # Frames leave the decoder in presentation order: a packet whose pts is below this
        # frame's and that has not come out never will. It was skipped.
        pending = self.pending_nonref
        gone = [p for p in pending if p < pts]
        if gone or pts in pending:
            self.pending_nonref = [p for p in pending if p > pts]
        if gone:
            self.sink.count(DropCause.SKIPPED_NONREF, len(gone))


def _seconds(pts: int | None, time_base: Fraction | None) -> float | None:
    if pts is None or time_base is None:
        return None
    return float(pts * time_base)


def _frame_rate(stream: VideoStream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            value = float(rate)
            if 1.0 <= value <= 1000.0:
                return value
    return None


def last_error(logs: list[tuple[int, str, str]]) -> str | None:
    """FFmpeg's own words for the failure: a whitelist refusal (the root cause when it
    happens, whatever follows from it), else the last error logged."""
    errors = [m.strip() for level, _, m in logs if level <= av.logging.ERROR and m.strip()]
    refusals = [m for m in errors if "not on whitelist" in m]
    chosen = refusals[0] if refusals else (errors[-1] if errors else None)
    return redact(chosen) if chosen else None

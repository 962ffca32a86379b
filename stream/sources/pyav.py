"""A frame source for RTSP(S), RTMP(S), HTTP(S), HLS and local files, decoded by PyAV.

One reader thread per stream opens the input, demuxes and decodes it and leaves sampled frames
in a latest-frame mailbox. Around it:

- every open and every read is bounded (PyAV's interrupt-callback timeouts plus the protocol's
  own socket timeouts), so a reader blocked in FFmpeg always comes back;
- failures are classified (``failures.py``): permanent ones stop the source with a clear error,
  transient ones are retried with capped exponential backoff and jitter;
- a shared watchdog thread (``watchdog.py``) replaces a reader whose stream went quiet for
  ``watchdog_s``. The stalled reader cannot be interrupted from outside (closing a container
  under a blocked read is not safe), so it is abandoned: a generation number makes it drop
  everything it still produces, and its read timeout ends it;
- only the frames analysis will take are decoded where that is exact (``decodeplan.py`` and
  FFmpeg's ``skip_frame=nonref``), and none is converted here: ``Frame`` converts lazily.

Nothing a stream does raises out of this class: errors land in ``stats()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from fractions import Fraction
from typing import TYPE_CHECKING

import av

from stream.backoff import Backoff
from stream.config import IngestSettings, StreamSpec
from stream.sources.base import DropCause, Frame, FrameCallback, SourceStats, SourceStatus
from stream.sources.decodeplan import PLANNED_CODECS, DecodePlanner, NalUnits
from stream.sources.failures import SourceFailure, classify
from stream.sources.mailbox import LatestFrameMailbox
from stream.sources.rates import RateMeter
from stream.sources.sampling import FpsCap, MediaClock, RealtimePacer
from stream.sources.urls import SourceTarget, UrlRefused, check_url, redact
from stream.sources.watchdog import WATCHDOG, Watchdog

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.codeccontext import VideoCodecContext
    from av.video.stream import VideoStream

log = logging.getLogger(__name__)

STABLE_AFTER_S = 10.0
"""A session live this long resets the backoff: the next failure retries at the base delay."""

MAX_DECODE_ERRORS_IN_A_ROW = 100
"""More undecodable packets in a row than this and the stream counts as broken."""


class _End(Enum):
    EOF = "eof"
    ABANDONED = "abandoned"


DECODE_THREAD_TYPE = "SLICE"
"""Decoders never use frame threads: with PyAV's FFmpeg log callback on (set process-wide by
``_enable_ffmpeg_error_log``), a frame-threaded decoder can deadlock when its context is freed
while its workers wait for the GIL to log (PyAV issues #751 and #909)."""


def _enable_ffmpeg_error_log() -> None:
    # PyAV discards FFmpeg's log by default, and with it the reason behind most errors
    # ("moov atom not found", "Format bintext not on whitelist"). Readers capture errors on
    # their own thread; leave any level the application chose alone.
    if av.logging.get_level() is None:
        av.logging.set_level(av.logging.ERROR)


def ffmpeg_options(target: SourceTarget, settings: IngestSettings) -> dict[str, str]:
    """FFmpeg options for opening ``target``: whitelists and the protocol's own timeouts."""
    options = {
        "protocol_whitelist": ",".join(target.protocol_whitelist),
        "format_whitelist": ",".join(settings.formats),
    }
    io_timeout_us = str(round(settings.read_timeout_s * 1_000_000))
    scheme = target.scheme
    if scheme in ("rtsp", "rtsps"):
        options["rtsp_transport"] = settings.rtsp_transport
        # libavformat 59 renamed the socket timeout 'stimeout' to 'timeout'.
        modern = av.library_versions["libavformat"][0] >= 59
        options["timeout" if modern else "stimeout"] = io_timeout_us
        options["allowed_media_types"] = "video"
    elif scheme in ("http", "https"):
        options["timeout"] = io_timeout_us
        options["rw_timeout"] = io_timeout_us  # also passed on to HLS segment requests
    elif not target.local:
        # Not 'timeout': for RTMP that option means "listen for an incoming connection".
        options["rw_timeout"] = io_timeout_us
    return options


class PyAVSource:
    """A ``FrameSource`` reading one stream URL with PyAV; see the module docstring.

    ``realtime`` and ``loop`` concern local files: replayed as live (frames released on their
    media time, superseded if analysis is slow) or read as fast as analysis takes them, losing
    none; and started again at the end. Network streams are live by nature: an end of stream
    there is a failure to retry. ``on_frame`` is called on the reader thread after each frame
    lands in the mailbox.
    """

    def __init__(
        self,
        stream_id: str,
        url: str,
        settings: IngestSettings | None = None,
        *,
        analysis_fps: float | None = None,
        watchdog_s: float | None = None,
        realtime: bool = True,
        loop: bool = False,
        on_frame: FrameCallback | None = None,
        watchdog: Watchdog | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.url = url
        self.settings = settings or IngestSettings()
        self.analysis_fps = analysis_fps or self.settings.analysis_fps
        self._watchdog_s = watchdog_s or self.settings.watchdog_s
        self.realtime = realtime
        self.loop = loop
        self._on_frame = on_frame
        self._watchdog = watchdog or WATCHDOG
        self._mailbox = LatestFrameMailbox()
        self._backoff = Backoff(self.settings.reconnect_base_s, self.settings.reconnect_cap_s)
        self._clock = MediaClock()
        self._cap = FpsCap(self.analysis_fps)
        self._pacer = RealtimePacer()
        self._target: SourceTarget | None = None
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        # Everything below is guarded by _lock.
        self._gen = 0
        self._started = False
        self._stopping = False
        self._status = SourceStatus.STOPPED  # until started
        self._ever_opened = False
        self._last_error: str | None = None
        self._retry_at: float | None = None
        self._session_open = False
        self._waiting = False
        self._last_progress = 0.0
        self._live_since: float | None = None
        self._seq = 0
        self._frames_in = 0
        self._frames_decoded = 0
        self._frames_delivered = 0
        self._dropped = {cause: 0 for cause in DropCause if cause is not DropCause.SUPERSEDED}
        self._decode_errors = 0
        self._reconnects = 0
        self._watchdog_trips = 0
        self._in_rate = RateMeter()
        self._out_rate = RateMeter()
        self._width = 0
        self._height = 0
        self._codec: str | None = None
        self._skipping_nonref = False
        self._ended = False

    @classmethod
    def from_spec(
        cls,
        spec: StreamSpec,
        settings: IngestSettings,
        *,
        on_frame: FrameCallback | None = None,
        watchdog: Watchdog | None = None,
    ) -> PyAVSource:
        return cls(
            spec.id,
            spec.url,
            settings,
            analysis_fps=spec.analysis_fps,
            watchdog_s=spec.watchdog_s,
            realtime=spec.realtime,
            loop=spec.loop,
            on_frame=on_frame,
            watchdog=watchdog,
        )

    @property
    def watchdog_s(self) -> float:
        return self._watchdog_s

    # -- FrameSource -------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            self._stopping = False
            self._ended = False
            self._wake.clear()
            self._mailbox.reopen()
            try:
                self._target = check_url(self.url, self.settings)
            except UrlRefused as exc:
                self._status = SourceStatus.FAILED
                self._last_error = str(exc)
                log.warning("stream %s refused: %s", self.stream_id, exc)
                return
            self._status = SourceStatus.CONNECTING
            _enable_ffmpeg_error_log()
            self._spawn_reader(0.0)
        self._watchdog.watch(self)

    def stop(self) -> None:
        with self._lock:
            if not self._started:
                return
            self._started = False
            self._stopping = True
            self._gen += 1
            self._session_open = False
            self._retry_at = None
            if self._status is not SourceStatus.FAILED:
                self._status = SourceStatus.STOPPED
            threads, self._threads = self._threads, []
        self._watchdog.unwatch(self)
        self._wake.set()
        self._mailbox.close()
        # Every blocking call of a reader is bounded by a timeout, so this ends; the margin
        # covers decoding the packet in hand.
        deadline = time.monotonic() + self.settings.open_timeout_s + self.settings.read_timeout_s
        for thread in threads:
            thread.join(max(0.0, deadline + 5.0 - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            log.error("stream %s: reader threads still running after stop: %s",
                      self.stream_id, stuck)

    def take(self) -> Frame | None:
        frame = self._mailbox.take()
        if frame is not None:
            with self._lock:
                self._out_rate.mark()
        return frame

    def stats(self) -> SourceStats:
        now = time.monotonic()
        with self._lock:
            dropped = {cause.value: count for cause, count in self._dropped.items()}
            dropped[DropCause.SUPERSEDED.value] = self._mailbox.superseded
            retry = (
                max(0.0, self._retry_at - now)
                if self._retry_at is not None and self._status is SourceStatus.RECONNECTING
                else None
            )
            return SourceStats(
                stream_id=self.stream_id,
                status=self._status,
                url=redact(self.url),
                frames_in=self._frames_in,
                frames_decoded=self._frames_decoded,
                frames_delivered=self._frames_delivered,
                frames_taken=self._mailbox.taken,
                dropped=dropped,
                decode_errors=self._decode_errors,
                reconnects=self._reconnects,
                watchdog_trips=self._watchdog_trips,
                last_error=self._last_error,
                next_retry_in_s=retry,
                fps_in=self._in_rate.rate(now),
                fps_out=self._out_rate.rate(now),
                width=self._width,
                height=self._height,
                codec=self._codec,
                skipping_nonref=self._skipping_nonref,
                ended=self._ended,
            )

    def threads_alive(self) -> int:
        """Reader threads of this source still running (abandoned ones included)."""
        with self._lock:
            return sum(t.is_alive() for t in self._threads)

    # -- watchdog ----------------------------------------------------------------------------

    def check_stall(self, now: float) -> None:
        """Called by the watchdog: replace the reader if its open stream went quiet."""
        with self._lock:
            if self._stopping or not self._session_open or self._waiting:
                return
            quiet = now - self._last_progress
            if quiet < self._watchdog_s:
                return
            self._watchdog_trips += 1
            self._session_open = False
            self._last_error = f"no video frame for {quiet:.1f} s (watchdog): reader restarted"
            delay = self._schedule_retry(now)
            self._spawn_reader(delay)
        log.warning("stream %s stalled for %.1f s; reader restarted", self.stream_id, quiet)

    # -- reader ------------------------------------------------------------------------------

    def _spawn_reader(self, delay: float) -> None:
        # Called with _lock held. A new generation orphans the previous reader.
        self._gen += 1
        self._threads = [t for t in self._threads if t.is_alive()]
        thread = threading.Thread(
            target=self._run,
            args=(self._gen, delay),
            name=f"dfstream-read-{self.stream_id}-{self._gen}",
            daemon=True,
        )
        self._threads.append(thread)
        thread.start()

    def _current(self, gen: int) -> bool:
        return gen == self._gen and not self._stopping

    def _run(self, gen: int, delay: float) -> None:
        try:
            self._read_loop(gen, delay)
        except BaseException as exc:  # nothing may escape a reader thread
            log.exception("stream %s: reader crashed", self.stream_id)
            with self._lock:
                if self._current(gen):
                    self._status = SourceStatus.FAILED
                    self._last_error = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                if gen == self._gen:
                    self._session_open = False
                    self._waiting = False

    def _read_loop(self, gen: int, delay: float) -> None:
        assert self._target is not None
        target = self._target
        looping = False
        while True:
            if delay > 0 and not self._sleep(gen, delay):
                return
            with self._lock:
                if not self._current(gen):
                    return
                if not looping:
                    self._status = (
                        SourceStatus.RECONNECTING if self._ever_opened or self._reconnects
                        else SourceStatus.CONNECTING
                    )
                self._retry_at = None
            looping = False
            try:
                end = self._session(gen, target)
                failure = None
            except SourceFailure as exc:
                end, failure = None, exc
            if end is _End.ABANDONED:
                return
            if end is _End.EOF:
                if target.local and self.loop:
                    delay, looping = 0.0, True
                    continue
                if target.local:
                    with self._lock:
                        if self._current(gen):
                            self._status = SourceStatus.STOPPED
                            self._ended = True
                            self._session_open = False
                    return
                failure = SourceFailure("the stream ended (end of stream from the server)",
                                        permanent=False)
            assert failure is not None
            with self._lock:
                if not self._current(gen):
                    return
                self._session_open = False
                self._last_error = failure.message
                if failure.permanent:
                    self._status = SourceStatus.FAILED
                    self._retry_at = None
                    log.warning("stream %s failed: %s", self.stream_id, failure.message)
                    return
                delay = self._schedule_retry(time.monotonic())
            log.info("stream %s: %s; retrying in %.2f s", self.stream_id, failure.message, delay)

    def _schedule_retry(self, now: float) -> float:
        # Called with _lock held, after a transient failure: the delay before the next try.
        if self._live_since is not None and now - self._live_since >= STABLE_AFTER_S:
            self._backoff.reset()
        self._live_since = None
        delay = self._backoff.next_delay()
        self._reconnects += 1
        self._status = SourceStatus.RECONNECTING
        self._retry_at = now + delay
        return delay

    def _sleep(self, gen: int, seconds: float) -> bool:
        """Wait ``seconds`` unless stopped or replaced; True if the reader should go on."""
        deadline = time.monotonic() + seconds
        while True:
            if gen != self._gen or self._stopping:
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            self._wake.wait(min(remaining, 0.25))

    @contextmanager
    def _waiting_on_purpose(self, gen: int) -> Iterator[None]:
        # Pacing and a full lossless mailbox are not stalls: the watchdog looks away.
        with self._lock:
            if gen == self._gen:
                self._waiting = True
        try:
            yield
        finally:
            with self._lock:
                if gen == self._gen:
                    self._waiting = False
                    self._last_progress = time.monotonic()

    def _session(self, gen: int, target: SourceTarget) -> _End:
        """Open, read to the end; raises SourceFailure, returns how the session ended."""
        settings = self.settings
        opened_at = time.monotonic()
        with av.logging.Capture(local=True) as logs:
            try:
                container = av.open(
                    target.url,
                    mode="r",
                    options=ffmpeg_options(target, settings),
                    timeout=(settings.open_timeout_s, settings.read_timeout_s),
                )
            except Exception as exc:
                raise classify(exc, local=target.local, phase="open",
                               timeout_s=settings.open_timeout_s,
                               elapsed_s=time.monotonic() - opened_at,
                               ffmpeg_log=_last_error(logs)) from exc
            try:
                return _Session(self, gen, container, logs).run()
            except SourceFailure:
                raise
            except Exception as exc:
                raise classify(exc, local=target.local, phase="read",
                               timeout_s=settings.read_timeout_s,
                               ffmpeg_log=_last_error(logs)) from exc
            finally:
                try:
                    container.close()
                except Exception:
                    log.debug("closing %s failed", self.stream_id, exc_info=True)


class _Session:
    """One open input: demux, plan, decode, sample, deliver. Lives on the reader thread."""

    def __init__(
        self,
        source: PyAVSource,
        gen: int,
        container: InputContainer,
        logs: list[tuple[int, str, str]],
    ) -> None:
        self.source = source
        self.gen = gen
        self.container = container
        self.logs = logs
        assert source._target is not None
        self.local = source._target.local
        self.lossless = self.local and not source.realtime
        self.paced = self.local and source.realtime
        self.errors_in_a_row = 0
        self.pending_nonref: list[int] = []
        self.nonref = False
        self.last_decoded_t: float | None = None
        self.guard_gaps = True
        self.time_base: Fraction | None = None

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
        settings = self.source.settings
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
        settings = self.source.settings
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

    def run(self) -> _End:
        source = self.source
        settings = source.settings
        stream = self._video_stream()
        ctx = self._codec_context(stream)
        rate = _frame_rate(stream)
        sparse = rate is not None and rate >= settings.skip_min_ratio * source.analysis_fps
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
        source._clock.new_session(1.0 / rate if rate else None)
        with source._lock:
            if not source._current(self.gen):
                return _End.ABANDONED
            source._ever_opened = True
            source._session_open = True
            source._last_progress = time.monotonic()
            source._codec = ctx.name
            source._skipping_nonref = self.nonref
            if ctx.width and ctx.height:
                source._width, source._height = ctx.width, ctx.height
        time_base = self.time_base = stream.time_base
        last_raw: float | None = None
        for packet in self.container.demux(stream):
            if not source._current(self.gen):
                return _End.ABANDONED
            if packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            now = time.monotonic()
            with source._lock:
                source._frames_in += 1
                source._in_rate.mark(now)
                source._last_progress = now
            raw = _seconds(packet.pts, time_base)
            if planner is not None:
                if raw is not None and last_raw is not None and raw < last_raw:
                    batch = [*planner.release(), packet]  # reorders after all: decode everything
                    planner = None
                    self.guard_gaps = True
                else:
                    # No pts: no prediction either, so decode it as if it were kept.
                    sampled = raw is None or source._cap.would_admit(source._clock.peek(raw))
                    batch = planner.plan(packet, sampled)
                    self._count_gop_tail(planner)
            else:
                batch = [packet]
            last_raw = raw
            for item in batch:
                if not self._decode(ctx, item):
                    return _End.ABANDONED
            if self.logs:
                self.logs.clear()
        if planner is not None:
            planner.end()
            self._count_gop_tail(planner)
        if not self._decode(ctx, None):
            return _End.ABANDONED
        return _End.EOF

    def _count_gop_tail(self, planner: DecodePlanner) -> None:
        if planner.skipped:
            with self.source._lock:
                self.source._dropped[DropCause.SKIPPED_GOP_TAIL] += planner.skipped
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
            with self.source._lock:
                self.source._decode_errors += 1
            if self.errors_in_a_row >= MAX_DECODE_ERRORS_IN_A_ROW:
                message = _last_error(self.logs) or exc.strerror or type(exc).__name__
                raise SourceFailure(
                    f"{self.errors_in_a_row} undecodable packets in a row ({message})",
                    permanent=self.local,
                ) from exc
            return True
        self.errors_in_a_row = 0
        decode_s = time.perf_counter() - started
        return all(self._frame(ctx, frame, decode_s) for frame in frames)

    def _frame(self, ctx: VideoCodecContext, frame: av.VideoFrame, decode_s: float) -> bool:
        source = self.source
        if frame.width != source._width or frame.height != source._height:
            self._check_size(frame.width, frame.height)
            with source._lock:
                source._width, source._height = frame.width, frame.height
        if self.nonref and frame.pts is not None:
            self._count_skipped_nonref(frame.pts)
        t = source._clock.advance(_seconds(frame.pts, frame.time_base or self.time_base))
        too_sparse = (
            self.last_decoded_t is not None and t - self.last_decoded_t > source._cap.period_s
        )
        if self.nonref and self.guard_gaps and too_sparse:
            # The frames left after skipping are too sparse for the sampling rate.
            ctx.skip_frame = "DEFAULT"
            self.nonref = False
            self.pending_nonref.clear()
            with source._lock:
                source._skipping_nonref = False
        self.last_decoded_t = t
        now = time.monotonic()
        with source._lock:
            if not source._current(self.gen):
                return False
            source._frames_decoded += 1
            source._last_progress = now
            if source._live_since is None:
                source._live_since = now
            source._status = SourceStatus.LIVE
            admitted = source._cap.admit(t)
            if not admitted:
                source._dropped[DropCause.FPS_CAP] += 1
                return True
        if self.paced:
            wait = source._pacer.wait_s(t)
            if wait > 0:
                with source._waiting_on_purpose(self.gen):
                    if not source._sleep(self.gen, wait):
                        return False
        if self.lossless:
            with source._waiting_on_purpose(self.gen):
                if not source._mailbox.wait_free(lambda: not source._current(self.gen)):
                    return False
        with source._lock:
            if not source._current(self.gen):
                return False
            source._seq += 1
            item = Frame(
                source.stream_id, source._seq, t, time.time(), av_frame=frame, decode_s=decode_s
            )
            source._frames_delivered += 1
            source._mailbox.put(item)
        if source._on_frame is not None:
            try:
                source._on_frame()
            except Exception:  # a consumer's bug must not stop the reader
                log.exception("on_frame callback of %s failed", source.stream_id)
        return True

    def _count_skipped_nonref(self, pts: int) -> None:
        # Frames leave the decoder in presentation order: a packet whose pts is below this
        # frame's and that has not come out never will. It was skipped.
        pending = self.pending_nonref
        gone = [p for p in pending if p < pts]
        if gone or pts in pending:
            self.pending_nonref = [p for p in pending if p > pts]
        if gone:
            with self.source._lock:
                self.source._dropped[DropCause.SKIPPED_NONREF] += len(gone)


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


def _last_error(logs: list[tuple[int, str, str]]) -> str | None:
    """FFmpeg's own words for the failure: a whitelist refusal (the root cause when it
    happens, whatever follows from it), else the last error logged."""
    errors = [m.strip() for level, _, m in logs if level <= av.logging.ERROR and m.strip()]
    refusals = [m for m in errors if "not on whitelist" in m]
    chosen = refusals[0] if refusals else (errors[-1] if errors else None)
    return redact(chosen) if chosen else None

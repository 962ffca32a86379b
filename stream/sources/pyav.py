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
- every network connection goes out through a way out of the service's own, which applies the
  network policy where FFmpeg cannot (``opening.py``);
- only the frames analysis will take are decoded where that is exact (``decodeplan.py`` and
  FFmpeg's ``skip_frame=nonref``), and none is converted here: ``Frame`` converts lazily.

The decode loop itself is ``session.DecodeSession``; it reports through ``_Report``, the narrow
sink that applies what it says under this source's lock.

Nothing a stream does raises out of this class: errors land in ``stats()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import av

from stream.backoff import Backoff
from stream.config import IngestSettings, StreamSpec
from stream.sources.base import DropCause, Frame, FrameCallback, SourceStats, SourceStatus
from stream.sources.failures import ContentStrikes, SourceFailure, classify
from stream.sources.mailbox import LatestFrameMailbox
from stream.sources.netpolicy import Resolver, resolve_host
from stream.sources.opening import Opening, enable_ffmpeg_error_log
from stream.sources.orientation import Orientation
from stream.sources.rates import RateMeter
from stream.sources.sampling import FpsCap, MediaClock, RealtimePacer
from stream.sources.session import DecodeSession, End, last_error
from stream.sources.urls import UrlRefused, check_url, redact
from stream.sources.watchdog import WATCHDOG, Watchdog

log = logging.getLogger(__name__)

CONTENT_FAILURES = 5
"""The same content failure (not a video, nothing decodable) this often in a row: permanent."""
STABLE_AFTER_S = 1.0
"""A session whose frames flowed this long resets the backoff: the next failure retries at the
base delay. Short, so that a camera that restarts soon after it came back is retried promptly;
not zero, so that a server that accepts and drops at once still backs off."""

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
        resolve: Resolver = resolve_host,
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
        self._opening: Opening | None = None
        self._resolve = resolve
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
        self._strikes = ContentStrikes(CONTENT_FAILURES)
        self._seq = 0
        self._frames_in = 0
        self._frames_decoded = 0
        self._frames_delivered = 0
        self._dropped: dict[DropCause, int] = {
            cause: 0 for cause in DropCause if cause is not DropCause.SUPERSEDED
        }
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
                target = check_url(self.url, self.settings)
            except UrlRefused as exc:
                self._status = SourceStatus.FAILED
                self._last_error = str(exc)
                log.warning("stream %s refused: %s", self.stream_id, exc)
                return
            self._status = SourceStatus.CONNECTING
            try:
                self._opening = Opening(target, self.settings, self._resolve)
            except OSError as exc:  # no loopback socket for its way out (out of descriptors)
                self._status = SourceStatus.FAILED
                self._last_error = f"cannot open the stream's way out on loopback: {exc}"
                log.error("stream %s: %s", self.stream_id, self._last_error)
                return
            enable_ffmpeg_error_log()
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
            # Taken now: a start() after this lock is released opens its own.
            opening, self._opening = self._opening, None
        self._watchdog.unwatch(self)
        self._wake.set()
        self._mailbox.close()
        # Every blocking call of a reader is bounded by a timeout, so this ends; the margin
        # covers decoding the packet in hand.
        deadline = time.monotonic() + self.settings.open_timeout_s + self.settings.read_timeout_s
        for thread in threads:
            thread.join(max(0.0, deadline + 5.0 - time.monotonic()))
        if opening is not None:
            opening.close()
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
        opening = self._opening
        if opening is None:  # stopped before this reader began
            return
        target = opening.target
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
                end = self._session(gen, opening)
                failure = None
            except SourceFailure as exc:
                end, failure = None, exc
            if end is End.ABANDONED:
                return
            if end is End.EOF and target.local and self._live_since is None:
                end, failure = None, SourceFailure(
                    "the file ended before a single frame was decoded (a corrupt input, or "
                    "not a video)", permanent=True, content=True)
            if end is End.EOF:
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
                failure = self._strikes.verdict(failure, frames=self._live_since is not None)
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

    def _session(self, gen: int, opening: Opening) -> End:
        """Open, read to the end; raises SourceFailure, returns how the session ended."""
        settings = self.settings
        local = opening.target.local
        opening.begin()
        opened_at = time.monotonic()
        with av.logging.Capture(local=True) as logs:
            try:
                container = av.open(opening.url, mode="r", options=opening.options(),
                                    timeout=(settings.open_timeout_s, settings.read_timeout_s))
            except Exception as exc:
                opening.raise_what_the_way_out_saw()
                raise classify(exc, local=local, phase="open",
                               timeout_s=settings.open_timeout_s,
                               elapsed_s=time.monotonic() - opened_at,
                               ffmpeg_log=last_error(logs), url=self.url) from exc
            try:
                session = DecodeSession(
                    container, logs, _Report(self, gen), settings=settings,
                    analysis_fps=self.analysis_fps, clock=self._clock, cap=self._cap,
                    local=local, realtime=self.realtime,
                )
                end = session.run()
                # FFmpeg skips an HLS segment it could not open and reads on: the refusal
                # still decides.
                opening.raise_what_the_way_out_saw()
                return end
            except SourceFailure:
                raise
            except Exception as exc:
                opening.raise_what_the_way_out_saw()
                raise classify(exc, local=local, phase="read",
                               timeout_s=settings.read_timeout_s,
                               ffmpeg_log=last_error(logs), url=self.url) from exc
            finally:
                try:
                    container.close()
                except Exception:
                    log.debug("closing %s failed", self.stream_id, exc_info=True)


class _Report:
    """The ``SessionSink`` of one reader generation: the session's reports, applied to the
    source under its lock, and ignored once the generation is no longer current."""

    def __init__(self, source: PyAVSource, gen: int) -> None:
        self.source = source
        self.gen = gen

    def wanted(self) -> bool:
        return self.source._current(self.gen)

    def opened(self, codec: str, width: int, height: int, skipping_nonref: bool) -> bool:
        source = self.source
        with source._lock:
            if not source._current(self.gen):
                return False
            source._ever_opened = True
            source._session_open = True
            source._last_progress = time.monotonic()
            source._codec = codec
            source._skipping_nonref = skipping_nonref
            if width and height:
                source._width, source._height = width, height
        return True

    def packet_in(self, now: float) -> None:
        source = self.source
        with source._lock:
            source._frames_in += 1
            source._in_rate.mark(now)
            source._last_progress = now

    def count(self, cause: DropCause, n: int = 1) -> None:
        with self.source._lock:
            self.source._dropped[cause] += n

    def decode_error(self) -> None:
        with self.source._lock:
            self.source._decode_errors += 1

    def resized(self, width: int, height: int) -> None:
        with self.source._lock:
            self.source._width, self.source._height = width, height

    def stopped_skipping_nonref(self) -> None:
        with self.source._lock:
            self.source._skipping_nonref = False

    def decoded(self, now: float, t: float) -> bool | None:
        source = self.source
        with source._lock:
            if not source._current(self.gen):
                return None
            source._frames_decoded += 1
            source._last_progress = now
            if source._live_since is None:
                source._live_since = now
            source._status = SourceStatus.LIVE
            if not source._cap.admit(t):
                source._dropped[DropCause.FPS_CAP] += 1
                return False
        return True

    def pace(self, t: float) -> bool:
        source = self.source
        wait = source._pacer.wait_s(t)
        if wait <= 0:
            return True
        with source._waiting_on_purpose(self.gen):
            return source._sleep(self.gen, wait)

    def wait_for_room(self) -> bool:
        source = self.source
        with source._waiting_on_purpose(self.gen):
            return source._mailbox.wait_free(lambda: not source._current(self.gen))

    def deliver(
        self, frame: av.VideoFrame, t: float, decode_s: float, orientation: Orientation
    ) -> bool:
        source = self.source
        with source._lock:
            if not source._current(self.gen):
                return False
            source._seq += 1
            item = Frame(
                source.stream_id, source._seq, t, time.time(), av_frame=frame,
                decode_s=decode_s, orientation=orientation,
            )
            source._frames_delivered += 1
            source._mailbox.put(item)
        if source._on_frame is not None:
            try:
                source._on_frame()
            except Exception:  # a consumer's bug must not stop the reader
                log.exception("on_frame callback of %s failed", source.stream_id)
        return True

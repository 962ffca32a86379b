"""What went wrong with a stream, in words an operator can act on, and whether to retry.

Permanent failures are those that retrying cannot fix: the input itself is unusable (no video,
a codec or container that is not allowed, absurd dimensions, a refused URL, a missing or
corrupt local file). Transient failures are those of a network source that may come back: the
host is unreachable or refuses, an HTTP/RTSP error status, a timeout, the live stream ended.
"""

from __future__ import annotations

import errno
import re
from typing import Any

import av

from stream.sources.urls import redact

_PERMANENT_FFMPEG = (
    av.error.ProtocolNotFoundError,
    av.error.DecoderNotFoundError,
    av.error.DemuxerNotFoundError,
    av.error.PatchWelcomeError,
    av.error.BugError,
)


_FORMAT_REFUSED = re.compile(r"Format (?:\S+ )?not on whitelist '(?P<allowed>[^']*)'")
_NESTED_URL = re.compile(r"\b(?:tcp|tls|udp)://[^\s'\"]*")
"""The connection FFmpeg opens under a stream URL, with the options it appends
(``tcp://host:554?timeout=10000000``): not what the user gave, so not what an error shows."""
_HTTP_ERRORS = (av.error.HTTPError, av.error.HTTPClientError, av.error.HTTPServerError)


_NOT_A_VIDEO = re.compile(r"moov atom not found|Invalid data found when processing input",
                          re.IGNORECASE)
"""FFmpeg's words for bytes that are not a video it can read (often guessed from the name)."""


class SourceFailure(Exception):
    """A stream-level failure: ``permanent`` ones stop the source, others are retried.

    ``content``: the source answered but what it sent is not a usable video. On the network
    that may be a passing glitch, so it is retried, but only a few times in a row (the source
    counts them); a refused connection or a timeout is retried for ever.
    """

    def __init__(self, message: str, *, permanent: bool, content: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.content = content


class ContentStrikes:
    """The same content failure ``limit`` times in a row with no frame in between will not fix
    itself: the last one is made permanent and says so. A session that ended before its first
    frame counts as a content failure (nothing usable arrived)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._last: str | None = None
        self._count = 0

    def verdict(self, failure: SourceFailure, *, frames: bool) -> SourceFailure:
        """``frames``: the failed session decoded at least one frame."""
        if frames:
            self._last, self._count = None, 0
            return failure
        if failure.message.startswith("the stream ended"):
            failure = SourceFailure("the stream ended before a single frame was decoded (a "
                                    "corrupt input, or not a video)", permanent=False,
                                    content=True)
        if not failure.content or failure.permanent:
            return failure
        self._count = self._count + 1 if self._last == failure.message else 1
        self._last = failure.message
        if self._count < self.limit:
            return failure
        return SourceFailure(f"{failure.message}; the same {self._count} times in a row with no "
                             "frame, so it is not retried (fix the source, then add the stream "
                             "again)", permanent=True, content=True)


def classify(
    exc: BaseException,
    *,
    local: bool,
    phase: str,
    timeout_s: float,
    elapsed_s: float = 0.0,
    ffmpeg_log: str | None = None,
    url: str = "",
) -> SourceFailure:
    """Turn an exception from opening (``phase='open'``) or reading a stream into a failure.

    ``ffmpeg_log`` is FFmpeg's last error message on the reader's thread, which often says more
    than the error code ("Format bintext not on whitelist", "moov atom not found"); the
    connections it names under the stream are shown as ``url``, the stream URL the user gave.
    """
    if isinstance(exc, SourceFailure):
        return exc
    detail = _detail(exc, ffmpeg_log, url)
    timed_out = not local and elapsed_s >= 0.95 * timeout_s
    if isinstance(exc, av.error.ExitError) or (
        timed_out and isinstance(exc, av.error.InvalidDataError | OSError)
    ):
        # PyAV's interrupt callback fired (some demuxers report it as invalid data).
        what = "opening" if phase == "open" else "reading"
        return SourceFailure(
            f"timed out {what} the stream (no data for {timeout_s:g} s)", permanent=False
        )
    if isinstance(exc, av.error.InvalidDataError) and phase == "open" and detail.endswith(
        "processing input"
    ):
        detail += " (not a media format FFmpeg recognises)"
    if isinstance(exc, av.error.FFmpegError) and _NOT_A_VIDEO.search(detail):
        return SourceFailure(f"the input is not a video FFmpeg can read ({detail})",
                             permanent=local, content=True)
    if isinstance(exc, _HTTP_ERRORS):
        # The server is there and answers; a stream that is not published yet or a
        # misconfigured origin may be fixed on its side, so keep trying (with backoff).
        return SourceFailure(detail, permanent=False)
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return SourceFailure(detail, permanent=local)
    if isinstance(exc, _PERMANENT_FFMPEG):
        return SourceFailure(detail, permanent=True)
    if isinstance(exc, av.error.ArgumentError | av.error.OptionNotFoundError):
        # EINVAL at open: a whitelist refused the format or a nested protocol, or the input
        # is not something FFmpeg can take. Retrying gives the same answer.
        return SourceFailure(detail, permanent=True)
    if isinstance(exc, MemoryError):
        return SourceFailure(f"out of memory: {detail}", permanent=True)
    if isinstance(exc, av.error.FFmpegError | OSError):
        # Corrupt data in a local file stays corrupt; on the network it may be a glitch.
        return SourceFailure(detail, permanent=local)
    return SourceFailure(f"internal error: {type(exc).__name__}: {exc}", permanent=True)


def _log_message(exc: av.error.FFmpegError) -> str | None:
    # PyAV attaches FFmpeg's last error log as (level, name, message).
    entry: Any = exc.log
    if isinstance(entry, tuple) and len(entry) == 3 and isinstance(entry[2], str):
        return entry[2].strip() or None
    return None


def _detail(exc: BaseException, ffmpeg_log: str | None, url: str) -> str:
    extra = ffmpeg_log
    if isinstance(exc, av.error.FFmpegError):
        message = exc.strerror or type(exc).__name__
        extra = extra or _log_message(exc)
    else:
        message = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
    if (
        isinstance(exc, OSError)
        and exc.errno in (errno.ENOENT, errno.EACCES, errno.EISDIR)
        and exc.filename
    ):
        message = f"{message}: {exc.filename}"
    if extra and url:
        extra = _NESTED_URL.sub(lambda _match: url, extra)
    refused_format = _FORMAT_REFUSED.search(extra or "")
    if refused_format:
        allowed = refused_format["allowed"].replace(",", ", ")
        return f"the input is not in an allowed container format (allowed: {allowed})"
    if extra and extra.lower() not in message.lower():
        message = f"{message} ({extra.rstrip('.!')})"
    return redact(message)

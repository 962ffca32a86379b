"""What went wrong with a stream, in words an operator can act on, and whether to retry.

Permanent failures are those that retrying cannot fix: the input itself is unusable (no video,
a codec or container that is not allowed, absurd dimensions, a refused URL, a missing or
corrupt local file). Transient failures are those of a network source that may come back: the
host is unreachable or refuses, an HTTP/RTSP error status, a timeout, the live stream ended.
"""

from __future__ import annotations

import errno
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


_HTTP_ERRORS = (av.error.HTTPError, av.error.HTTPClientError, av.error.HTTPServerError)


class SourceFailure(Exception):
    """A stream-level failure: ``permanent`` ones stop the source, others are retried."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


def classify(
    exc: BaseException,
    *,
    local: bool,
    phase: str,
    timeout_s: float,
    ffmpeg_log: str | None = None,
) -> SourceFailure:
    """Turn an exception from opening (``phase='open'``) or reading a stream into a failure.

    ``ffmpeg_log`` is FFmpeg's last error message on the reader's thread, which often says more
    than the error code ("Format bintext not on whitelist", "moov atom not found").
    """
    if isinstance(exc, SourceFailure):
        return exc
    detail = _detail(exc, ffmpeg_log)
    if isinstance(exc, av.error.ExitError):
        # PyAV's interrupt callback fired: no data within the timeout.
        what = "opening" if phase == "open" else "reading"
        return SourceFailure(
            f"timed out {what} the stream (no data for {timeout_s:g} s)", permanent=False
        )
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


def _detail(exc: BaseException, ffmpeg_log: str | None) -> str:
    if isinstance(exc, av.error.FFmpegError):
        message = exc.strerror or type(exc).__name__
        extra = ffmpeg_log or _log_message(exc)
    elif isinstance(exc, OSError):
        message = exc.strerror or str(exc)
        extra = ffmpeg_log
        if exc.errno == errno.ENOENT and exc.filename:
            message = f"{message}: {exc.filename}"
    else:
        message, extra = str(exc), ffmpeg_log
    if extra and extra.lower() not in message.lower():
        message = f"{message} ({extra.rstrip('.')})"
    return redact(message)

"""Helpers for ingest tests: short timeouts, and reading a source until something holds."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from stream.config import IngestSettings
from stream.sources.base import Frame, SourceStats
from stream.sources.pyav import PyAVSource


def fast_ingest(**overrides: Any) -> IngestSettings:
    """Ingest settings with test-sized timeouts and local files allowed."""
    values: dict[str, Any] = {
        "allowed_schemes": ["rtsp", "rtsps", "rtmp", "http", "https", "file"],
        "open_timeout_s": 2.0,
        "read_timeout_s": 2.0,
        "reconnect_base_s": 0.1,
        "reconnect_cap_s": 0.8,
        "watchdog_s": 3.0,
    }
    values.update(overrides)
    return IngestSettings(**values)


def wait_for(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()


def collect(
    source: PyAVSource,
    timeout_s: float,
    until: Callable[[list[Frame], SourceStats], bool] | None = None,
    on_take: Callable[[Frame], None] | None = None,
) -> list[Frame]:
    """Take frames until ``until(frames, stats)`` holds, the source ends, or the timeout."""
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        frame = source.take()
        if frame is not None:
            frames.append(frame)
            if on_take is not None:
                on_take(frame)
        stats = source.stats()
        if until is not None and until(frames, stats):
            break
        if frame is None:
            if stats.status in ("stopped", "failed"):
                last = source.take()  # one may have landed just before the end
                if last is not None:
                    frames.append(last)
                break
            time.sleep(0.003)
    return frames

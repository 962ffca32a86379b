"""A watchdog that lives outside the readers it watches.

A reader thread blocked inside FFmpeg cannot notice that its stream went quiet; only the read
timeout wakes it. The watchdog runs on its own thread and asks every watched source, a few
times per watchdog period, whether it is stalled; a stalled source replaces its reader (see
``PyAVSource.check_stall``). One thread serves all sources and ends when none is watched.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

log = logging.getLogger(__name__)


class Watched(Protocol):
    @property
    def watchdog_s(self) -> float: ...

    def check_stall(self, now: float) -> None:
        """Restart the reader if no frame arrived for ``watchdog_s`` (monotonic ``now``)."""


class Watchdog:
    MIN_INTERVAL_S = 0.02
    MAX_INTERVAL_S = 0.5

    def __init__(self, name: str = "dfstream-watchdog") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._watched: dict[int, Watched] = {}
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def watch(self, target: Watched) -> None:
        with self._lock:
            self._watched[id(target)] = target
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        self._wake.set()

    def unwatch(self, target: Watched) -> None:
        with self._lock:
            self._watched.pop(id(target), None)
        self._wake.set()

    @property
    def running(self) -> bool:
        with self._lock:
            return self._thread is not None

    def _run(self) -> None:
        while True:
            with self._lock:
                targets = list(self._watched.values())
                if not targets:
                    self._thread = None
                    return
            interval = min(t.watchdog_s for t in targets) / 4
            now = time.monotonic()
            for target in targets:
                try:
                    target.check_stall(now)
                except Exception:
                    log.exception("watchdog check failed")
            self._wake.wait(min(self.MAX_INTERVAL_S, max(self.MIN_INTERVAL_S, interval)))
            self._wake.clear()


WATCHDOG = Watchdog()
"""The process-wide watchdog sources use unless given another."""

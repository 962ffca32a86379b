"""The running service for tests: its HTTP API under a real uvicorn server, and long face media."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx

from stream.config import Settings
from stream.samples import write_face_video

TEST_INGEST: dict[str, Any] = {
    "open_timeout_s": 2.0,
    "read_timeout_s": 2.0,
    "reconnect_base_s": 0.1,
    "reconnect_cap_s": 1.0,
    "watchdog_s": 3.0,
}
"""Ingest settings with test-sized timeouts: a dead stream is noticed and retried in seconds."""


def long_face_video(media_dir: Path) -> Path:
    """20 s of the astronaut's face at 640x480, 15 fps: long enough that a stream is not
    forever restarting, and large enough that the face stays above the face stage's
    ``min_face_px`` all along (at 640x360 it shrinks below it for a third of the path). Written
    once per session (the file is reused when present), since several modules want it."""
    path = media_dir / "face_480p_20s.mp4"
    if not path.is_file():
        partial = path.with_suffix(".partial.mp4")
        write_face_video(partial, 640, 480, seconds=20.0, fps=15, gop=30)
        partial.rename(path)
    return path


def service_settings(redis_url: str, **sections: Any) -> Settings:
    """A service configuration for tests: the tiny untrained scorer, test-sized ingest timeouts,
    the given Redis; ``sections`` replace or extend the rest."""
    values: dict[str, Any] = {
        "redis": {"url": redis_url},
        "detector": {"arch": "tiny", "allow_untrained": True},
        "ingest": dict(TEST_INGEST),
        "api": {"host": "127.0.0.1", "port": 0},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(values.get(name), dict):
            values[name] = {**values[name], **value}
        else:
            values[name] = value
    return Settings(**values)


class ServiceServer:
    """A ``Service`` and ``create_app`` under a real uvicorn server on a thread of its own.

    ``start()`` returns once the lifespan (engines loaded and warmed, streams added) is done and
    the server listens; ``stop()`` is the graceful shutdown a signal would start.
    """

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from stream.api import create_app
        from stream.service import Service

        self.settings = settings
        self.service = Service(settings)
        self.app = create_app(self.service)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, log_config=None, access_log=False,
            timeout_graceful_shutdown=10,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="test-uvicorn", daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> ServiceServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the service's server stopped during start-up (see the log)")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the service did not start within {timeout_s}s")
            time.sleep(0.05)
        self.port = int(self.server.servers[0].sockets[0].getsockname()[1])
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        from stream.api import end_live_feeds

        end_live_feeds(self.app)  # as `dfstream serve` does on SIGTERM
        self.server.should_exit = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise RuntimeError(f"the service did not shut down within {timeout_s}s")

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        secret = self.settings.api.token
        if token is None and secret is not None:
            token = secret.get_secret_value()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0, **kwargs)

    def __enter__(self) -> ServiceServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(predicate: Any, timeout_s: float, poll_s: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or the time is up (the
    last falsy value is returned)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(poll_s)

"""A real RTSP server (GStreamer's, run by the system Python) serving a file on loopback."""

from __future__ import annotations

import select
import subprocess
import time
from pathlib import Path

from stream.redis_server import free_tcp_port

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "rtsp_server.py"


class RtspServer:
    """Serves ``media`` at ``url``, looping seamlessly unless ``loop`` is false (then the stream
    ends with the file); ``stop()`` then ``start()`` reuses the same port."""

    def __init__(
        self, media: Path, *, port: int | None = None, path: str = "/live", loop: bool = True
    ) -> None:
        self.media = media
        self.port = port or free_tcp_port()
        self.path = path
        self.loop = loop
        self._process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.path}"

    def start(self, timeout_s: float = 15.0) -> RtspServer:
        self._process = subprocess.Popen(
            [SYSTEM_PYTHON, str(SERVER_SCRIPT), str(self.media), "--port", str(self.port),
             "--path", self.path, *([] if self.loop else ["--no-loop"])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read() if self._process.stderr else ""
                raise RuntimeError(f"RTSP server exited: {err.strip()}")
            ready, _, _ = select.select([self._process.stdout], [], [], 0.1)
            if ready and self._process.stdout.readline().startswith("READY"):
                return self
        self.stop()
        raise RuntimeError(f"RTSP server did not start within {timeout_s}s")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        for pipe in (self._process.stdout, self._process.stderr):
            if pipe:
                pipe.close()
        self._process = None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

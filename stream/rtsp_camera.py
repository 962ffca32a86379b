"""A real RTSP camera on loopback: GStreamer's RTSP server (scripts/rtsp_server.py, run by the
system Python, which has GStreamer's bindings) serving a video file, looping seamlessly.

The demo's sample camera and the tests' live streams are this one class. The server runs in its
own session, so a Ctrl-C meant for the demo does not cut the camera off before the demo's
graceful shutdown.
"""

from __future__ import annotations

import select
import subprocess
import time
from pathlib import Path

from engines.errors import UserError
from stream.redis_server import free_tcp_port

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "rtsp_server.py"
REFUSED_FILE_EXIT = 2
"""The server's exit code when it refuses the file (it says why on stderr)."""


class RtspCameraError(UserError, RuntimeError):
    """The RTSP server could not be started; the message says why and what to install."""


class RtspCamera:
    """Serves ``media`` at ``url``, looping unless ``loop`` is false (then the stream ends with
    the file); ``stop()`` or ``kill()`` then ``start()`` reuses the same port."""

    def __init__(
        self, media: Path, *, port: int | None = None, path: str = "/live", loop: bool = True,
        tls_cert: Path | None = None,
    ) -> None:
        self.media = media
        self.tls_cert = tls_cert
        """A PEM file with certificate and key: serve RTSPS (``url`` is then rtsps://)."""
        self.port = port or free_tcp_port()
        self.path = path
        self.loop = loop
        self._process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        scheme = "rtsps" if self.tls_cert is not None else "rtsp"
        return f"{scheme}://127.0.0.1:{self.port}{self.path}"

    def start(self, timeout_s: float = 20.0) -> RtspCamera:
        if not SERVER_SCRIPT.is_file() or not Path(SYSTEM_PYTHON).exists():
            raise RtspCameraError(
                f"an RTSP camera needs {SERVER_SCRIPT} and {SYSTEM_PYTHON} with GStreamer's RTSP "
                "server (run from the repository: `make demo` installs what it needs)"
            )
        process = subprocess.Popen(
            [SYSTEM_PYTHON, str(SERVER_SCRIPT), str(self.media), "--port", str(self.port),
             "--path", self.path, *([] if self.loop else ["--no-loop"]),
             *([] if self.tls_cert is None else ["--tls-cert", str(self.tls_cert)])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        self._process = process
        assert process.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                err = process.stderr.read().strip() if process.stderr else ""
                code = process.returncode
                self.stop()
                hint = "" if code == REFUSED_FILE_EXIT else (
                    " (GStreamer's RTSP server packages missing? `make demo` installs them)")
                raise RtspCameraError(
                    f"the RTSP server did not start: {err or f'exit {code}'}{hint}"
                )
            ready, _, _ = select.select([process.stdout], [], [], 0.1)
            if ready and process.stdout.readline().startswith("READY"):
                return self
        self.stop()
        raise RtspCameraError(f"the RTSP server did not answer within {timeout_s:g} s")

    def kill(self) -> None:
        """SIGKILL the server, as a camera losing power does: no TEARDOWN, no goodbye to its
        clients. ``start()`` brings it back on the same port."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        self.stop()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> RtspCamera:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

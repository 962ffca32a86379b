"""A real RTMP endpoint: the ffmpeg CLI publishing a file in listen mode, for one player."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from stream.redis_server import free_tcp_port


class FfmpegRtmpServer:
    """``ffmpeg -re ... -f flv -listen 1 rtmp://...``: waits for a player, then streams to it."""

    def __init__(self, media: Path) -> None:
        self.media = media
        self.port = free_tcp_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/cam"

    def __enter__(self) -> FfmpegRtmpServer:
        self._process = subprocess.Popen(
            ["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(self.media),
             "-c", "copy", "-f", "flv", "-listen", "1", self.url],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        time.sleep(0.5)  # ffmpeg opens its listening socket right after start
        if self._process.poll() is not None:
            err = self._process.stderr.read().decode() if self._process.stderr else ""
            raise RuntimeError(f"ffmpeg RTMP server exited: {err.strip()}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stderr:
            self._process.stderr.close()

"""An embedded ``redis-server`` for when no Redis URL is configured, and for hermetic tests.

It listens on a private unix socket (and optionally a TCP port on loopback), keeps nothing on
disk unless asked, and is stopped with its owner.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from engines.errors import UserError


class RedisServerError(UserError, RuntimeError):
    """redis-server is missing or did not come up."""


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A redis-server child process; ``url`` is ready once ``start()`` returns."""

    def __init__(
        self,
        port: int | None = None,
        *,
        tcp: bool = True,
        password: str | None = None,
        persist_dir: Path | None = None,
        executable: str = "redis-server",
    ) -> None:
        self.port = port if port is not None else (free_tcp_port() if tcp else 0)
        self.password = password
        self._persist_dir = persist_dir
        self._executable = executable
        self._tmp = tempfile.TemporaryDirectory(prefix="dfstream-redis-")
        self.socket_path = Path(self._tmp.name) / "redis.sock"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.port:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        query = f"?password={self.password}" if self.password else ""
        return f"unix://{self.socket_path}{query}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        binary = shutil.which(self._executable)
        if binary is None:
            raise RedisServerError(
                f"{self._executable} not found on PATH: install it (Debian: apt-get install "
                "redis-server) or configure redis.url to use an existing server"
            )
        data_dir = self._persist_dir or Path(self._tmp.name)
        args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(data_dir),
            "--save", "",
            "--appendonly", "yes" if self._persist_dir else "no",
            # Persisting: every acknowledged write is on disk, so even a SIGKILL loses none.
            "--appendfsync", "always" if self._persist_dir else "everysec",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(Path(self._tmp.name) / "redis.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self._process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode() if self._process.stderr else ""
                raise RedisServerError(f"redis-server exited at start: {err.strip()}")
            with contextlib.suppress(redis.exceptions.ConnectionError, OSError):
                client = redis.Redis.from_url(self.url, socket_timeout=1)
                try:
                    if client.ping():
                        return self
                finally:
                    client.close()
            time.sleep(0.02)
        self.stop()
        raise RedisServerError(f"redis-server did not answer within {timeout_s}s")

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stderr:
            self._process.stderr.close()
        self._process = None

    def kill(self) -> None:
        """End the server with SIGKILL (no shutdown, no final save): a crash, for chaos tests
        and for a demo that must stop at once."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self.stop()

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

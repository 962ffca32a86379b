"""A listening socket on loopback whose connections are each served on a thread of their own:
what a source's egress proxy and relay have in common."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


class LoopbackServer:
    """Accepts on ``127.0.0.1:port`` (a free port) and calls ``serve(connection)`` on a thread
    named ``{name}-{port}-conn`` for each, until ``close()``."""

    def __init__(self, name: str, serve: Callable[[socket.socket], None]) -> None:
        self._serve = serve
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # how soon close() is noticed
        self.port = int(self._listener.getsockname()[1])
        self.name = f"{name}-{self.port}"
        self.closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=self.name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.closed.set()
        self._thread.join(2)
        self._listener.close()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True,
                             name=f"{self.name}-conn").start()

"""TCP endpoints that misbehave: one that accepts and says nothing (a stalled stream, or a
destination that counts who reached it), and an RTSP server that redirects every request."""

from __future__ import annotations

import contextlib
import socket
import threading


class SilentTcpServer:
    """Accepts every connection on ``host`` and holds it open without sending a byte."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.port = int(self._sock.getsockname()[1])
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._held.append(conn)

    def __enter__(self) -> SilentTcpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._held:
            conn.close()
        self._sock.close()


class RtspRedirector:
    """An RTSP server on loopback answering the first request of each connection with
    ``reply`` (``{cseq}`` and ``{location}`` filled in): by default ``302`` to ``location``."""

    PLAIN = "RTSP/1.0 302 Found\r\n{cseq}\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"

    def __init__(self, location: str, reply: str = PLAIN) -> None:
        self.location = location
        self.reply = reply
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                request = conn.recv(4096).decode("latin-1")
                cseq = next((line for line in request.split("\r\n")
                             if line.lower().startswith("cseq")), "CSeq: 1")
                conn.sendall(self.reply.format(cseq=cseq, location=self.location).encode())
                with contextlib.suppress(OSError):
                    while conn.recv(4096):
                        pass

    def __enter__(self) -> RtspRedirector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(5)

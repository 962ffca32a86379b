"""The way out for HTTP(S) and HLS sources: a forward proxy on loopback that applies the
network policy to every connection FFmpeg makes, not only to the URL it was given.

FFmpeg follows HTTP redirects and opens every HLS segment URL on its own, and resolves names
itself; a check of the stream's URL alone cannot see where those go. So each HTTP(S) source
hands FFmpeg an ``http_proxy`` of its own (this proxy), and the proxy:

- resolves the destination itself, refuses it if any address is refused (``netpolicy.py``),
  and connects to the address it checked, so a DNS answer that changes afterwards (rebinding)
  cannot redirect the connection;
- sees each redirect's target and each segment as a request of its own, and checks it alike;
- forwards one request per connection (``Connection: close`` upstream, nothing further read
  from FFmpeg), so a kept-alive connection cannot carry a later request to another host;
- tunnels HTTPS with CONNECT (TLS stays end to end), after the same check of the host.

A refused request gets 403 and is recorded; the source then fails for good, naming the rule.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from urllib.parse import urlsplit

from stream.sources.loopback import LoopbackServer
from stream.sources.netpolicy import DestinationRefused, NetworkPolicy, Resolver, resolve_host

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
CHUNK = 64 * 1024
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization", b"te",
    b"trailer", b"upgrade",
})


class EgressProxy:
    """One source's proxy; ``url`` goes to FFmpeg as ``http_proxy``. See the module docstring."""

    def __init__(self, policy: NetworkPolicy, *, timeout_s: float,
                 resolve: Resolver = resolve_host) -> None:
        self.policy = policy
        self.timeout_s = timeout_s
        self.resolve = resolve
        self._lock = threading.Lock()
        self._refusal: str | None = None
        self._server = LoopbackServer("egress", self._serve)
        self.port = self._server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def refusal(self) -> str | None:
        """The latest request the policy refused (None: none was)."""
        with self._lock:
            return self._refusal

    def close(self) -> None:
        self._server.close()

    # -- serving -----------------------------------------------------------------------------

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(self.timeout_s)
        try:
            head = _read_head(client)
            if head is None:
                return
            request_line, _, rest = head.partition(b"\r\n")
            parts = request_line.split(b" ")
            if len(parts) != 3:
                _answer(client, 400, "not an HTTP request")
                return
            method, target, version = parts
            if method == b"CONNECT":
                self._tunnel(client, target.decode("latin-1"))
            elif method in (b"GET", b"HEAD"):
                self._forward(client, method, target.decode("latin-1"), version, rest)
            else:
                _answer(client, 405, "only GET, HEAD and CONNECT go out")
        except (OSError, ValueError) as exc:
            log.debug("egress proxy %d: %s", self.port, exc)
        finally:
            client.close()

    def _destination(self, client: socket.socket, host: str, port: int) -> socket.socket | None:
        """A connection to ``host`` at an address the policy allows, or None (refused, 403)."""
        try:
            addresses = self.policy.vetted_addresses(host, self.resolve)
        except DestinationRefused as exc:
            with self._lock:
                self._refusal = str(exc)
            log.warning("egress refused %s:%d: %s", host, port, exc)
            _answer(client, 403, str(exc))
            return None
        if not addresses:
            _answer(client, 502, f"{host} does not resolve")
            return None
        return socket.create_connection((str(addresses[0]), port), timeout=self.timeout_s)

    def _tunnel(self, client: socket.socket, target: str) -> None:
        host, _, port_text = target.rpartition(":")
        if not host or not port_text.isdigit():
            _answer(client, 400, f"CONNECT needs host:port, got {target!r}")
            return
        upstream = self._destination(client, host.strip("[]"), int(port_text))
        if upstream is None:
            return
        with upstream:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            _relay(client, upstream, self.timeout_s)

    def _forward(self, client: socket.socket, method: bytes, target: str, version: bytes,
                 headers: bytes) -> None:
        url = urlsplit(target)
        if url.scheme != "http" or not url.hostname:
            _answer(client, 400, f"a proxied request needs an absolute http:// URL, got "
                                 f"{target[:80]!r}")
            return
        upstream = self._destination(client, url.hostname, url.port or 80)
        if upstream is None:
            return
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        kept = [line for line in headers.split(b"\r\n")
                if line and line.split(b":", 1)[0].strip().lower() not in HOP_BY_HOP]
        request = b"\r\n".join([b" ".join([method, path.encode("latin-1"), version]), *kept,
                                b"Connection: close", b"", b""])
        with upstream:
            upstream.sendall(request)
            # Upstream to FFmpeg only: anything more FFmpeg sends is not forwarded.
            while True:
                data = upstream.recv(CHUNK)
                if not data:
                    return
                client.sendall(data)


def _read_head(sock: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return None
        data += chunk
        if len(data) > MAX_HEAD_BYTES:
            raise ValueError("request head too large")
    return data.split(b"\r\n\r\n", 1)[0]


def _answer(sock: socket.socket, status: int, reason: str) -> None:
    body = reason.encode("utf-8", "replace")
    titles = {400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed",
              502: "Bad Gateway"}
    sock.sendall(
        f"HTTP/1.1 {status} {titles.get(status, 'Error')}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)


def _relay(a: socket.socket, b: socket.socket, timeout_s: float) -> None:
    """Both directions until either side closes or nothing moves for ``timeout_s``."""
    sockets = [a, b]
    while True:
        ready, _, _ = select.select(sockets, [], [], timeout_s)
        if not ready:
            return
        for sock in ready:
            data = sock.recv(CHUNK)
            if not data:
                return
            (b if sock is a else a).sendall(data)

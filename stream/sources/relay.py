"""The way out for RTSP and RTMP sources: a relay on loopback that connects to the camera at an
address the network policy checked, and refuses the RTSP redirects FFmpeg would follow.

FFmpeg resolves a camera's name itself and follows an RTSP ``3xx`` to any ``Location`` (an
allowed camera answering ``302`` to ``rtsp://169.254.169.254/`` sends it to the metadata
service), so a check of the URL cannot bound where it connects. Each RTSP(S)/RTMP(S) source
therefore hands FFmpeg the relay's loopback URL instead of the camera's, and the relay, per
connection FFmpeg opens:

- resolves the camera's name itself, refuses it if any address is refused (``netpolicy.py``),
  and connects to an address it checked (the first that answers), so a DNS answer that changes
  afterwards (rebinding) cannot move the connection;
- reads RTSP replies as FFmpeg reads them (``rtsp_replies.py``): a redirect is refused and
  recorded, so the source fails for good naming the ``Location``; each reply's ``Transport``
  gets ``source=`` the checked address, so UDP RTCP goes to the camera and a reply cannot point
  FFmpeg's UDP packets elsewhere;
- terminates TLS for ``rtsps``/``rtmps`` (SNI is the camera's name; certificates are not
  verified, as FFmpeg does not verify them by default), speaking plain RTSP/RTMP to FFmpeg on
  loopback.

What FFmpeg sends is forwarded untouched (digest authentication covers the request URI it
sends, which names the relay); RTMP's ``tcUrl`` is given as the camera's own (``rtmp_tcurl``).
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from stream.sources.loopback import LoopbackServer
from stream.sources.netpolicy import (
    Address,
    DestinationRefused,
    NetworkPolicy,
    Resolver,
    parse_address,
    resolve_host,
)
from stream.sources.rtsp_replies import RtspRedirect, RtspReplies

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "rtmps": 443}
PLAIN = {"rtsp": "rtsp", "rtsps": "rtsp", "rtmp": "rtmp", "rtmps": "rtmp"}
RELAYED_SCHEMES = frozenset(DEFAULT_PORTS)


class SourceRelay:
    """One source's relay; FFmpeg opens ``url`` (see the module docstring)."""

    def __init__(self, policy: NetworkPolicy, url: str, *, timeout_s: float,
                 resolve: Resolver = resolve_host) -> None:
        parts = urlsplit(url)
        if parts.scheme not in RELAYED_SCHEMES or not parts.hostname:
            raise ValueError(f"not a relayed source URL: {parts.scheme}://")
        self.policy = policy
        self.timeout_s = timeout_s
        self.resolve = resolve
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.upstream_port = parts.port or DEFAULT_PORTS[self.scheme]
        self._lock = threading.Lock()
        self._refusal: str | None = None
        self._failure: str | None = None
        self._open: set[socket.socket] = set()
        self._server = LoopbackServer("relay", self._serve)
        self.port = self._server.port
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (f"{userinfo}@" if userinfo else "") + f"127.0.0.1:{self.port}"
        self.url = urlunsplit((PLAIN[self.scheme], netloc, parts.path, parts.query, ""))
        """What FFmpeg opens: the camera's URL, with the relay's address and a plain scheme."""
        self.tcurl = rtmp_tcurl(url) if PLAIN[self.scheme] == "rtmp" else None
        """RTMP's ``tcUrl`` as FFmpeg would send it to the camera itself (servers may pick a
        virtual host by it), rather than one naming the relay."""

    def refusal(self) -> str | None:
        """Why the latest connection was refused (the policy, or a redirect); None if none."""
        with self._lock:
            return self._refusal

    def take_failure(self) -> str | None:
        """Why the latest connection could not reach the camera (retryable: "Connection
        refused"), once; None if it did. FFmpeg only sees the relay close, so this is what says
        what happened."""
        with self._lock:
            failure, self._failure = self._failure, None
            return failure

    def close(self) -> None:
        self._server.close()
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            _shut(sock)

    # -- serving -----------------------------------------------------------------------------

    def _fail(self, why: str) -> None:
        with self._lock:
            self._failure = why
        log.info("relay to %s:%d: %s", self.host, self.upstream_port, why)

    def _refuse(self, why: str) -> None:
        with self._lock:
            self._refusal = why
        log.warning("relay to %s:%d refused: %s", self.host, self.upstream_port, why)

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            try:
                addresses = self.policy.vetted_addresses(self.host, self.resolve)
            except DestinationRefused as exc:
                self._refuse(str(exc))
                return
            if not addresses:
                self._fail("the host does not resolve")
                return
            address, upstream = self._connect(addresses)
            if upstream is None:
                return
            if self.scheme in ("rtsps", "rtmps"):
                try:
                    upstream = _tls(upstream, self.host)
                except (OSError, ssl.SSLError) as exc:
                    self._fail(f"TLS failed: {exc}")
                    return
            with self._lock:
                if self._server.closed.is_set():
                    return
                self._open.update((client, upstream))
            replies = RtspReplies(address).feed if self.scheme.startswith("rtsp") else None
            self._pump(client, upstream, replies)
        except (OSError, ValueError) as exc:
            log.debug("relay %d: %s", self.port, exc)
        finally:
            with self._lock:
                self._open.difference_update((client, upstream))
            _shut(client)
            if upstream is not None:
                _shut(upstream)

    def _connect(self, addresses: list[Address]) -> tuple[Address, socket.socket | None]:
        """The first checked address that accepts, as FFmpeg would try them in turn, all
        within the open timeout."""
        deadline = time.monotonic() + self.timeout_s
        error: OSError | None = None
        for address in addresses:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                return address, socket.create_connection((str(address), self.upstream_port),
                                                          timeout=left)
            except OSError as exc:
                error = exc
        reason = (error.strerror if error and error.strerror else str(error or "timed out"))
        self._fail(reason)
        return addresses[0], None

    def _pump(self, client: socket.socket, upstream: socket.socket,
              replies: Callable[[bytes], bytes] | None) -> None:
        """Both directions on this one thread (a TLS socket must not be read and written from
        two): FFmpeg -> camera untouched, camera -> FFmpeg through ``replies``. No timeout of
        its own: an RTSP control connection idles between keep-alives (UDP), and FFmpeg's read
        timeout closes its side, which ends both."""
        client.settimeout(None)
        upstream.settimeout(None)
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ, client)
            selector.register(upstream, selectors.EVENT_READ, upstream)
            try:
                while True:
                    # Records TLS has already decrypted do not make the socket readable.
                    pending = isinstance(upstream, ssl.SSLSocket) and upstream.pending()
                    ready: list[socket.socket] = (
                        [upstream] if pending else [key.data for key, _ in selector.select()])
                    for sock in ready:
                        data = sock.recv(CHUNK)
                        if not data:
                            return
                        if sock is upstream:
                            client.sendall(replies(data) if replies else data)
                        else:
                            upstream.sendall(data)
            except RtspRedirect as exc:
                self._refuse(str(exc))


def rtmp_tcurl(url: str) -> str:
    """``proto://host:port/app`` of an RTMP URL, with the application split from the play
    path as FFmpeg's ``rtmp_open`` does."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or DEFAULT_PORTS[parts.scheme]
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    if path.startswith("/ondemand/"):
        app = "ondemand"
    else:
        rest = path[1:]
        slash = rest.find("/")
        if slash < 0:
            app = ""
        else:
            colon = rest.find(":", slash + 1)
            second = rest.find("/", slash + 1)
            app = rest[:slash] if second < 0 or 0 <= colon < second else rest[:second]
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{shown}:{port}/{app}"


def _tls(sock: socket.socket, host: str) -> socket.socket:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    name = None if parse_address(host) is not None else host
    return context.wrap_socket(sock, server_hostname=name)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()

"""Which stream URLs are accepted, and what FFmpeg may reach while reading one.

A stream URL comes from operators and from the HTTP API, so it is untrusted: without limits an
FFmpeg URL reads local files (``file:``, ``concat:``, ``subfile:``), inline data (``data:``) or
pipes, directly or through a playlist that refers to them. Two fences stop that:

- the URL's own scheme, found exactly as FFmpeg finds it, must be in ``ingest.allowed_schemes``;
- FFmpeg's ``protocol_whitelist`` is set for every open, so nested opens (HLS segments, RTSP's
  RTP/TCP legs) are held to it too. A network stream never gets ``file`` or the other local
  protocols; a local file gets only those.

A third, the network policy (``stream.sources.netpolicy``), keeps network sources away from
cloud metadata services and link-local, unspecified, multicast and broadcast addresses.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import unquote

from engines.errors import UserError
from stream.config import IngestSettings, Settings
from stream.sources.netpolicy import DestinationRefused, NetworkPolicy, url_host

LOCAL_PROTOCOLS = frozenset({"file", "pipe", "fd", "concat", "concatf", "subfile", "data", "cache"})
"""FFmpeg protocols that read this machine (files, descriptors) or inline data."""

_SCHEME_CHARS = re.compile(r"[A-Za-z0-9+.-]*")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@:\s]*):[^/@\s]*@")


class UrlRefused(UserError, ValueError):
    """A stream URL the configuration does not allow; the message says why and what is."""


@dataclass(frozen=True)
class SourceTarget:
    """A checked stream URL: what FFmpeg opens and which protocols it may use for it."""

    url: str
    """What FFmpeg opens (a plain path for local files)."""
    scheme: str
    """FFmpeg's protocol for the URL: 'file' for plain paths."""
    protocol_whitelist: tuple[str, ...]

    @property
    def local(self) -> bool:
        return self.scheme in LOCAL_PROTOCOLS


def ffmpeg_scheme(url: str) -> str:
    """The protocol FFmpeg would pick for ``url`` (the rules of libavformat's url_find_protocol).

    Plain paths and Windows drive paths are 'file'; 'subfile,,start,...:' is 'subfile'.
    """
    prefix = _SCHEME_CHARS.match(url)
    length = prefix.end() if prefix else 0
    dos_path = len(url) >= 3 and url[0].isalpha() and url[1] == ":" and url[2] in "/\\"
    rest = url[length:]
    if dos_path:
        return "file"
    if rest.startswith(":"):
        return url[:length].lower()
    if url.startswith("subfile,") and ":" in url[length + 1 :]:
        return "subfile"
    return "file"


_PASSWORD_PARAMETER = re.compile(r"(?i)([?&]password=)[^&\s]*")


def redact(text: str) -> str:
    """``text`` with every URL password replaced by ``***``: the ``user:password@`` of any
    ``scheme://`` (stream and Redis URLs alike) and a ``password=`` query parameter. The one
    redaction for logs, errors, the API and Redis."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _PASSWORD_PARAMETER.sub(r"\1***", text)


def check_url(url: str, settings: IngestSettings) -> SourceTarget:
    """Accept ``url`` under ``settings`` or raise ``UrlRefused`` naming the problem."""
    if not url or not url.strip():
        raise UrlRefused("the stream URL is empty")
    if any(ch in url for ch in "\r\n\x00"):
        raise UrlRefused("the stream URL contains control characters")
    scheme = ffmpeg_scheme(url)
    allowed = settings.allowed_schemes
    if not scheme:
        raise UrlRefused(f"cannot tell the scheme of {redact(url)!r}")
    if scheme == "file" and "file" not in allowed and url[:5].lower() != "file:" \
            and not os.path.exists(url):
        raise UrlRefused(f"{redact(url)!r} is not a URL: expected {expected(allowed)} (a local "
                         "file needs 'file' in ingest.allowed_schemes)")
    if scheme not in allowed:
        shown = ", ".join(allowed) or "none"
        hint = (
            "; local files and inline data are refused unless ingest.allowed_schemes lists them"
            if scheme in LOCAL_PROTOCOLS
            else ""
        )
        raise UrlRefused(f"URL scheme {scheme!r} is not allowed (allowed: {shown}){hint}")
    configured = settings.protocol_whitelist
    if scheme not in configured:
        raise UrlRefused(
            f"URL scheme {scheme!r} is allowed but FFmpeg's protocol whitelist lacks it "
            f"(ingest.protocol_whitelist: {', '.join(configured)})"
        )
    if scheme in LOCAL_PROTOCOLS:
        whitelist = tuple(p for p in configured if p in LOCAL_PROTOCOLS)
    else:
        whitelist = tuple(p for p in configured if p not in LOCAL_PROTOCOLS)
        host = url_host(url)
        if host:
            try:  # names and literal addresses here; resolved addresses at each connect
                network_policy(settings).check_host(host)
            except DestinationRefused as exc:
                raise UrlRefused(str(exc)) from None
    if scheme == "file":
        # An absolute path: FFmpeg cannot mistake a relative 'name:x.mp4' for a protocol.
        target_url = os.path.abspath(_file_url_path(url) if url[:5].lower() == "file:" else url)
    else:
        # FFmpeg matches protocol names case-sensitively; RTSP://host works as rtsp://host.
        target_url = scheme + url[len(scheme) :]
    return SourceTarget(url=target_url, scheme=scheme, protocol_whitelist=whitelist)


def expected(allowed: list[str]) -> str:
    """The network URLs ``allowed`` schemes admit, as a user writes them."""
    forms = [f"{scheme}://..." for scheme in allowed if scheme not in LOCAL_PROTOCOLS]
    if not forms:
        return "nothing: ingest.allowed_schemes names no network scheme"
    return "one of " + ", ".join(forms)


def check_streams(settings: Settings) -> None:
    """Every configured stream's URL under the policy the service applies, so that ``config
    check`` and ``serve`` refuse what would otherwise fail only once the service runs."""
    refused = []
    for index, spec in enumerate(settings.streams):
        try:
            check_url(spec.url, settings.ingest)
        except UrlRefused as exc:
            refused.append(f"stream {spec.id!r} (streams[{index}].url): {exc}")
    if refused:
        raise UrlRefused("; ".join(refused))


def _file_url_path(url: str) -> str:
    """The local path of a ``file:`` URL (``file:/a``, ``file:///a``, ``file:a``)."""
    rest = url[len("file:") :]
    if rest.startswith("//"):
        host, _, path = rest[2:].partition("/")
        if host not in ("", "localhost"):
            raise UrlRefused(f"file URL names a remote host {host!r}")
        return unquote("/" + path)
    return rest


def network_policy(settings: IngestSettings) -> NetworkPolicy:
    return NetworkPolicy.build(settings.network_deny, settings.network_allow)

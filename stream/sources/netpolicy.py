"""Where a network source may connect: a server-side request forgery guard.

A stream URL is a request the service makes on the operator's behalf, from inside their
network, again and again (reconnects). Some destinations must never be reachable that way: the
cloud metadata services (instance credentials) and link-local, unspecified, multicast and
broadcast addresses. They are refused by default, in every spelling a URL parser or
``inet_aton`` accepts (dotted, decimal, hex, octal, short forms, IPv4-mapped and IPv4-compatible
IPv6, trailing dots) and after DNS resolution: each connection attempt resolves the host and
checks every address it resolves to. Private ranges stay allowed by default, since that is
where cameras live; ``ingest.network_deny`` adds CIDRs to refuse and ``ingest.network_allow``
CIDRs that override every denial (e.g. a camera on a link-local address).

HTTP(S) and HLS sources go out through ``egress.py``, a proxy that applies this policy to every
connection FFmpeg makes (redirects and segments included) at the address it checked; RTSP(S)
and RTMP(S) through ``relay.py``, which connects to the address it checked and refuses RTSP
redirects. Other network schemes an operator allows are checked here before each connect only.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from engines.errors import UserError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], list[str]]

DENIED_BY_DEFAULT: tuple[tuple[str, str], ...] = (
    ("169.254.0.0/16", "link-local"),
    ("fe80::/10", "link-local"),
    ("0.0.0.0/8", "unspecified"),
    ("::/128", "unspecified"),
    ("224.0.0.0/4", "multicast"),
    ("ff00::/8", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("100.100.100.200/32", "cloud metadata (Alibaba)"),
    ("fd00:ec2::254/128", "cloud metadata (AWS IPv6)"),
)
METADATA_HOSTS = frozenset({
    "metadata", "metadata.google.internal", "metadata.goog", "instance-data",
    "instance-data.ec2.internal", "metadata.azure.com", "metadata.tencentyun.com",
})


class DestinationRefused(UserError, ValueError):
    """The source's host is a destination the network policy refuses; never retried."""


@dataclass(frozen=True)
class NetworkPolicy:
    deny: tuple[tuple[Network, str], ...]
    allow: tuple[Network, ...] = ()

    @classmethod
    def build(cls, deny: Sequence[str] = (), allow: Sequence[str] = ()) -> NetworkPolicy:
        rules = [(ipaddress.ip_network(cidr), why) for cidr, why in DENIED_BY_DEFAULT]
        rules += [(ipaddress.ip_network(cidr, strict=False), f"ingest.network_deny {cidr}")
                  for cidr in deny]
        return cls(tuple(rules), tuple(ipaddress.ip_network(c, strict=False) for c in allow))

    def refusal(self, address: Address) -> str | None:
        """Why ``address`` is refused, or None."""
        for candidate in _views(address):
            if any(candidate in network for network in self.allow
                   if network.version == candidate.version):
                return None
        for candidate in _views(address):
            for network, why in self.deny:
                if network.version == candidate.version and candidate in network:
                    return f"{why} ({network})"
        return None

    def check_host(self, host: str, resolve: Resolver | None = None) -> None:
        """Refuse ``host`` by name, by literal address in any spelling, or (with ``resolve``)
        by any address it resolves to; DestinationRefused names the rule."""
        self.vetted_addresses(host, resolve)

    def vetted_addresses(self, host: str, resolve: Resolver | None = None) -> list[Address]:
        """The addresses ``host`` stands for (its literal, or what ``resolve`` gives), every
        one allowed; DestinationRefused naming the rule if any is not. Connecting to one of
        these, not to the name, is what leaves no room for DNS rebinding."""
        name = host.strip().rstrip(".").lower()
        if name in METADATA_HOSTS:
            raise DestinationRefused(f"host {host!r} is a cloud metadata service name; refused "
                                     "by the network policy")
        literal = parse_address(name)
        addresses = [literal] if literal is not None else (
            [ipaddress.ip_address(a) for a in resolve(name)] if resolve else [])
        for address in addresses:
            why = self.refusal(address)
            if why is not None:
                shown = host if literal is not None else f"{host} (resolves to {address})"
                raise DestinationRefused(
                    f"destination {shown} is refused by the network policy: {why}; allow it "
                    "with ingest.network_allow if it really is a camera")
        return addresses


def _views(address: Address) -> list[Address]:
    """The address and, for IPv4-mapped/compatible IPv6, the IPv4 address it carries."""
    views: list[Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            views.append(address.ipv4_mapped)
        elif int(address) >> 32 == 0 and int(address) > 1:  # ::a.b.c.d (IPv4-compatible)
            views.append(ipaddress.IPv4Address(int(address)))
    return views


def parse_address(host: str) -> Address | None:
    """``host`` as an IP address if it spells one in any form a resolver accepts: dotted,
    ``2852039166``, ``0xa9fea9fe``, ``0251.0376.0251.0376``, ``169.254.43518``, ``[::ffff:...]``."""
    text = host.strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))  # the classic lenient forms
    except OSError:
        return None


def resolve_host(host: str) -> list[str]:
    """Every address ``host`` resolves to (what a connect could reach)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return []  # unresolvable: the connect itself fails and says so
    return sorted({str(info[4][0]).split("%")[0] for info in infos})


def url_host(url: str) -> str | None:
    """The host of a network URL, or None when it has none."""
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None

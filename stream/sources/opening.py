"""How a source's input is opened, at its first connect and at every reconnect: the URL and the
options FFmpeg is given, and the way out its connections take.

A network source's connections leave through a way out of the service's own, which applies the
network policy where FFmpeg cannot see: ``egress.py`` (an HTTP proxy) for HTTP(S) and HLS,
``relay.py`` for RTSP(S) and RTMP(S). What they saw (a refusal, a camera that did not answer)
is what a failure says, rather than FFmpeg's view of a connection closed under it.
"""

from __future__ import annotations

import av

from stream.config import IngestSettings
from stream.sources.egress import EgressProxy
from stream.sources.failures import SourceFailure
from stream.sources.netpolicy import DestinationRefused, Resolver, url_host
from stream.sources.relay import RELAYED_SCHEMES, SourceRelay
from stream.sources.urls import SourceTarget, network_policy, redact


def enable_ffmpeg_error_log() -> None:
    """PyAV discards FFmpeg's log by default, and with it the reason behind most errors
    ("moov atom not found", "Format bintext not on whitelist"); readers capture errors on their
    own thread. Any level the application chose is left alone."""
    if av.logging.get_level() is None:
        av.logging.set_level(av.logging.ERROR)


def ffmpeg_options(
    target: SourceTarget, settings: IngestSettings, proxy_url: str | None = None
) -> dict[str, str]:
    """FFmpeg options for opening ``target``: whitelists, the protocol's own timeouts, and for
    HTTP(S) the egress proxy every request goes through (redirects and HLS segments too)."""
    options = {
        "protocol_whitelist": ",".join(target.protocol_whitelist),
        "format_whitelist": ",".join(settings.formats),
    }
    io_timeout_us = str(round(settings.read_timeout_s * 1_000_000))
    scheme = target.scheme
    if scheme in ("rtsp", "rtsps"):
        options["rtsp_transport"] = settings.rtsp_transport
        # libavformat 59 renamed the socket timeout 'stimeout' to 'timeout'.
        modern = av.library_versions["libavformat"][0] >= 59
        options["timeout" if modern else "stimeout"] = io_timeout_us
        options["allowed_media_types"] = "video"
        # No frame-rate probing from frame durations: it held every open (and every reconnect)
        # about 0.7 s longer, and the rate comes from the SPS timing (or is left unknown, which
        # only turns off skipping non-reference frames for that stream).
        options["fpsprobesize"] = "0"
    elif scheme in ("http", "https"):
        options["timeout"] = io_timeout_us
        options["rw_timeout"] = io_timeout_us  # also passed on to HLS segment requests
        if proxy_url is not None:
            options["http_proxy"] = proxy_url  # HLS passes it on to segment requests too
    elif not target.local:
        # Not 'timeout': for RTMP that option means "listen for an incoming connection".
        options["rw_timeout"] = io_timeout_us
    return options


class Opening:
    """One source's ``target`` as FFmpeg opens it; ``close()`` when the source stops."""

    def __init__(self, target: SourceTarget, settings: IngestSettings, resolve: Resolver) -> None:
        self.target = target
        self.settings = settings
        self.resolve = resolve
        self._host = None if target.local else url_host(target.url)
        self._proxy: EgressProxy | None = None
        self._relay: SourceRelay | None = None
        policy = network_policy(settings)
        if target.scheme in ("http", "https"):
            # Longer than FFmpeg's own timeouts, so that FFmpeg's decide and say so.
            slack = 2 * max(settings.open_timeout_s, settings.read_timeout_s) + 1
            self._proxy = EgressProxy(policy, timeout_s=slack, resolve=resolve)
        elif target.scheme in RELAYED_SCHEMES and self._host:
            self._relay = SourceRelay(policy, target.url, timeout_s=settings.open_timeout_s,
                                      resolve=resolve)

    @property
    def url(self) -> str:
        """What FFmpeg opens: the target, or its relay."""
        return self._relay.url if self._relay else self.target.url

    def options(self) -> dict[str, str]:
        options = ffmpeg_options(self.target, self.settings,
                                 self._proxy.url if self._proxy else None)
        if self._relay and self._relay.tcurl:
            options["rtmp_tcurl"] = self._relay.tcurl
        return options

    def begin(self) -> None:
        """Before each connect: what the host's name resolves to now must be allowed (the way
        out checks each connection again; this says so before FFmpeg tries)."""
        if self._host:
            try:
                network_policy(self.settings).check_host(self._host, self.resolve)
            except DestinationRefused as exc:
                raise SourceFailure(f"{exc} (not retried)", permanent=True) from None
        if self._relay:
            self._relay.take_failure()  # an earlier session's, if FFmpeg never asked

    def raise_what_the_way_out_saw(self) -> None:
        """After FFmpeg failed or ended: a refusal (permanent) or a camera that could not be
        reached (retried), if the way out saw one."""
        if self._proxy and (refusal := self._proxy.refusal()):
            raise SourceFailure(f"{refusal} (reached through a redirect or an HLS playlist; "
                                "not retried)", permanent=True)
        if self._relay:
            if refusal := self._relay.refusal():
                raise SourceFailure(f"{refusal} (not retried)", permanent=True)
            if failure := self._relay.take_failure():
                raise SourceFailure(f"{failure} (connecting to {redact(self.target.url)})",
                                    permanent=False)

    def close(self) -> None:
        for way_out in (self._proxy, self._relay):
            if way_out is not None:
                way_out.close()

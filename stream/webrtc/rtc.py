"""How aiortc is set up to receive: codecs, decoder threads, host candidates, ICE servers.

aiortc is built to be a browser-like peer, and some of its defaults are wrong for a service:
- it negotiates H.264 only in the Constrained Baseline profile, though FFmpeg's decoder reads
  every 8-bit 4:2:0 profile; encoders such as OBS offer High, so Main and High are added to its
  receive codecs (nothing here ever encodes);
- its decoders use FFmpeg's default threading; here each stream gets a stated number of slice
  threads (frame threads can deadlock with PyAV's log callback on, and add a frame of latency);
- with no ICE servers configured it adds a public STUN server: this never passes it None;
- its ICE library offers every address but loopback; ``host_addresses`` replaces that list.

aiortc and aioice keep these as module state, so they apply to the whole process; one service
runs per process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import aioice.ice
import aiortc.codecs
import aiortc.rtcrtpreceiver
from aiortc import RTCConfiguration, RTCIceServer
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import H264Profile

from stream.config import WebRTCSettings

DECODED_H264_PROFILES = frozenset({
    H264Profile.PROFILE_CONSTRAINED_BASELINE,
    H264Profile.PROFILE_BASELINE,
    H264Profile.PROFILE_MAIN,
    H264Profile.PROFILE_CONSTRAINED_HIGH,
    H264Profile.PROFILE_HIGH,
})
"""The H.264 profiles accepted from publishers (packetization-mode 1)."""

_ADDED_H264 = ("4d001f", "640c1f", "64001f")  # Main, Constrained High, High (level 3.1)

_lock = threading.Lock()
_original_host_addresses = aioice.ice.get_host_addresses
_original_get_decoder = aiortc.rtcrtpreceiver.get_decoder
_decoder_threads = 1


def describe_h264_profiles() -> str:
    return "Constrained Baseline, Baseline, Main, Constrained High and High"


def configure(settings: WebRTCSettings) -> None:
    """Apply ``settings`` to aiortc and aioice (process-wide; idempotent)."""
    global _decoder_threads
    with _lock:
        _add_h264_profiles()
        _decoder_threads = settings.decoder_threads
        aiortc.rtcrtpreceiver.get_decoder = _decoder_with_threads
        aioice.ice.get_host_addresses = (
            _fixed_addresses(list(settings.host_addresses))
            if settings.host_addresses else _original_host_addresses
        )


def rtc_configuration(settings: WebRTCSettings) -> RTCConfiguration:
    """The peer connection's configuration: the configured ICE servers, and never None
    (which would make aiortc add its public STUN server)."""
    return RTCConfiguration(iceServers=[
        RTCIceServer(urls=server.urls, username=server.username,
                     credential=server.credential.get_secret_value()
                     if server.credential else None)
        for server in settings.ice_servers
    ])


def link_headers(settings: WebRTCSettings) -> list[str]:
    """``Link: <url>; rel="ice-server"`` values for a WHIP answer (RFC 9725 section 4.6)."""
    links = []
    for server in settings.ice_servers:
        for url in server.urls:
            link = f'<{url}>; rel="ice-server"'
            if server.username is not None:
                link += f'; username="{_quoted(server.username)}"'
            if server.credential is not None:
                secret = _quoted(server.credential.get_secret_value())
                link += f'; credential="{secret}"; credential-type="password"'
            links.append(link)
    return links


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _add_h264_profiles() -> None:
    video = aiortc.codecs.CODECS["video"]
    present = {c.parameters.get("profile-level-id") for c in video if c.name == "H264"}
    template = next(c for c in video if c.name == "H264")
    next_pt = max(c.payloadType for c in video if c.payloadType is not None) + 1
    for profile_level_id in _ADDED_H264:
        if profile_level_id in present:
            continue
        video.append(RTCRtpCodecParameters(
            mimeType="video/H264", clockRate=90000, payloadType=next_pt,
            rtcpFeedback=list(template.rtcpFeedback),
            parameters={**template.parameters, "profile-level-id": profile_level_id},
        ))
        video.append(RTCRtpCodecParameters(
            mimeType="video/rtx", clockRate=90000, payloadType=next_pt + 1,
            parameters={"apt": next_pt},
        ))
        next_pt += 2


def _decoder_with_threads(codec: RTCRtpCodecParameters) -> Any:
    decoder = _original_get_decoder(codec)
    context = getattr(decoder, "codec", None)
    if context is not None and codec.mimeType.lower().startswith("video/"):
        # Set before the first packet: PyAV opens the codec context lazily on first decode.
        context.thread_type = "SLICE"
        context.thread_count = _decoder_threads
    return decoder


def _fixed_addresses(addresses: list[str]) -> Callable[..., list[str]]:
    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    return host_addresses

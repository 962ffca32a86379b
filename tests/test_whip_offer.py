"""What a WHIP offer must be (stream/webrtc/offer.py) and how aiortc is configured (rtc.py):
checked on SDP text, without a network (the end-to-end tests are in tests/netns/)."""

from __future__ import annotations

import aiortc.codecs
import pytest

from stream.config import ConfigError, WebRTCSettings, load_settings
from stream.webrtc import rtc
from stream.webrtc.offer import OfferError, check_offer, parse_fragment

SESSION = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
)


def media(kind: str, rtpmap: str, direction: str = "sendonly", mid: int = 0,
          fmtp: str | None = None) -> str:
    fmt = "96"
    lines = [
        f"m={kind} 9 UDP/TLS/RTP/SAVPF {fmt}", "c=IN IP4 0.0.0.0", f"a=mid:{mid}",
        f"a={direction}", "a=ice-ufrag:abcd", "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32), "a=setup:actpass", "a=rtcp-mux",
        f"a=rtpmap:{fmt} {rtpmap}",
    ]
    if fmtp:
        lines.append(f"a=fmtp:{fmt} {fmtp}")
    return "\r\n".join(lines) + "\r\n"


VP8 = media("video", "VP8/90000")


def test_a_vp8_offer_is_taken_with_its_ice_credentials() -> None:
    offer = check_offer(SESSION + VP8)
    assert (offer.ice_ufrag, offer.ice_pwd, offer.has_audio) == (
        "abcd", "abcdefghijklmnopqrstuvwx", False)


def test_audio_beside_the_video_is_accepted() -> None:
    assert check_offer(SESSION + VP8 + media("audio", "opus/48000/2", mid=1)).has_audio


@pytest.mark.parametrize("body", ["", "hello", "<html>", "v=1\r\n"])
def test_what_is_not_sdp_is_400(body: str) -> None:
    with pytest.raises(OfferError) as refused:
        check_offer(body)
    assert refused.value.status == 400


def test_sdp_without_media_is_400() -> None:
    with pytest.raises(OfferError, match="no media section") as refused:
        check_offer(SESSION)
    assert refused.value.status == 400


@pytest.mark.parametrize(("sdp", "words"), [
    (SESSION + media("audio", "opus/48000/2"), "0 video and 1 audio"),
    (SESSION + VP8 + media("video", "VP8/90000", mid=1), "2 video"),
    (SESSION + VP8 + media("audio", "opus/48000/2", mid=1)
     + media("audio", "opus/48000/2", mid=2), "2 audio"),
    (SESSION + VP8 + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:1\r\n",
     "application media"),
    (SESSION + media("video", "VP8/90000", direction="recvonly"), "must send it"),
    (SESSION + media("video", "VP9/90000"), "accepted: VP8, or H.264"),
    (SESSION + media("video", "H264/90000", fmtp="packetization-mode=0;profile-level-id=42e01f"),
     "packetization-mode=1"),
])
def test_offers_the_service_cannot_take_are_422_and_say_why(sdp: str, words: str) -> None:
    with pytest.raises(OfferError, match=words) as refused:
        check_offer(sdp)
    assert refused.value.status == 422


@pytest.mark.parametrize("profile", ["42e01f", "42001f", "4d001f", "640c1f", "64001f"])
def test_h264_baseline_to_high_is_taken(profile: str) -> None:
    fmtp = f"level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile}"
    check_offer(SESSION + media("video", "H264/90000", fmtp=fmtp))


def test_h264_high_444_is_refused_naming_the_profiles_taken() -> None:
    fmtp = "packetization-mode=1;profile-level-id=f4001f"
    with pytest.raises(OfferError, match="Constrained Baseline, Baseline, Main"):
        check_offer(SESSION + media("video", "H264/90000", fmtp=fmtp))


def test_a_trickle_fragment_gives_candidates_of_their_section() -> None:
    fragment = parse_fragment(
        "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\nm=video 9 RTP/AVP 0\r\n"
        "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\n"
        "a=end-of-candidates\r\n"
    )
    assert fragment.ice_ufrag == "abcd" and fragment.end_of_candidates
    (candidate,) = fragment.candidates
    assert (candidate.ip, candidate.port, candidate.sdpMid) == ("127.0.0.1", 50000, "0")


@pytest.mark.parametrize("body", ["a=candidate:1 1 udp", "x=whatever", "a=setup:active"])
def test_a_bad_fragment_is_400(body: str) -> None:
    with pytest.raises(OfferError) as refused:
        parse_fragment(body)
    assert refused.value.status == 400


def test_ice_servers_come_from_config_only() -> None:
    # aiortc adds a public STUN server when given None: the configuration is never None.
    assert rtc.rtc_configuration(WebRTCSettings()).iceServers == []
    settings = WebRTCSettings(ice_servers=[
        {"urls": ["stun:stun.example.net:3478"]},
        {"urls": ["turn:turn.example.net:3478"], "username": "u", "credential": 'p"w'},
    ])
    assert [s.urls for s in rtc.rtc_configuration(settings).iceServers] == [
        ["stun:stun.example.net:3478"], ["turn:turn.example.net:3478"]]
    assert rtc.link_headers(settings) == [
        '<stun:stun.example.net:3478>; rel="ice-server"',
        '<turn:turn.example.net:3478>; rel="ice-server"; username="u"; '
        'credential="p\\"w"; credential-type="password"',
    ]


def test_configure_adds_h264_main_and_high_once() -> None:
    rtc.configure(WebRTCSettings())
    rtc.configure(WebRTCSettings())
    profiles = [c.parameters.get("profile-level-id") for c in aiortc.codecs.CODECS["video"]
                if c.name == "H264"]
    assert sorted(profiles) == sorted(["42001f", "42e01f", "4d001f", "640c1f", "64001f"])
    payload_types = [c.payloadType for c in aiortc.codecs.CODECS["video"]]
    assert len(payload_types) == len(set(payload_types))


@pytest.mark.parametrize(("section", "words"), [
    ({"ice_servers": [{"urls": ["http://stun.example.net"]}]}, "not a stun:, turn:"),
    ({"host_addresses": ["not-an-ip"]}, "not an IP address"),
    ({"session_timeout_s": 0}, "session_timeout_s"),
])
def test_bad_webrtc_settings_are_refused_naming_the_field(
    section: dict[str, object], words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        load_settings(webrtc=section)

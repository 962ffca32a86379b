"""What a WHIP offer must be before a peer connection is made for it.

An offer is checked here, on its text, so that every refusal has its own status and a reason
a publisher can act on: not SDP at all (400), or SDP the service cannot take (422: no video,
two video or audio tracks, a data channel, a codec or H.264 profile it cannot decode).
Trickle fragments (PATCH) are parsed here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiortc import RTCIceCandidate
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import SessionDescription, candidate_from_sdp, parse_h264_profile_level_id

from stream.webrtc import rtc


class OfferError(ValueError):
    """An offer or fragment refused; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Offer:
    sdp: str
    ice_ufrag: str | None
    ice_pwd: str | None
    has_audio: bool


def check_offer(text: str) -> Offer:
    """The offer if the service can take it; OfferError (400 or 422) naming what is wrong."""
    if not text.lstrip().startswith("v=0"):
        raise OfferError(400, "the body is not an SDP offer: it must start with 'v=0'")
    try:
        description = SessionDescription.parse(text)
    except Exception as exc:  # aiortc's parser raises whatever a bad line makes it raise
        raise OfferError(400, f"malformed SDP offer ({type(exc).__name__}: {exc})") from None
    kinds = [media.kind for media in description.media]
    if not kinds:
        raise OfferError(400, "malformed SDP offer: no media section (m= line)")
    others = sorted(set(kinds) - {"audio", "video"})
    if others:
        raise OfferError(
            422, f"the offer has {', '.join(others)} media: WHIP takes one video track "
            "(and at most one audio track, ignored)"
        )
    videos = [media for media in description.media if media.kind == "video"]
    if len(videos) != 1 or kinds.count("audio") > 1:
        raise OfferError(
            422, f"the offer has {len(videos)} video and {kinds.count('audio')} audio tracks: "
            "WHIP takes exactly one video track and at most one audio track (ignored)"
        )
    video = videos[0]
    if video.direction not in (None, "sendonly", "sendrecv"):
        raise OfferError(422, f"the video track is {video.direction}: a publisher must send it")
    _check_codecs(video.rtp.codecs)
    ufrag = video.ice.usernameFragment if video.ice else None
    pwd = video.ice.password if video.ice else None
    return Offer(text, ufrag, pwd, has_audio="audio" in kinds)


def _check_codecs(offered: list[RTCRtpCodecParameters]) -> None:
    names = {codec.name.upper() for codec in offered}
    if "VP8" in names:
        return
    h264 = [codec for codec in offered if codec.name.upper() == "H264"]
    for codec in h264:
        if str(codec.parameters.get("packetization-mode", "0")) != "1":
            continue
        try:
            profile, _level = parse_h264_profile_level_id(
                str(codec.parameters.get("profile-level-id", "42e01f"))
            )
        except ValueError:
            continue
        if profile in rtc.DECODED_H264_PROFILES:
            return
    offered_names = ", ".join(sorted(names)) or "none"
    raise OfferError(
        422, f"no video codec the service decodes is offered (offered: {offered_names}); "
        f"accepted: VP8, or H.264 with packetization-mode=1 in the "
        f"{rtc.describe_h264_profiles()} profiles"
    )


@dataclass
class Fragment:
    """A trickle-ice-sdpfrag (RFC 8840): remote candidates, and the ICE credentials they
    belong to (different credentials ask for an ICE restart)."""

    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    candidates: list[RTCIceCandidate] = field(default_factory=list)
    end_of_candidates: bool = False


def parse_fragment(text: str) -> Fragment:
    """A PATCH body as a Fragment; OfferError (400) for a line that is not a fragment's."""
    fragment = Fragment()
    mid: str | None = None
    index = -1
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("m="):
            index += 1
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:"):]
        elif line.startswith("a=ice-ufrag:"):
            fragment.ice_ufrag = line[len("a=ice-ufrag:"):]
        elif line.startswith("a=ice-pwd:"):
            fragment.ice_pwd = line[len("a=ice-pwd:"):]
        elif line.startswith("a=candidate:"):
            try:
                candidate = candidate_from_sdp(line[len("a=candidate:"):])
            except (AssertionError, ValueError, IndexError):
                raise OfferError(400, f"malformed candidate line {line[:80]!r}") from None
            candidate.sdpMid = mid
            candidate.sdpMLineIndex = max(index, 0)
            fragment.candidates.append(candidate)
        elif line == "a=end-of-candidates":
            fragment.end_of_candidates = True
        elif not line.startswith(("a=ice-options:", "a=group:", "c=")):
            raise OfferError(400, f"not a trickle-ice-sdpfrag line: {line[:80]!r}")
    return fragment

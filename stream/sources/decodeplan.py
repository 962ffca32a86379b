"""Decode no more than the sampled frames need, without changing a single decoded pixel.

Sampling 5 fps from a 30 fps stream keeps every 6th frame, but every frame a kept frame refers
to must be decoded too. In a stream without B-frames each frame refers only to earlier ones, so
the frames after the last kept frame of a GOP are needed by nothing once the next keyframe is an
IDR (it empties the decoder's reference list). The planner holds each packet until it knows: a
later kept frame arrives (decode the held ones, then it) or an IDR arrives (the held ones are
skipped). Held packets cost no latency for kept frames.

Only H.264 and HEVC are planned, because only there can the IDR be checked cheaply from the NAL
unit header; the check is what makes the skip exact (an open-GOP I-frame does not qualify).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import av

PLANNED_CODECS = ("h264", "hevc")

_IDR_TYPES = {"h264": frozenset({5}), "hevc": frozenset({19, 20})}
_PARAMETER_SET_TYPES = {"h264": frozenset({7, 8}), "hevc": frozenset({32, 33, 34})}


class NalUnits:
    """Reads NAL unit types from H.264/HEVC packets (Annex B or length-prefixed)."""

    def __init__(self, codec: str, extradata: bytes | None) -> None:
        if codec not in PLANNED_CODECS:
            raise ValueError(f"NAL units of {codec!r} are not read here")
        self.codec = codec
        self.length_size = _length_size(codec, extradata)

    def types(self, data: bytes) -> list[int]:
        # Length prefixes that tile the packet exactly mean MP4-style units; a length of
        # 256..511 bytes also starts with 00 00 01, so start codes are only the fallback.
        headers = _prefixed_headers(data, self.length_size) if self.length_size else None
        if headers is None:
            headers = _annexb_headers(data)
        if self.codec == "h264":
            return [h & 0x1F for h in headers]
        return [(h >> 1) & 0x3F for h in headers]

    def is_idr(self, data: bytes) -> bool:
        return not _IDR_TYPES[self.codec].isdisjoint(self.types(data))

    def has_parameter_sets(self, data: bytes) -> bool:
        return not _PARAMETER_SET_TYPES[self.codec].isdisjoint(self.types(data))


def _length_size(codec: str, extradata: bytes | None) -> int | None:
    # avcC / hvcC records start with version 1; Annex B extradata starts with a start code.
    if not extradata or extradata[0] != 1:
        return None
    if codec == "h264" and len(extradata) >= 5:
        return (extradata[4] & 0x03) + 1
    if codec == "hevc" and len(extradata) >= 22:
        return (extradata[21] & 0x03) + 1
    return None


def _annexb_headers(data: bytes) -> list[int]:
    headers = []
    at = data.find(b"\x00\x00\x01")
    while at != -1 and at + 3 < len(data):
        headers.append(data[at + 3])
        at = data.find(b"\x00\x00\x01", at + 3)
    return headers


def _prefixed_headers(data: bytes, length_size: int) -> list[int] | None:
    headers = []
    at = 0
    while at + length_size < len(data):
        size = int.from_bytes(data[at : at + length_size], "big")
        if size == 0:
            return None
        headers.append(data[at + length_size])
        at += length_size + size
    return headers if at == len(data) else None


class DecodePlanner:
    """Which packets of a display-ordered H.264/HEVC stream the decoder must see."""

    MAX_HELD = 600
    MAX_HELD_BYTES = 8 << 20
    """Without IDRs (intra refresh) nothing is ever skippable: hold at most this much, then
    decode what is held (memory per stream stays bounded)."""

    def __init__(self, nal: NalUnits) -> None:
        self._nal = nal
        self._held: list[av.Packet] = []
        self._held_bytes = 0
        self.skipped = 0

    def plan(self, packet: av.Packet, sampled: bool) -> list[av.Packet]:
        """Packets to decode now, in decode order; ``sampled``: this packet's frame is kept."""
        ready: list[av.Packet] = []
        if self._held and packet.is_keyframe and self._nal.is_idr(bytes(packet)):
            # Nothing after the IDR refers to the held frames. A held packet that carries
            # parameter sets is still decoded: later frames may need its SPS/PPS.
            carriers = [p for p in self._held if self._nal.has_parameter_sets(bytes(p))]
            self.skipped += len(self._held) - len(carriers)
            ready.extend(carriers)
            self._held, self._held_bytes = [], 0
        if sampled:
            ready.extend(self._held)
            ready.append(packet)
            self._held, self._held_bytes = [], 0
        else:
            self._held.append(packet)
            self._held_bytes += packet.size
            if len(self._held) > self.MAX_HELD or self._held_bytes > self.MAX_HELD_BYTES:
                ready.extend(self._held)
                self._held, self._held_bytes = [], 0
        return ready

    def release(self) -> list[av.Packet]:
        """Give back every held packet, to be decoded (the stream turned out to reorder)."""
        held, self._held, self._held_bytes = self._held, [], 0
        return held

    def end(self) -> int:
        """At the end of the input nothing needs the held packets: skip them; returns count."""
        count = len(self._held)
        self.skipped += count
        self._held, self._held_bytes = [], 0
        return count

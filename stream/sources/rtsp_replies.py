"""What an RTSP camera sends FFmpeg, read the way FFmpeg reads it, so that the relay sees every
reply FFmpeg will act on: redirects are refused, ``Transport`` is pinned to the checked address.

FFmpeg's reader (``ff_rtsp_read_reply``) takes a byte at a time: a line ends at ``\\n``, every
``\\r`` is dropped, a ``$`` where a line starts is an interleaved frame (channel, 16-bit length,
payload), an empty line ends a reply head, the status is the number after the ``RTSP/`` word,
and a case-insensitive ``Content-Length:`` gives the body it skips. Reading any differently would
let a camera hide a reply from the relay (a ``302`` inside what the relay took for a body), so
this follows the same rules, and refuses outright what FFmpeg would read in ways this does not
model: a line FFmpeg would truncate (the camera's, or a ``Transport`` once pinned), a NUL byte,
an interleaved frame inside a head or shorter than any RTP/RTCP packet, a status that is not
three digits (FFmpeg's ``atoi`` wraps), a ``Content-Length`` that is not a plain number.
"""

from __future__ import annotations

import re

from stream.sources.netpolicy import Address

MAX_LINE = 4095
"""FFmpeg keeps this much of a reply line (its buffer, less the NUL) and drops the rest."""
MAX_HEAD_BYTES = 64 * 1024
_STATUS = re.compile(rb"\d{3}")
_LENGTH = re.compile(rb"[ \t]*(\d{1,9})[ \t]*")


class RtspRedirect(Exception):
    """An RTSP reply redirected the client; the relay does not follow it."""


class RtspReplies:
    """The camera-to-FFmpeg byte stream of one RTSP connection: ``feed`` gives what to forward;
    raises RtspRedirect on a ``3xx`` and ValueError on what it refuses (see the module)."""

    def __init__(self, address: Address) -> None:
        self._source = f"source={address}".encode()
        self._buffer = bytearray()
        self._skip = 0
        """Bytes of an interleaved frame or a reply body still to pass untouched."""
        self._head: list[bytes] = []
        """The lines (as received) of the reply head being read."""
        self._head_bytes = 0

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = bytearray()
        while self._buffer:
            if self._skip:
                take = min(self._skip, len(self._buffer))
                out += self._buffer[:take]
                del self._buffer[:take]
                self._skip -= take
                continue
            if self._head and self._buffer.lstrip(b"\r")[:1] == b"$":
                raise ValueError("an interleaved frame inside an RTSP reply head")
            if not self._head:
                # FFmpeg drops CRs, so '$' after them still starts a line.
                crs = len(self._buffer) - len(self._buffer.lstrip(b"\r"))
                if crs:
                    out += self._buffer[:crs]
                    del self._buffer[:crs]
                    continue
                if self._buffer[0] == 0x24:
                    if len(self._buffer) < 4:
                        break
                    length = int.from_bytes(self._buffer[2:4], "big")
                    if 0 < length < 8:
                        # Playing, FFmpeg reads such a payload as RTSP text (no RTP or RTCP
                        # packet is this short); setting up, it skips it: no one reading.
                        raise ValueError(f"an interleaved RTSP frame of {length} bytes")
                    self._skip = 4 + length
                    continue
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    raise ValueError("an RTSP line over 64 KiB")
                break
            raw = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            out += self._line(raw)
        return bytes(out)

    def _line(self, raw: bytes) -> bytes:
        """One line; what to forward now (a head is held until its end)."""
        line = raw[:-1].replace(b"\r", b"")
        if len(line) > MAX_LINE or b"\0" in line:
            raise ValueError("an RTSP reply line FFmpeg would cut short (too long, or a NUL)")
        if line:
            self._head.append(raw)
            self._head_bytes += len(raw)
            if self._head_bytes > MAX_HEAD_BYTES:
                raise ValueError("an RTSP reply head over 64 KiB")
            return b""
        head, self._head, self._head_bytes = self._head, [], 0
        return self._finished(head) + raw

    def _finished(self, head: list[bytes]) -> bytes:
        if not head:
            return b""
        lines = [raw[:-1].replace(b"\r", b"") for raw in head]
        words = lines[0].split()
        status = 0
        if words and words[0].startswith(b"RTSP/"):
            # FFmpeg takes atoi() of the next word, which wraps past 32 bits
            # ("4294967598" is 302): only three plain digits are read alike.
            if len(words) < 2 or not _STATUS.fullmatch(words[1]):
                raise ValueError(f"an RTSP status that is not three digits: {lines[0][:60]!r}")
            status = int(words[1])
        if 300 <= status < 400:
            location = next((line[9:].strip() for line in lines[1:]
                             if line[:9].lower() == b"location:"), b"")
            shown = location.decode("latin-1")[:200] or "no Location"
            raise RtspRedirect(f"the camera redirected to {shown!r}; RTSP redirects are not "
                               "followed: give the stream that URL")
        length = 0
        out = [head[0]]
        for raw, line in zip(head[1:], lines[1:], strict=True):
            if line[:15].lower() == b"content-length:":
                value = _LENGTH.fullmatch(line[15:])
                if value is None:
                    raise ValueError(f"an RTSP Content-Length that is not a plain number: "
                                     f"{line[15:60]!r}")
                length = int(value[1])
            elif line[:10].lower() == b"transport:":
                raw = line[:10] + b" " + self._pinned(line[10:].strip()) + b"\r\n"
                if len(raw) - 2 > MAX_LINE:  # FFmpeg would cut the pinned source= off
                    raise ValueError("an RTSP Transport line too long to pin its source")
            out.append(raw)
        self._skip = length
        return b"".join(out)

    def _pinned(self, transport: bytes) -> bytes:
        """``source=`` the checked address, last in each transport (FFmpeg keeps the last),
        after any the camera gave is taken out."""
        specs = []
        for spec in transport.split(b","):
            params = [p for p in spec.strip().split(b";")
                      if p and not p.strip().lower().startswith(b"source=")]
            specs.append(b";".join([*params, self._source]))
        return b",".join(specs)

#!/usr/bin/python3
"""Serve a media file over RTSP on loopback with GStreamer's RTSP server, as a camera would.

Runs under the system Python (it needs ``gi``), not the project's virtual environment:

    /usr/bin/python3 scripts/rtsp_server.py FILE --port 8554 --path /live

The file's H.264 track is re-payloaded without re-encoding and shared between clients. By default
it loops forever and seamlessly: clients never see an end of stream, and timestamps keep rising
across the loop (each pass is shifted by the length of the file), like a camera that never
stops. ``--no-loop`` ends the stream at the end of the file instead. Prints
``READY rtsp://127.0.0.1:PORT/PATH`` once it listens.

How: a small reader pipeline demuxes the file into an ``appsink``; the RTSP media pulls from it
through an ``appsrc`` whenever it needs data. At the end of the file the reader seeks back to the
start and the media carries on with shifted timestamps, so no end of stream or flush ever travels
downstream. The media is not seekable, so a client joining later (PLAY with a Range) joins the
running stream instead of rewinding it for everyone. Pacing comes from the RTSP media's sinks,
which play in real time.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gio, GLib, Gst, GstApp, GstRtspServer  # noqa: E402

H264_CAPS = "video/x-h264,stream-format=byte-stream,alignment=au"
PULL_TIMEOUT_S = 5.0
PULL_SLICE_NS = Gst.SECOND // 10


class FileReader:
    """Access units of a file's H.264 track, forever (``loop``) or once, with rising timestamps."""

    def __init__(self, location: str, loop: bool) -> None:
        escaped = location.replace('"', '\\"')
        # parsebin picks the demuxer (qtdemux for MP4/MOV, matroskademux for MKV, tsdemux...).
        self.pipeline = Gst.parse_launch(
            f'filesrc location="{escaped}" ! parsebin ! h264parse config-interval=-1 '
            f"! {H264_CAPS} ! appsink name=out sync=false max-buffers=16"
        )
        self.sink = self.pipeline.get_by_name("out")
        self.loop = loop
        self.offset = 0  # added to every timestamp of the current pass
        self.start: int | None = None  # the file's earliest PTS (a B-frame file's is not 0)
        self.end = 0  # where the file's last frame ends
        self._error: str | None = None
        self.pipeline.set_state(Gst.State.PLAYING)

    def next_buffer(self) -> Gst.Buffer | None:
        """The next access unit with shifted timestamps; None at the end (or on failure,
        see ``error()``)."""
        for _ in range(2):  # the file, then at most one rewind
            sample = self._pull()
            if sample is not None:
                return self._shifted(sample.get_buffer())
            if not self.sink.is_eos() or not self.loop:
                return None  # failed, stalled or finished
            if self.start is None or self.end <= self.start:
                return None  # nothing timed in the file: looping would spin
            # The next pass starts where this one ends.
            self.offset += self.end - self.start
            self.pipeline.seek_simple(
                Gst.Format.TIME, Gst.SeekFlags.FLUSH | Gst.SeekFlags.ACCURATE, 0
            )
        return None

    def _pull(self) -> Gst.Sample | None:
        """A sample, or None at the end, on an error or after PULL_TIMEOUT_S."""
        deadline = time.monotonic() + PULL_TIMEOUT_S
        while time.monotonic() < deadline:
            sample = self.sink.try_pull_sample(PULL_SLICE_NS)
            if sample is not None or self.sink.is_eos():
                return sample
            message = self.pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR)
            if message is not None:
                self._error = message.parse_error()[0].message
                return None
        self._error = f"no data for {PULL_TIMEOUT_S:g} s"
        return None

    def error(self) -> str | None:
        return self._error

    def _shifted(self, original: Gst.Buffer) -> Gst.Buffer:
        buffer = original.copy()
        if buffer.pts != Gst.CLOCK_TIME_NONE:
            duration = buffer.duration if buffer.duration != Gst.CLOCK_TIME_NONE else 0
            self.start = buffer.pts if self.start is None else min(self.start, buffer.pts)
            self.end = max(self.end, buffer.pts + duration)
        for field in ("pts", "dts"):
            value = getattr(buffer, field)
            if value != Gst.CLOCK_TIME_NONE:
                setattr(buffer, field, value + self.offset)
        return buffer

    def close(self) -> None:
        self.pipeline.set_state(Gst.State.NULL)


class FileFactory(GstRtspServer.RTSPMediaFactory):
    """One shared media per mount point, fed from a FileReader through an appsrc."""

    def __init__(self, location: str, loop: bool) -> None:
        super().__init__()
        self.location = location
        self.loop = loop
        self.set_launch(
            f'( appsrc name=feed format=time is-live=false block=true caps="{H264_CAPS}" '
            "! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 )"
        )
        self.set_shared(True)
        self.set_eos_shutdown(False)
        self.connect("media-configure", self._on_configure)

    def _on_configure(self, _factory: object, media: GstRtspServer.RTSPMedia) -> None:
        reader = FileReader(self.location, self.loop)
        feed = media.get_element().get_by_name("feed")

        def need_data(appsrc: GstApp.AppSrc, _length: int) -> None:
            buffer = reader.next_buffer()
            if buffer is None:
                error = reader.error()
                if error:
                    print(f"reading {self.location}: {error}", file=sys.stderr, flush=True)
                appsrc.end_of_stream()
            else:
                appsrc.push_buffer(buffer)

        feed.connect("need-data", need_data)
        media.connect("unprepared", lambda _media: reader.close())


def serve_tls(server: GstRtspServer.RTSPServer, factory: GstRtspServer.RTSPMediaFactory,
              pem: Path) -> None:
    """RTSP over TLS (rtsps://) with the certificate and key in ``pem``; every client may play
    (TLS without client authentication, as cameras do)."""
    auth = GstRtspServer.RTSPAuth()
    auth.set_tls_certificate(Gio.TlsCertificate.new_from_file(str(pem)))
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", "viewer")
    auth.set_default_token(token)
    server.set_auth(auth)
    factory.add_role_from_structure(Gst.Structure.new_from_string(
        "viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--path", default="/live")
    parser.add_argument("--no-loop", action="store_true", help="end the stream at end of file")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate and key: serve RTSPS")
    args = parser.parse_args()
    if not args.file.is_file():
        print(f"no such file: {args.file}", file=sys.stderr)
        return 2
    Gst.init(None)
    location = str(args.file.resolve())
    probe = FileReader(location, loop=False)
    first = probe.next_buffer()
    problem = probe.error()
    probe.close()
    if first is None:
        reason = problem or "empty"
        print(f"cannot serve {args.file}: no H.264 video track to re-payload ({reason})",
              file=sys.stderr)
        return 2
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = FileFactory(location, loop=not args.no_loop)
    if args.tls_cert is not None:
        serve_tls(server, factory, args.tls_cert)
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"could not listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    scheme = "rtsps" if args.tls_cert is not None else "rtsp"
    print(f"READY {scheme}://127.0.0.1:{args.port}{args.path}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""Serve a media file over RTSP on loopback with GStreamer's RTSP server.

Runs under the system Python (it needs ``gi``), not the project's virtual environment:

    /usr/bin/python3 scripts/rtsp_server.py FILE --port 8554 --path /live

The file is demuxed and its H.264 track re-payloaded without re-encoding, looped forever, and
shared between clients. Prints ``READY rtsp://127.0.0.1:PORT/PATH`` once it listens.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


class LoopingFactory(GstRtspServer.RTSPMediaFactory):
    """A shared media that seeks back to the start at end of stream."""

    def __init__(self, launch: str, loop: bool) -> None:
        super().__init__()
        self.set_launch(launch)
        self.set_shared(True)
        self.set_eos_shutdown(False)
        self._loop = loop
        if loop:
            self.connect("media-configure", self._on_configure)

    def _on_configure(self, _factory: object, media: GstRtspServer.RTSPMedia) -> None:
        pipeline = media.get_element()
        bus = pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message::eos", lambda *_: pipeline.seek_simple(
            Gst.Format.TIME, Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT, 0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--path", default="/live")
    parser.add_argument("--no-loop", action="store_true", help="end the stream at end of file")
    args = parser.parse_args()
    if not args.file.is_file():
        print(f"no such file: {args.file}", file=sys.stderr)
        return 2
    Gst.init(None)
    location = str(args.file.resolve()).replace('"', '\\"')
    # qtdemux for MP4/MOV, matroskademux for MKV; parsebin picks the right one.
    launch = (
        f'( filesrc location="{location}" ! parsebin ! h264parse config-interval=-1 '
        "! rtph264pay name=pay0 pt=96 )"
    )
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(args.path, LoopingFactory(launch, not args.no_loop))
    if server.attach(None) == 0:
        print(f"could not listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY rtsp://127.0.0.1:{args.port}{args.path}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU the RTSP relay (stream/sources/relay.py) costs: one RTSP stream read for ``--seconds``
straight from GStreamer's RTSP server and through a relay, demuxed only, in alternating
rounds; and, as the scale, the same stream read straight and fully decoded. Prints JSON with
the relay's extra CPU as a share of a core and relative to decoding.

    .venv/bin/python scripts/bench_relay.py [--media FILE] [--seconds 10] [--rounds 3]

Without ``--media`` it encodes 20 s of FFmpeg's testsrc2 at 1920x1080, 30 fps, 8 Mbit/s.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import av

from stream.rtsp_camera import RtspCamera
from stream.sources.netpolicy import NetworkPolicy
from stream.sources.relay import SourceRelay


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def read(url: str, seconds: float, decode: bool) -> tuple[float, float]:
    """Process CPU seconds spent reading ``url`` for ``seconds``, and the Mbit/s read."""
    container = av.open(url, options={"rtsp_transport": "tcp"}, timeout=10)
    stream = container.streams.video[0]
    started, cpu, size = time.monotonic(), _cpu_s(), 0
    for packet in container.demux(stream):
        size += packet.size
        if decode:
            packet.decode()
        if time.monotonic() - started > seconds:
            break
    used = _cpu_s() - cpu
    container.close()
    return used, size * 8 / seconds / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--media", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dfstream-relay-") as tmp:
        media = args.media
        if media is None:
            media = Path(tmp) / "testsrc2_1080p_8M.mp4"
            subprocess.run(
                ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30",
                 "-t", "20", "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "8M",
                 "-maxrate", "8M", "-bufsize", "8M", "-g", "30", "-pix_fmt", "yuv420p",
                 str(media)], check=True, timeout=300)
        rows: dict[str, list[float]] = {"direct": [], "relay": [], "decode": []}
        mbps = 0.0
        with RtspCamera(media) as camera:
            for _ in range(args.rounds):
                rows["direct"].append(read(camera.url, args.seconds, False)[0])
                relay = SourceRelay(NetworkPolicy.build(), camera.url, timeout_s=10)
                try:
                    used, mbps = read(relay.url, args.seconds, False)
                finally:
                    relay.close()
                rows["relay"].append(used)
                rows["decode"].append(read(camera.url, args.seconds, True)[0])
    median = {name: statistics.median(values) for name, values in rows.items()}
    extra = median["relay"] - median["direct"]
    print(json.dumps({
        "benchmark": "rtsp_relay",
        "stream_mbit_s": round(mbps, 2),
        "cpu_s": {name: [round(v, 3) for v in values] for name, values in rows.items()},
        "relay_extra_core_share": round(extra / args.seconds, 4),
        "relay_vs_direct_demux": round(median["relay"] / median["direct"], 2),
        "relay_extra_vs_decode": round(extra / median["decode"], 3),
        "config": {"seconds": args.seconds, "rounds": args.rounds, "media": str(args.media or
                   "testsrc2 1920x1080 30 fps 8 Mbit/s")},
    }, indent=2))


if __name__ == "__main__":
    main()

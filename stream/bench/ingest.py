"""The ingest benchmark: CPU to deliver 5 fps from 1080p30 H.264, against FFmpeg's own decode.

Two files are encoded by the ``ffmpeg`` CLI: a broadcast-style one (x264 veryfast, GOP 60, 3
B-frames, b-pyramid normal) and a video-call-style one (no B-frames, GOP 60). For each, in the
same run and interleaved, the CPU seconds (user + sys) of:

- ``ffmpeg -threads 1 -i FILE -f null -``: the reference, a full single-threaded decode;
- the ingest as the pipeline uses it: ``PyAVSource`` as fast as analysis takes frames, and per
  delivered frame a detection image (640 long side) and one face-sized full-resolution region;
- the same ingest with decode skipping off, which measures what skipping saves;
- plain PyAV: decode every frame, convert each sampled one to full-size RGB.

Each figure is the median of several runs; ratios divide by FFmpeg's median.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import statistics
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from stream.config import IngestSettings
from stream.sources.pyav import PyAVSource

TARGETS = {"ratio_vs_ffmpeg": 0.7, "ratio_vs_ffmpeg_no_bframes": 1.0}
WIDTH, HEIGHT, FPS = 1920, 1080, 30
FACE_BOX = (820, 370, 1100, 710)
"""A 280x340 region: a face at 1080p as a detector finds it, with the crop margin."""


@dataclass(frozen=True)
class Encoding:
    key: str
    description: str
    x264: tuple[str, ...]


ENCODINGS = (
    Encoding(
        "broadcast",
        "x264 veryfast, GOP 60, 3 B-frames, b-pyramid normal",
        ("-bf", "3", "-b-pyramid", "normal"),
    ),
    Encoding("video_call", "x264 veryfast, GOP 60, no B-frames", ("-bf", "0")),
)


@dataclass(frozen=True)
class BenchConfig:
    seconds: float = 10.0
    runs: int = 5
    analysis_fps: float = 5.0
    detect_max_side: int = 640
    content: str = "testsrc2"  # or "face": the moving astronaut of stream.samples
    workdir: Path | None = None


Progress = Callable[[str], None]


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def encode(path: Path, encoding: Encoding, cfg: BenchConfig) -> Path:
    """A 1080p30 H.264 file by the ffmpeg CLI, from testsrc2 or from the face video."""
    gop = ("-g", "60", "-keyint_min", "60", "-sc_threshold", "0")
    common = ("-c:v", "libx264", "-preset", "veryfast", *gop, *encoding.x264,
              "-pix_fmt", "yuv420p", "-an", str(path))
    if cfg.content == "testsrc2":
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
             f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}", "-t", str(cfg.seconds), *common],
            check=True,
        )
        return path
    from stream.samples import face_frames

    count = round(cfg.seconds * FPS)
    process = subprocess.Popen(
        ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s",
         f"{WIDTH}x{HEIGHT}", "-r", str(FPS), "-i", "-", *common],
        stdin=subprocess.PIPE,
    )
    assert process.stdin is not None
    for rgb, _ in face_frames(WIDTH, HEIGHT, count):
        process.stdin.write(rgb.tobytes())
    process.stdin.close()
    if process.wait() != 0:
        raise RuntimeError(f"ffmpeg could not encode {path}")
    return path


def ffmpeg_decode_cpu(path: Path) -> float:
    before = _cpu_children()
    subprocess.run(["ffmpeg", "-v", "error", "-threads", "1", "-i", str(path), "-f", "null", "-"],
                   check=True)
    return _cpu_children() - before


def ingest_cpu(path: Path, cfg: BenchConfig, *, skipping: bool) -> tuple[float, dict[str, Any]]:
    """CPU of PyAVSource delivering ``analysis_fps`` with the pipeline's lazy conversions."""
    settings = IngestSettings(
        allowed_schemes=["file"],
        analysis_fps=cfg.analysis_fps,
        detect_max_side=cfg.detect_max_side,
        decode_threads=1,
        skip_nonref=skipping,
        skip_gop_tail=skipping,
    )
    landed = threading.Event()
    before = _cpu_self()
    source = PyAVSource("bench", str(path), settings, realtime=False, on_frame=landed.set)
    source.start()
    delivered = 0
    while True:
        frame = source.take()
        if frame is None:
            if source.stats().status in ("stopped", "failed"):
                frame = source.take()
                if frame is None:
                    break
            else:
                landed.wait(0.5)
                landed.clear()
                continue
        frame.detection_image(cfg.detect_max_side)
        frame.region_rgb(*FACE_BOX)
        delivered += 1
    source.stop()
    cpu = _cpu_self() - before
    stats = source.stats()
    if stats.status != "stopped":
        raise RuntimeError(f"ingest of {path} ended {stats.status}: {stats.last_error}")
    counts = {
        "in": stats.frames_in,
        "decoded": stats.frames_decoded,
        "delivered": delivered,
        "skipped_nonref": stats.dropped["skipped_nonref"],
        "skipped_gop_tail": stats.dropped["skipped_gop_tail"],
        "fps_cap": stats.dropped["fps_cap"],
    }
    return cpu, counts


def plain_pyav_cpu(path: Path, cfg: BenchConfig, *, skip_nonref: bool = False) -> float:
    """Decode every frame single-threaded; convert each sampled one to full-size RGB."""
    before = _cpu_self()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        if skip_nonref:
            stream.codec_context.skip_frame = "NONREF"
        period, due = 1.0 / cfg.analysis_fps, 0.0
        for frame in container.decode(stream):
            if frame.time is not None and frame.time >= due - 1e-3:
                due += period
                frame.to_ndarray(format="rgb24")
    return _cpu_self() - before


@contextmanager
def _workdir(cfg: BenchConfig) -> Iterator[Path]:
    if cfg.workdir is not None:
        cfg.workdir.mkdir(parents=True, exist_ok=True)
        yield cfg.workdir
        return
    with tempfile.TemporaryDirectory(prefix="dfstream-bench-ingest-") as tmp:
        yield Path(tmp)


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def run(cfg: BenchConfig, progress: Progress = lambda _: None) -> dict[str, Any]:
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("the ffmpeg CLI is not installed (Debian: apt-get install ffmpeg)")
    result: dict[str, Any] = {
        "benchmark": "ingest",
        "host": {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "pyav": av.__version__,
            "libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
            "ffmpeg_cli": _ffmpeg_version(),
        },
        "settings": {
            "content": cfg.content, "seconds": cfg.seconds, "size": f"{WIDTH}x{HEIGHT}",
            "fps": FPS, "analysis_fps": cfg.analysis_fps,
            "detect_max_side": cfg.detect_max_side,
            "region": [FACE_BOX[2] - FACE_BOX[0], FACE_BOX[3] - FACE_BOX[1]],
            "runs": cfg.runs, "decode_threads": 1,
        },
        "targets": TARGETS,
    }
    with _workdir(cfg) as folder:
        files = {}
        for encoding in ENCODINGS:
            progress(f"encoding the {encoding.key} file ({encoding.description})")
            path = folder / f"{encoding.key}_{cfg.content}_{cfg.seconds:g}s.mp4"
            if not path.exists():
                encode(path, encoding, cfg)
            files[encoding.key] = path
        counts: dict[str, dict[str, Any]] = {}
        samples: dict[str, dict[str, list[float]]] = {e.key: {} for e in ENCODINGS}
        for run_index in range(cfg.runs):
            for encoding in ENCODINGS:
                for name in _variants(encoding):
                    progress(f"run {run_index + 1}/{cfg.runs}: {encoding.key} {name}")
                    cpu = _measure(name, files[encoding.key], cfg, counts, encoding.key)
                    samples[encoding.key].setdefault(name, []).append(cpu)
        for encoding in ENCODINGS:
            per = samples[encoding.key]
            reference = statistics.median(per["ffmpeg"])
            entry: dict[str, Any] = {
                "file": {
                    "encode": encoding.description,
                    "bytes": files[encoding.key].stat().st_size,
                },
                "frames": counts[encoding.key],
            }
            for name, values in per.items():
                entry[f"{name}_cpu_s"] = _median(values)
                entry[f"{name}_cpu_s_runs"] = [round(v, 4) for v in values]
                if name != "ffmpeg":
                    entry[f"{name}_ratio"] = round(statistics.median(values) / reference, 3)
            entry["skipping_saves"] = round(
                1 - statistics.median(per["ingest"]) / statistics.median(per["ingest_no_skip"]), 3
            )
            result[encoding.key] = entry
    result["ratio_vs_ffmpeg"] = result["broadcast"]["ingest_ratio"]
    result["ratio_vs_ffmpeg_no_bframes"] = result["video_call"]["ingest_ratio"]
    result["plain_pyav_ratio_vs_ffmpeg"] = result["broadcast"]["plain_pyav_ratio"]
    result["plain_pyav_skip_nonref_ratio_vs_ffmpeg"] = result["broadcast"][
        "plain_pyav_skip_nonref_ratio"
    ]
    result["plain_pyav_ratio_vs_ffmpeg_no_bframes"] = result["video_call"]["plain_pyav_ratio"]
    result["meets_targets"] = all(result[key] <= limit for key, limit in TARGETS.items())
    return result


def _variants(encoding: Encoding) -> tuple[str, ...]:
    names = ("ffmpeg", "ingest", "ingest_no_skip", "plain_pyav")
    # The plain-PyAV figure for B-frame streams skipped non-reference frames.
    return (*names, "plain_pyav_skip_nonref") if encoding.key == "broadcast" else names


def _measure(
    name: str, path: Path, cfg: BenchConfig, counts: dict[str, dict[str, Any]], key: str
) -> float:
    if name == "ffmpeg":
        return ffmpeg_decode_cpu(path)
    if name == "ingest":
        cpu, counts[key] = ingest_cpu(path, cfg, skipping=True)
        return cpu
    if name == "ingest_no_skip":
        return ingest_cpu(path, cfg, skipping=False)[0]
    return plain_pyav_cpu(path, cfg, skip_nonref=name == "plain_pyav_skip_nonref")


def _ffmpeg_version() -> str:
    out = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=False)
    first = out.stdout.splitlines()[0] if out.stdout else ""
    return first.split(" Copyright")[0].removeprefix("ffmpeg version ").strip()

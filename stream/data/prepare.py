"""``dfstream data prepare``: every video of a dataset through the service's own analysis path,
its largest face's aligned crop cached per frame, so training and evaluation see exactly what
the live service would score.

Frames: ``frames`` per video at the papers' indices ``floor(linspace(0, n - 1, N))``, or, with
``with_face``, the authors' "at least N frames with a face" mode (the uniform spread is made
denser until N frames have a face or every frame was looked at). Each finished video is written
atomically; a later run skips the videos already done, so an interrupted preparation resumes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engines.interfaces import CROP_SIZE
from engines.training.crops import (
    CROPS_DIR,
    PreparedVideo,
    VideoCrops,
    read_video_entry,
    write_index,
    write_video_crops,
)
from stream.analysis import Analyser, FrameAnalysis
from stream.config import Settings
from stream.sources.base import Frame
from stream.sources.reader import VideoError, count_frames, read_frames, uniform_indices


class Entry(Protocol):
    """What preparation reads of a dataset's video (stream.data.manifest.VideoEntry)."""

    @property
    def id(self) -> str: ...
    @property
    def path(self) -> Path: ...
    @property
    def label(self) -> str: ...
    @property
    def split(self) -> str: ...
    @property
    def source_id(self) -> str: ...
    @property
    def manipulation(self) -> str: ...


@dataclass
class PrepareSummary:
    out: str
    videos: int = 0
    prepared: int = 0
    resumed: int = 0
    crops: int = 0
    without_face: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def _largest(analysis: FrameAnalysis) -> tuple[Frame, Any] | None:
    if analysis.error is not None or not analysis.faces or analysis.faces[0].crop is None:
        return None
    return analysis.frame, analysis.faces[0]


def _analyse(analyser: Analyser, frames: Iterator[Frame]) -> list[tuple[Frame, Any]]:
    return [f for f in map(_largest, analyser.analyse_all(frames)) if f is not None]


def crops_of_video(
    analyser: Analyser, path: Path, frames: int, *, with_face: bool, stream_id: str
) -> tuple[VideoCrops, int]:
    """The largest face's crop of each sampled frame that has one, and the frames looked at."""
    total = count_frames(path)
    wanted = uniform_indices(total, frames)
    looked = set(wanted)
    found = _analyse(analyser, read_frames(path, indices=wanted, stream_id=stream_id))
    count = frames
    while with_face and len(found) < frames and len(looked) < total:
        count *= 2
        more = [i for i in uniform_indices(total, count) if i not in looked]
        looked.update(more)
        found.extend(_analyse(analyser, read_frames(path, indices=more, stream_id=stream_id)))
    analyser.forget(stream_id)
    found.sort(key=lambda item: item[0].seq)
    if with_face:
        keep = [found[int(i)] for i in uniform_indices(len(found), frames)]
        found = keep
    n = len(found)
    crops = VideoCrops(
        crops=np.stack([f.crop for _, f in found]) if n else
        np.empty((0, CROP_SIZE, CROP_SIZE, 3), np.uint8),
        frame_index=np.array([fr.seq for fr, _ in found], np.int64),
        boxes=np.array([f.box for _, f in found], np.float32).reshape(n, 4),
        landmarks=np.array([f.landmarks for _, f in found], np.float32).reshape(n, 5, 2),
        det_score=np.array([f.score for _, f in found], np.float32),
    )
    return crops, len(looked)


def prepare_settings(settings: Settings, manifest: Path, synthetic: bool) -> dict[str, Any]:
    """What prepared.json records of how its crops were made (a trained bundle carries it, so
    serving can tell a crop-style mismatch and a synthetic training set)."""
    return {"manifest": str(manifest.resolve()), "synthetic": synthetic,
            "faces": settings.faces.model_dump(mode="json"),
            "detect_max_side": settings.ingest.detect_max_side}


def prepare(
    entries: Sequence[Entry],
    analyser: Analyser,
    out: Path,
    *,
    frames: int = 32,
    with_face: bool = False,
    workers: int = 1,
    settings: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> PrepareSummary:
    """Prepare every entry into ``out``; videos already done there are kept as they are."""
    out.mkdir(parents=True, exist_ok=True)
    summary = PrepareSummary(str(out), videos=len(entries))
    done: dict[str, PreparedVideo] = {}
    lock = threading.Lock()

    def one(entry: Entry) -> None:
        video = PreparedVideo(entry.id, entry.label, entry.split, entry.source_id or "",
                              entry.manipulation or "", frames, 0)
        existing = read_video_entry(out / CROPS_DIR / f"{video.key}.npz")
        if existing is not None and existing.frames_requested == frames:
            with lock:
                done[entry.id] = existing
                summary.resumed += 1
        else:
            try:
                crops, _ = crops_of_video(analyser, Path(entry.path), frames,
                                          with_face=with_face, stream_id=f"prepare:{entry.id}")
            except VideoError as exc:
                with lock:
                    summary.failed[entry.id] = str(exc)
                if progress is not None:
                    progress(entry.id)
                return
            video = PreparedVideo(video.id, video.label, video.split, video.source_id,
                                  video.manipulation, frames, len(crops))
            write_video_crops(out, video, crops)
            with lock:
                done[entry.id] = video
                summary.prepared += 1
        if progress is not None:
            progress(entry.id)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(one, entries))
    videos = [done[e.id] for e in entries if e.id in done]
    summary.crops = sum(v.frames_with_face for v in videos)
    summary.without_face = [v.id for v in videos if v.frames_with_face == 0]
    write_index(out, videos, {"frames": frames, "with_face": with_face, **(settings or {})})
    return summary

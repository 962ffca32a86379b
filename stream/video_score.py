"""The papers' offline protocol for one video: N uniformly spaced frames, the same face stage
and crop scorer as the live service, the video score as the mean of per-frame p_fake.

A frame's p_fake is that of its largest face (the papers score one face per frame); frames
without a face do not count towards the mean, and a video with no face at all has no score.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines.calibration import Calibrator
from engines.interfaces import CropScorer
from stream.faces import FaceStage
from stream.sources.base import Frame

DETECT_BATCH = 8


class VideoError(ValueError):
    """The file cannot be scored (missing, not a video, no decodable frame)."""


@dataclass(frozen=True)
class ScoredFace:
    track: int
    box: list[float]
    det_score: float
    p_fake: float


@dataclass(frozen=True)
class ScoredFrame:
    index: int
    pts: float
    faces: list[ScoredFace]

    @property
    def p_fake(self) -> float | None:
        """The largest face's p_fake (faces come largest first), None without a face."""
        return self.faces[0].p_fake if self.faces else None


@dataclass
class VideoScore:
    video: str
    frames_requested: int
    frames: list[ScoredFrame] = field(default_factory=list)

    @property
    def frames_with_face(self) -> int:
        return sum(1 for f in self.frames if f.faces)

    @property
    def p_fake(self) -> float | None:
        values = [f.p_fake for f in self.frames if f.p_fake is not None]
        return float(np.mean(values)) if values else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "video": self.video,
            "frames_requested": self.frames_requested,
            "frames_scored": len(self.frames),
            "frames_with_face": self.frames_with_face,
            "p_fake": self.p_fake,
            "per_frame": [
                {
                    "index": f.index,
                    "pts": round(f.pts, 4),
                    "p_fake": f.p_fake,
                    "faces": [vars(face) for face in f.faces],
                }
                for f in self.frames
            ],
        }


def uniform_indices(total: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``total`` frames (all of them if fewer)."""
    if total <= 0 or count <= 0:
        return []
    if count >= total:
        return list(range(total))
    return sorted({round(float(i)) for i in np.linspace(0, total - 1, count)})


def _count_frames(path: Path) -> int:
    """Video packets in the file (demuxing only), for files whose header has no frame count."""
    import av

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        return sum(1 for packet in container.demux(video) if packet.size > 0)


def sample_frames(path: Path, count: int) -> Iterator[Frame]:
    """``count`` uniformly spaced decoded frames of ``path``, in order."""
    import av

    from stream.sources.pyav import DECODE_THREAD_TYPE

    if not path.is_file():
        raise VideoError(f"{path} does not exist")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path} has no video stream")
            video = container.streams.video[0]
            total = video.frames or 0
    except av.FFmpegError as exc:
        raise VideoError(f"{path} cannot be read as a video: {exc}") from None
    if total <= 0:
        total = _count_frames(path)
    wanted = set(uniform_indices(total, count))
    if not wanted:
        raise VideoError(f"{path} holds no video frame")
    last = max(wanted)
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        video.thread_type = DECODE_THREAD_TYPE
        rate = float(video.average_rate or 30)
        for index, picture in enumerate(container.decode(video)):
            if index in wanted:
                pts = float(picture.time) if picture.time is not None else index / rate
                yield Frame(str(path), index, pts, time.time(), av_frame=picture)
            if index >= last:
                return


def score_video(
    path: Path,
    face_stage: FaceStage,
    scorer: CropScorer,
    calibrator: Calibrator,
    *,
    frames: int = 32,
    progress: Callable[[int], None] | None = None,
) -> VideoScore:
    """Score ``frames`` uniform frames of ``path``; ``progress`` gets the frames done so far."""
    result = VideoScore(str(path), frames)
    batch: list[Frame] = []

    def flush() -> None:
        analysed = face_stage.process(batch)
        crops = [face.crop for fr in analysed for face in fr.faces if face.crop is not None]
        p_fake: list[float] = []
        if crops:
            stacked = np.stack(crops)
            logits = np.concatenate([
                scorer.score(stacked[i : i + scorer.max_batch])
                for i in range(0, len(stacked), scorer.max_batch)
            ])
            p_fake = [float(p) for p in calibrator.p_fake(logits)]
        scores = iter(p_fake)
        for fr in analysed:
            faces = [
                ScoredFace(
                    track=face.track_id,
                    box=[round(float(v), 2) for v in face.box],
                    det_score=round(float(face.score), 4),
                    p_fake=next(scores),
                )
                for face in fr.faces
                if face.crop is not None
            ]
            result.frames.append(ScoredFrame(fr.frame.seq, fr.frame.pts, faces))
        if progress is not None:
            progress(len(result.frames))
        batch.clear()

    for frame in sample_frames(path, frames):
        batch.append(frame)
        if len(batch) >= DETECT_BATCH:
            flush()
    if batch:
        flush()
    if not result.frames:
        raise VideoError(f"{path}: no frame could be decoded")
    return result

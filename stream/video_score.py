"""The papers' offline protocol for one video: N uniformly spaced frames through the analysis
path the live service runs, the video score as the mean of per-frame p_fake.

A frame's p_fake is that of its largest face (the papers score one face per frame); frames
without a face do not count towards the mean, and a video with no face at all has no score.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines.calibrated import CalibratedScorer
from engines.interfaces import CROP_SIZE
from stream.analysis import Analyser, FrameAnalysis
from stream.sources.reader import VideoError, read_uniform


@dataclass(frozen=True)
class VideoFace:
    track: int
    box: list[float]
    det_score: float
    p_fake: float
    raw_p_fake: float


@dataclass(frozen=True)
class ScoredFrame:
    index: int
    pts: float
    faces: list[VideoFace]

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
        values = [f.faces[0].p_fake for f in self.frames if f.faces]
        return float(np.mean(values)) if values else None

    @property
    def raw_p_fake(self) -> float | None:
        """The mean of uncalibrated p_fake: the papers' video score."""
        values = [f.faces[0].raw_p_fake for f in self.frames if f.faces]
        return float(np.mean(values)) if values else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "video": self.video,
            "frames_requested": self.frames_requested,
            "frames_scored": len(self.frames),
            "frames_with_face": self.frames_with_face,
            "p_fake": self.p_fake,
            "raw_p_fake": self.raw_p_fake,
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


def score_video(
    path: Path,
    analyser: Analyser,
    *,
    frames: int = 32,
    progress: Callable[[int], None] | None = None,
) -> VideoScore:
    """Score ``frames`` uniform frames of ``path``; ``progress`` gets the frames done so far."""
    result = VideoScore(str(path), frames)
    for analysis in analyser.analyse_all(read_uniform(path, frames)):
        result.frames.append(_scored_frame(analysis))
        if progress is not None:
            progress(len(result.frames))
    if not result.frames:
        raise VideoError(f"{path}: no frame could be decoded")
    return result


def seconds_per_crop(scorer: CalibratedScorer) -> float:
    """One face crop through the detector, timed after a first call that allocates: about what
    a frame with one face costs here (the face detector adds little next to ViT-L/14)."""
    crop = np.zeros((1, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    scorer.score(crop)
    start = time.perf_counter()
    scorer.score(crop)
    return time.perf_counter() - start


def _scored_frame(analysis: FrameAnalysis) -> ScoredFrame:
    faces = [
        VideoFace(
            track=s.track,
            box=[round(float(v), 2) for v in s.face.box],
            det_score=round(float(s.face.score), 4),
            p_fake=s.p_fake,
            raw_p_fake=s.raw_p_fake,
        )
        for s in analysis.scored
    ]
    return ScoredFrame(analysis.frame.seq, analysis.frame.pts, faces)

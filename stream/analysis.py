"""The analysis path: frames -> faces -> crop policy -> calibrated scorer -> per-face results.

Every consumer runs this one unit: the live pipeline (which only schedules it), ``dfstream score``
and ``dfstream faces``, the benchmarks, data preparation and evaluation. So a frame gets the same
crop, the same logit and the same p_fake offline as live (tests/test_analysis.py holds this).
What differs between consumers is stated as a ``CropPolicy``, not hidden in copies.

It is pure of threads, Redis and HTTP. The two halves (``detect``, ``score``) are separate calls
because the pipeline overlaps them on two threads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from engines.calibrated import CalibratedScorer
from engines.calibration import Calibrator
from engines.deepfake_detector import DetectorInfo, load_detector
from engines.interfaces import CROP_SIZE
from stream.config import DetectorSettings, PipelineSettings, Settings
from stream.faces import Face, FaceStage, FrameFaces
from stream.scoring import FaceScore
from stream.sources.base import Frame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CropPolicy:
    """Which of a frame's faces (largest first) go to the scorer."""

    confirmed_only: bool = False
    """Only faces of tracks that reached ``faces.track_min_hits`` (live: a lone false detection
    never raises an alert)."""
    max_per_frame: int | None = None
    """At most this many faces per frame (live: a crowded picture cannot starve other streams)."""

    @classmethod
    def live(cls, settings: PipelineSettings) -> CropPolicy:
        return cls(confirmed_only=True, max_per_frame=settings.max_crops_per_stream)

    def select(self, faces: Sequence[Face]) -> list[int]:
        """Indices of the faces to score, in the face stage's order (largest first)."""
        chosen = [
            i for i, face in enumerate(faces)
            if face.crop is not None and (face.confirmed or not self.confirmed_only)
        ]
        return chosen if self.max_per_frame is None else chosen[: self.max_per_frame]


EVERY_FACE = CropPolicy()
OFFLINE_BATCH = 8
"""Frames per detector call when reading a file."""


@dataclass(frozen=True)
class ScoredFace:
    """One scored face: where it is, its track, and what the detector says of it."""

    face: Face
    logits: np.ndarray
    """(2,) float32 raw head outputs, class 1 fake."""
    p_fake: float
    """Calibrated probability of fake: what operators tune thresholds on."""
    raw_p_fake: float
    """Uncalibrated softmax p_fake: what evaluation averages, as the papers do."""

    @property
    def track(self) -> int:
        return self.face.track_id


@dataclass(frozen=True)
class FrameAnalysis:
    """One frame's faces, the scored ones among them, or why the frame failed."""

    frame: Frame
    faces: tuple[Face, ...]
    scored: tuple[ScoredFace, ...] = ()
    error: str | None = None

    @property
    def largest(self) -> ScoredFace | None:
        """The largest scored face (the papers score one face per frame)."""
        return self.scored[0] if self.scored else None

    def face_scores(self, calibrator: Calibrator | None = None) -> list[FaceScore]:
        """The scored faces as the alert rules take them (live and in replays alike);
        ``calibrator``: a stream's own calibration in place of the bundle's."""
        if calibrator is None:
            p_fake = [s.p_fake for s in self.scored]
        else:
            p_fake = calibrator.p_fake(np.stack([s.logits for s in self.scored])).tolist() \
                if self.scored else []
        return [
            FaceScore(track=s.track,
                      box=(float(s.face.box[0]), float(s.face.box[1]), float(s.face.box[2]),
                           float(s.face.box[3])),
                      det_score=float(s.face.score), p_fake=float(p))
            for s, p in zip(self.scored, p_fake, strict=True)
        ]


@dataclass
class Analyser:
    """The face stage, a crop policy and the calibrated scorer (None: faces only)."""

    face_stage: FaceStage
    scorer: CalibratedScorer | None
    policy: CropPolicy = field(default=EVERY_FACE)

    @classmethod
    def load(
        cls, settings: Settings, policy: CropPolicy, *, detector: DetectorSettings | None = None
    ) -> tuple[Analyser, DetectorInfo]:
        """The configured face stage and deepfake detector with its bundle's calibration.

        Raises what loading raises: engines.store.StoreError (face weights),
        DetectorUnavailable, BackendUnavailable, ValueError (devices, backends).
        """
        face_stage = FaceStage.from_settings(settings)
        scorer, info = load_detector(detector or settings.detector)
        if info.crop is not None and info.crop != settings.faces.crop:
            log.warning(
                "detector %s was trained on faces.crop: %s crops but faces.crop is %s here; "
                "its scores drift with the crop (set faces.crop: %s to match)",
                info.bundle, info.crop, settings.faces.crop, info.crop)
        calibrated = CalibratedScorer(scorer, Calibrator.from_dict(info.calibration))
        return cls(face_stage, calibrated, policy), info

    @classmethod
    def faces_only(cls, settings: Settings, *, with_crops: bool = True) -> Analyser:
        """The configured face stage without a scorer (``dfstream faces``)."""
        return cls(FaceStage.from_settings(settings, with_crops=with_crops), None)

    def detect(self, frames: Sequence[Frame]) -> list[FrameFaces]:
        """Faces, tracks and crops of a batch of frames (frames of a stream in time order)."""
        return self.face_stage.process(frames)

    def score(self, results: Sequence[FrameFaces]) -> list[FrameAnalysis]:
        """Score the policy's faces of every frame as one batch of crops."""
        picked = [
            [] if result.error is not None else self.policy.select(result.faces)
            for result in results
        ]
        if self.scorer is None or not any(picked):
            return [FrameAnalysis(r.frame, r.faces, (), r.error) for r in results]
        crops = np.empty((sum(map(len, picked)), CROP_SIZE, CROP_SIZE, 3), np.uint8)
        k = 0
        for result, chosen in zip(results, picked, strict=True):
            for i in chosen:
                crop = result.faces[i].crop
                assert crop is not None  # select() takes only faces with a crop
                crops[k] = crop
                k += 1
        scores = self.scorer.score(crops)
        raw = scores.raw_p_fake
        out: list[FrameAnalysis] = []
        k = 0
        for result, chosen in zip(results, picked, strict=True):
            scored = []
            for i in chosen:
                scored.append(ScoredFace(
                    result.faces[i], scores.logits[k], float(scores.p_fake[k]), float(raw[k])
                ))
                k += 1
            out.append(FrameAnalysis(result.frame, result.faces, tuple(scored), result.error))
        return out

    def analyse(self, frames: Sequence[Frame]) -> list[FrameAnalysis]:
        """``detect`` then ``score``: what offline consumers call."""
        return self.score(self.detect(frames))

    def analyse_all(
        self, frames: Iterable[Frame], batch_size: int = OFFLINE_BATCH
    ) -> Iterator[FrameAnalysis]:
        """Every frame of an offline reader, analysed in batches of ``batch_size``, in order."""
        batch: list[Frame] = []
        for frame in frames:
            batch.append(frame)
            if len(batch) >= batch_size:
                yield from self.analyse(batch)
                batch = []
        if batch:
            yield from self.analyse(batch)

    def forget(self, stream_id: str) -> None:
        """Drop a removed stream's tracks."""
        self.face_stage.forget(stream_id)

    def warm_up(self) -> None:
        """Run each engine once so the first real frame does not pay for lazy initialisation."""
        self.face_stage.detector.detect([np.zeros((360, 640, 3), np.uint8)])
        if self.scorer is not None:
            self.scorer.warm_up()

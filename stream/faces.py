"""The face stage: frames from many streams -> faces with landmarks, track ids and aligned crops.

Detection runs once per batch over every stream's small detection image (``Frame.detection_image``,
longest side ``detect_max_side``); boxes and landmarks are mapped back to full-resolution pixels;
faces below ``min_face_px`` are dropped and at most ``max_faces`` kept, largest first. Each kept
face gets a stable per-stream track id and a 224x224 RGB crop, aligned on its five landmarks when
they are reliable (else a plain box crop), read from the full-resolution frame through
``Frame.region_rgb`` so that only the face's own pixels are converted.

A frame that cannot be converted or cropped gets an error of its own; the other frames of the
batch are unaffected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.align import Alignment, plan_crop
from engines.interfaces import CROP_SIZE, FaceDetection, FaceDetector
from stream.config import FaceSettings, Settings
from stream.sources.base import Frame, check_rgb
from stream.tracker import StreamTrackers


@dataclass(frozen=True)
class Face:
    """One face in one frame, in that frame's full-resolution pixels."""

    box: np.ndarray
    """(4,) float32: x1, y1, x2, y2."""
    score: float
    landmarks: np.ndarray
    """(5, 2) float32: left eye, right eye, nose, left and right mouth corners."""
    track_id: int
    confirmed: bool
    """The track has reached ``track_min_hits`` detections."""
    alignment: Alignment
    crop: np.ndarray | None
    """(224, 224, 3) uint8 RGB, or None when the stage was built without crops."""

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: box, score, landmarks, track, confirmed, alignment."""
        return {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(self.score, 4),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
            "track": self.track_id,
            "confirmed": self.confirmed,
            "alignment": self.alignment,
        }


@dataclass(frozen=True)
class FrameFaces:
    """The faces of one frame, or why that frame could not be analysed."""

    frame: Frame
    faces: tuple[Face, ...]
    error: str | None = None


def build_face_detector(settings: FaceSettings) -> FaceDetector:
    """The RetinaFace detector the settings ask for, on the configured backend and device.

    Raises engines.store.StoreError when the weights are missing or fail their checksum, and
    ValueError when the device or backend cannot be used here.
    """
    from engines.devices import resolve_device
    from engines.retinaface.decode import DetectionOptions
    from engines.retinaface.torch_detector import RetinaFaceDetector

    arch = settings.detector.removeprefix("retinaface-")
    options = DetectionOptions(confidence=settings.confidence, nms_iou=settings.nms_iou)
    device = resolve_device(settings.device)
    backend = settings.backend
    if backend == "auto":
        backend = "torch" if device.type == "cuda" else "onnxruntime"
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise ValueError(
                f"faces.backend 'onnxruntime' runs on the CPU, but faces.device is "
                f"{settings.device!r}; use backend 'torch' for CUDA"
            )
        from engines.retinaface.onnx_detector import OnnxRetinaFaceDetector

        return OnnxRetinaFaceDetector.load(
            arch, weights=settings.weights, sha256=settings.weights_sha256, options=options,
            max_batch=settings.max_batch,
        )
    return RetinaFaceDetector.load(
        arch, weights=settings.weights, sha256=settings.weights_sha256, device=str(device),
        options=options, max_batch=settings.max_batch,
    )


class FaceStage:
    """Detection, tracking and cropping for batches of frames from any number of streams."""

    def __init__(
        self,
        detector: FaceDetector,
        settings: FaceSettings | None = None,
        *,
        detect_max_side: int = 640,
        with_crops: bool = True,
    ) -> None:
        if detect_max_side < 32:
            raise ValueError(f"detect_max_side must be at least 32, got {detect_max_side}")
        self.detector = detector
        self.settings = settings or FaceSettings()
        self.detect_max_side = detect_max_side
        self.with_crops = with_crops
        self.trackers = StreamTrackers(
            iou_threshold=self.settings.track_iou,
            min_hits=self.settings.track_min_hits,
            max_age_s=self.settings.track_max_age_s,
            max_speed=self.settings.track_max_speed,
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, with_crops: bool = True) -> FaceStage:
        """The stage with the configured detector (loaded now, so errors surface at start-up)."""
        return cls(
            build_face_detector(settings.faces),
            settings.faces,
            detect_max_side=settings.ingest.detect_max_side,
            with_crops=with_crops,
        )

    def process(self, frames: Sequence[Frame]) -> list[FrameFaces]:
        """One result per frame, in order. Frames of one stream must come in time order."""
        errors: dict[int, str] = {}
        images: dict[int, np.ndarray] = {}
        for index, frame in enumerate(frames):
            try:
                image, _ = frame.detection_image(self.detect_max_side)
                check_rgb(image)
                images[index] = image
            except Exception as exc:  # a corrupt or odd frame fails alone
                errors[index] = f"detection image: {type(exc).__name__}: {exc}"
        ready = sorted(images)
        detections = self.detector.detect([images[i] for i in ready]) if ready else []
        found: dict[int, tuple[Face, ...]] = {}
        for index, faces in zip(ready, detections, strict=True):
            try:
                found[index] = self._faces_of(frames[index], images[index].shape, faces)
            except Exception as exc:
                errors[index] = f"face crops: {type(exc).__name__}: {exc}"
        return [
            FrameFaces(frame, found.get(index, ()), errors.get(index))
            for index, frame in enumerate(frames)
        ]

    def forget(self, stream_id: str) -> None:
        """Drop a removed stream's tracks."""
        self.trackers.forget(stream_id)

    def _faces_of(
        self, frame: Frame, small_shape: tuple[int, ...], detections: list[FaceDetection]
    ) -> tuple[Face, ...]:
        settings = self.settings
        sx = frame.width / small_shape[1]
        sy = frame.height / small_shape[0]
        to_full = np.array([sx, sy, sx, sy], np.float32)
        candidates = []
        for det in detections:
            box = det.box * to_full
            if min(box[2] - box[0], box[3] - box[1]) < settings.min_face_px:
                continue
            landmarks = det.landmarks * to_full[:2]
            candidates.append((box, landmarks, det.score))
        candidates.sort(key=lambda c: -float((c[0][2] - c[0][0]) * (c[0][3] - c[0][1])))
        candidates = candidates[: settings.max_faces]

        crops: list[tuple[np.ndarray | None, Alignment]] = []
        for box, landmarks, score in candidates:
            plan = plan_crop(
                box, landmarks, score, size=CROP_SIZE, margin=settings.margin,
                min_landmark_score=settings.min_landmark_score, style=settings.crop,
            )
            if plan is None:  # the reference style has no box fallback: no crop, not scored
                crops.append((None, "none"))
            elif self.with_crops:
                region, x0, y0 = frame.region_rgb(*plan.source_box())
                crops.append((plan.apply(region, x0, y0), plan.alignment))
            else:
                crops.append((None, plan.alignment))

        boxes = np.array([c[0] for c in candidates], np.float64).reshape(-1, 4)
        matches = self.trackers.update(frame.stream_id, boxes, frame.pts)
        return tuple(
            Face(box, score, landmarks, match.track_id, match.confirmed, alignment, crop)
            for (box, landmarks, score), (crop, alignment), match
            in zip(candidates, crops, matches, strict=True)
        )

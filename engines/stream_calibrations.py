"""Per-stream (per-camera) calibrations: the detector's probabilities re-fitted to one camera.

A camera's lighting, compression and subjects shift the detector's scores; a threshold tuned
elsewhere then fires too often on it (or too rarely). An operator records some of the camera's
footage, marks it real, and fits Platt (or temperature) scaling with those frames as the real
class and the fakes of a held-out prepared set as the fake class, so the camera's own reals set
where "real" lies. The result is stored in the model store as ``calibrations/NAME.json``, bound
to the detector weights it was fitted for, and a stream selects it by name
(``streams[].calibration``); it then replaces the bundle's calibration for that stream only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines import store
from engines.calibration import CalibrationError, Calibrator, Method, fit
from engines.checkpoints.bundle import Bundle, weights_id
from engines.checkpoints.files import utc_now
from engines.clip_detector import LNCLIPDetector
from engines.errors import UserError
from engines.recalibrate import logits_of
from engines.training.crops import PreparedSet

SUBDIR = "calibrations"


class StreamCalibrationError(UserError, ValueError):
    """A stream calibration that cannot be found, read or used with these weights."""


@dataclass(frozen=True)
class StreamCalibration:
    name: str
    weights_id: str
    """The detector weights it was fitted for (DetectorInfo.weights_id)."""
    bundle: str
    calibrator: Calibrator
    fitted_on: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=utc_now)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weights_id": self.weights_id, "bundle": self.bundle,
                "calibration": self.calibrator.to_dict(), "fitted_on": self.fitted_on,
                "created_at": self.created_at}

    def check_weights(self, running: str | None) -> None:
        if running != self.weights_id:
            raise StreamCalibrationError(
                f"stream calibration {self.name!r} was fitted for detector {self.bundle} "
                "(other weights than the service runs); fit it again with `dfstream "
                "calibrate-stream` for the installed detector")


def save(calibration: StreamCalibration, overwrite: bool = False) -> Path:
    store.check_store_name(calibration.name)
    path = store.writable_dir(SUBDIR) / f"{calibration.name}.json"
    if path.exists() and not overwrite:
        raise StreamCalibrationError(f"a stream calibration named {calibration.name!r} exists "
                                     f"({path}); pass --overwrite or choose another name")
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(calibration.to_dict(), indent=2))
    partial.replace(path)
    return path


def load(name: str) -> StreamCalibration:
    store.check_store_name(name)
    found = (d / SUBDIR / f"{name}.json" for d in store.search_dirs())
    path = next((candidate for candidate in found if candidate.is_file()), None)
    if path is None:
        raise StreamCalibrationError(f"no stream calibration named {name!r} is installed; fit "
                                     "one with `dfstream calibrate-stream CAMERA_PREP --name "
                                     f"{name} ...`")
    try:
        data = json.loads(path.read_text())
        return StreamCalibration(str(data["name"]), str(data["weights_id"]),
                                 str(data["bundle"]),
                                 Calibrator.from_dict(data["calibration"]),
                                 dict(data.get("fitted_on", {})), str(data["created_at"]))
    except (OSError, ValueError, KeyError, TypeError, CalibrationError) as exc:
        raise StreamCalibrationError(f"{path} is not a stream calibration: {exc}") from None


def _summary(p: np.ndarray) -> dict[str, float]:
    return {"mean_p_fake": float(p.mean()), "above_0.5": float((p >= 0.5).mean())}


def fit_stream_calibration(
    name: str, bundle: Bundle, bundle_name: str, model: LNCLIPDetector, camera: PreparedSet,
    fakes: PreparedSet, *, split: str = "val", method: Method = "platt",
) -> tuple[StreamCalibration, dict[str, Any]]:
    """The calibration and a report: the camera's and the fakes' p_fake before and after."""
    camera_videos = [v for v in camera.videos if v.frames_with_face]
    if any(v.label != "real" for v in camera_videos):
        raise StreamCalibrationError(f"{camera.root} holds videos labelled fake; a camera's "
                                     "footage for its calibration must all be real")
    fake_videos = [v for v in fakes.split(split) if v.label == "fake"]
    if not camera_videos or not fake_videos:
        raise StreamCalibrationError(
            f"need real frames with a face from {camera.root} ({len(camera_videos)} videos) and "
            f"fakes in the {split!r} split of {fakes.root} ({len(fake_videos)} videos)")
    real_logits = logits_of(model, camera.arrays(camera_videos)[0])
    fake_logits = logits_of(model, fakes.arrays(fake_videos)[0])
    logits = np.concatenate([real_logits, fake_logits])
    labels = np.concatenate([np.zeros(len(real_logits)), np.ones(len(fake_logits))])
    before = Calibrator.from_dict(bundle.calibration)
    after = fit(logits, labels, method)
    calibration = StreamCalibration(
        name, weights_id(bundle), bundle_name, after,
        {"camera": str(camera.root), "camera_crops": len(real_logits),
         "fakes": f"{fakes.root}:{split}", "fake_crops": len(fake_logits)})
    report = {
        "camera_before": _summary(before.p_fake(real_logits)),
        "camera_after": _summary(after.p_fake(real_logits)),
        "fakes_before": _summary(before.p_fake(fake_logits)),
        "fakes_after": _summary(after.p_fake(fake_logits)),
    }
    return calibration, report

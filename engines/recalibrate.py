"""Fitting a bundle's calibration on a held-out prepared split: temperature or Platt scaling on
the crops' logits, optionally on slerp-augmented features (interpolations between same-class
features of the set, through the head), which steadies the fit on a small set.

The report gives NLL and ECE of the split's crops before and after (judge them on another split
with ``dfstream eval``), with the reliability bins for a diagram.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from engines.calibration import (
    Calibrator,
    Method,
    Reliability,
    fit,
    reliability,
)
from engines.checkpoints.bundle import Bundle
from engines.clip_detector import LNCLIPDetector
from engines.training.crops import PreparedSet
from engines.training.slerp import slerp_augment

FEATURE_BATCH = 256


@dataclass(frozen=True)
class Recalibration:
    bundle: Bundle
    calibrator: Calibrator
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    reliability_before: Reliability
    reliability_after: Reliability
    crops: int
    fitted_on: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.calibrator.method, "params": list(self.calibrator.params),
            "nll_before": self.nll_before, "nll_after": self.nll_after,
            "ece_before": self.ece_before, "ece_after": self.ece_after,
            "crops": self.crops, "fitted_on": self.fitted_on,
        }


@torch.no_grad()
def _logits_and_features(
    model: LNCLIPDetector, crops: np.ndarray
) -> tuple[np.ndarray, torch.Tensor]:
    model.eval()
    logits, features = [], []
    for start in range(0, len(crops), FEATURE_BATCH):
        batch = torch.from_numpy(crops[start : start + FEATURE_BATCH])
        out, feature = model.logits_and_features(batch)
        logits.append(out.float().numpy())
        features.append(feature.float())
    return np.concatenate(logits), torch.cat(features)


def logits_of(model: LNCLIPDetector, crops: np.ndarray) -> np.ndarray:
    """The (N, 2) head outputs of ``crops`` (uint8 NHWC), in batches."""
    return _logits_and_features(model, crops)[0]


def _nll(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def recalibrate(
    bundle: Bundle,
    model: LNCLIPDetector,
    prepared: PreparedSet,
    *,
    split: str = "val",
    method: Method = "temperature",
    slerp_copies: int = 0,
    seed: int = 0,
) -> Recalibration:
    """The bundle with a calibration fitted on ``split``; ``slerp_copies`` > 0 adds that many
    slerp-augmented copies of the set's features to the fit."""
    videos = prepared.split(split)
    crops, labels, _ = prepared.arrays(videos)
    if len(crops) == 0:
        raise ValueError(f"{prepared.root} has no {split!r} crops to calibrate on")
    logits, features = _logits_and_features(model, crops)
    fit_logits, fit_labels = logits, labels
    if slerp_copies:
        generator = torch.Generator().manual_seed(seed)
        y = torch.from_numpy(labels)
        extra = []
        with torch.no_grad():
            for _ in range(slerp_copies):
                extra.append(model.head(slerp_augment(features, y, generator)).float().numpy())
        fit_logits = np.concatenate([logits, *extra])
        fit_labels = np.concatenate([labels] * (slerp_copies + 1))
    calibrator = fit(fit_logits, fit_labels, method)
    before = Calibrator().p_fake(logits)
    after = calibrator.p_fake(logits)
    rel_before, rel_after = reliability(before, labels), reliability(after, labels)
    calibrated = replace(
        bundle,
        calibration=calibrator.to_dict(),
        metrics={**bundle.metrics, "calibration": {
            "set": str(prepared.root), "split": split, "crops": len(crops),
            "videos": len(videos), "method": method, "slerp_copies": slerp_copies,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "ece_before": rel_before.ece, "ece_after": rel_after.ece,
        }},
    )
    return Recalibration(
        calibrated, calibrator, _nll(before, labels), _nll(after, labels), rel_before.ece,
        rel_after.ece, rel_before, rel_after, len(crops), len(fit_labels),
    )

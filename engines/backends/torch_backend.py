"""Crop scorer on plain (eager) torch: CPU or CUDA, fp32/fp16/bf16.

The compiled form of the same model (torch.compile, CUDA graphs per batch bucket, FP8) is
engines/backends/compiled.py; this eager scorer is its baseline and its accuracy reference.
"""

from __future__ import annotations

import numpy as np
import torch

from engines.backends.base import (
    TORCH_DTYPES,
    batches,
    check_crops,
    check_precision,
    scorer_device,
)
from engines.clip_detector import NUM_CLASSES, LNCLIPDetector


def prepare_model(model: LNCLIPDetector, target: torch.device,
                  dtype: torch.dtype) -> LNCLIPDetector:
    """The model in eval mode on ``target`` in ``dtype``, frozen (moved in place)."""
    model = model.eval().to(device=target, dtype=dtype)
    # The normalisation constants stay float32 whatever the compute precision.
    model.pixel_mean = model.pixel_mean.float()
    model.pixel_std = model.pixel_std.float()
    model.reset_pixel_constants()
    model.requires_grad_(False)
    return model


def to_device(chunk: np.ndarray, target: torch.device) -> torch.Tensor:
    """uint8 crops onto ``target`` (through pinned memory to a GPU)."""
    x = torch.from_numpy(chunk)
    if target.type == "cuda":
        x = x.pin_memory().to(target, non_blocking=True)
    return x


class TorchScorer:
    """The detector as it is in torch, on one device, at one precision."""

    def __init__(
        self,
        model: LNCLIPDetector,
        device: str = "cpu",
        precision: str = "fp32",
        max_batch: int = 32,
    ) -> None:
        check_precision(precision)
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        target = scorer_device(device)
        self.model = prepare_model(model, target, TORCH_DTYPES[precision])
        self.name = "torch"
        self.device = str(target)
        self.precision = precision
        self.max_batch = max_batch
        self._target = target

    def score(self, crops: np.ndarray) -> np.ndarray:
        crops = check_crops(crops)
        out = np.empty((crops.shape[0], NUM_CLASSES), dtype=np.float32)
        with torch.inference_mode():
            for part in batches(crops.shape[0], self.max_batch):
                logits = self.model(to_device(crops[part], self._target))
                out[part] = logits.float().cpu().numpy()
        return out


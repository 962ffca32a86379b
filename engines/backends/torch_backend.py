"""Crop scorer on plain torch: CPU or CUDA, fp32/fp16/bf16, optionally torch.compile'd on GPU.

Compiled graphs are specialised to a batch size, so a compiled scorer pads every call up to the
next of a few fixed sizes (1, 2, 4, ... max_batch) and compiles each once, during ``warmup``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from engines.backends.base import (
    TORCH_DTYPES,
    BackendUnavailable,
    batches,
    check_crops,
    check_precision,
    scorer_device,
)
from engines.clip_detector import NUM_CLASSES, LNCLIPDetector
from engines.interfaces import CROP_SIZE

log = logging.getLogger(__name__)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, ... below ``max_batch``, then ``max_batch``: the sizes a compiled scorer runs."""
    sizes = []
    size = 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch]


class TorchScorer:
    """The detector as it is in torch, on one device, at one precision."""

    def __init__(
        self,
        model: LNCLIPDetector,
        device: str = "cpu",
        precision: str = "fp32",
        max_batch: int = 32,
        compile: bool = False,
        compile_mode: str = "reduce-overhead",
    ) -> None:
        check_precision(precision)
        target = scorer_device(device)
        if compile and target.type != "cuda":
            raise BackendUnavailable("torch.compile is used for the GPU only; on CPU use 'torch'")
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {compile_mode!r} is not one of {COMPILE_MODES}")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.model = model.eval().to(device=target, dtype=TORCH_DTYPES[precision])
        # The normalisation constants stay float32 whatever the compute precision.
        self.model.pixel_mean = self.model.pixel_mean.float()
        self.model.pixel_std = self.model.pixel_std.float()
        self.model.reset_pixel_constants()
        self.model.requires_grad_(False)
        self.name = "torch-compile" if compile else "torch"
        self.device = str(target)
        self.precision = precision
        self.max_batch = max_batch
        self.compiled = compile
        self.compile_mode = compile_mode
        self._buckets = batch_buckets(max_batch) if compile else []
        self._forward = (
            torch.compile(self.model, mode=compile_mode, dynamic=False, fullgraph=True)
            if compile
            else self.model
        )
        self._target = target

    def _bucket(self, count: int) -> int:
        return next(size for size in self._buckets if size >= count)

    def _run(self, chunk: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(chunk)
        if self._target.type == "cuda":
            x = x.pin_memory().to(self._target, non_blocking=True)
        count = x.shape[0]
        if self.compiled:
            size = self._bucket(count)
            if size != count:
                pad = x.new_zeros((size - count, *x.shape[1:]))
                x = torch.cat([x, pad])
        return self._forward(x)[:count]

    def score(self, crops: np.ndarray) -> np.ndarray:
        crops = check_crops(crops)
        out = np.empty((crops.shape[0], NUM_CLASSES), dtype=np.float32)
        with torch.inference_mode():
            for part in batches(crops.shape[0], self.max_batch):
                out[part] = self._run(crops[part]).float().cpu().numpy()
        return out

    def warmup(self) -> None:
        """Run every batch size once (compiles them when compiled) so the first call is fast."""
        sizes = self._buckets or sorted({1, self.max_batch})
        for size in sizes:
            self.score(np.zeros((size, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8))
        if self.compiled:
            log.info("compiled %s for batch sizes %s", self.name, sizes)

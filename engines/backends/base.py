"""What every crop-scorer backend shares: input checks, batching, precision names."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from engines.devices import DeviceUnavailable, resolve_device
from engines.errors import UserError
from engines.interfaces import CROP_SIZE

PRECISIONS = ("fp32", "fp16", "bf16")
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class BackendUnavailable(UserError, RuntimeError):
    """The backend cannot run here (library missing, no GPU); the message says what is missing."""


def scorer_device(device: str) -> torch.device:
    """``resolve_device`` for the scorers, whose contract reports a missing GPU as
    BackendUnavailable (like a missing library) rather than as a bad setting."""
    try:
        return resolve_device(device)
    except DeviceUnavailable as exc:
        raise BackendUnavailable(str(exc)) from None


def check_crops(crops: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The crops as a C-contiguous (N, size, size, 3) uint8 array, or a ValueError naming why."""
    if not isinstance(crops, np.ndarray):
        raise ValueError(f"crops must be a numpy array, got {type(crops).__name__}")
    if crops.dtype != np.uint8:
        raise ValueError(f"crops must be uint8 RGB, got dtype {crops.dtype}")
    if crops.ndim != 4 or crops.shape[1:] != (size, size, 3):
        raise ValueError(f"crops must be (N, {size}, {size}, 3), got {crops.shape}")
    return np.ascontiguousarray(crops)


def batches(count: int, max_batch: int) -> Iterator[slice]:
    for start in range(0, count, max_batch):
        yield slice(start, min(start + max_batch, count))


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision

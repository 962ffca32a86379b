"""Which torch device a setting names: the one place 'auto', 'cpu', 'cuda' and 'cuda:N' are read.

The face detector, the crop scorers and the benchmarks all take the same device strings; reading
them in one place gives every component the same meaning of 'auto' and the same errors.
"""

from __future__ import annotations

import torch

from engines.errors import UserError


class DeviceUnavailable(UserError, ValueError):
    """The device is a valid name, but this machine does not have it (no GPU, or too few)."""


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present, else the CPU; other names are checked against this machine.

    Raises ValueError for a name that is no cpu/cuda device, DeviceUnavailable for a GPU that is
    not here.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}: {exc}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(
                f"device {device!r} requested, but CUDA is not available here "
                "(torch sees no CUDA GPU)"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"device {device!r} requested, but only {torch.cuda.device_count()} GPU(s) exist"
            )
    elif resolved.type != "cpu":
        raise ValueError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    return resolved

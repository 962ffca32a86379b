"""FP8 (e4m3, rowwise scales) for the transformer's linear layers, through torchao.

Only the blocks' projections and MLPs are quantised: they carry nearly all of ViT-L/14's FLOPs,
while the patch embedding (a convolution on raw pixels) and the 2-way head stay in bf16, where
a rounding error would move every score. Activations are scaled per row at run time, weights per
output channel once. torchao is imported only here and only when FP8 is asked for.
"""

from __future__ import annotations

import torch
from torch import nn

MIN_CAPABILITY = (8, 9)
"""Ada and Hopper: the first GPUs with FP8 tensor cores."""
TRANSFORMER_PREFIX = "visual.transformer."
TORCHAO_HINT = "pip install torchao (part of dfstream's `gpu` extra)"


def fp8_unavailable(device: torch.device) -> str | None:
    """Why FP8 cannot run on ``device`` (one line), or None when it can."""
    if device.type != "cuda":
        return (f"FP8 needs a CUDA GPU of compute capability >= 8.9 (Ada, Hopper); the device "
                f"is {device}")
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return (f"FP8 needs compute capability >= 8.9; {torch.cuda.get_device_name(device)} "
                f"has {capability[0]}.{capability[1]}")
    try:
        import torchao.quantization  # noqa: F401
    except ImportError as exc:
        return f"FP8 needs torchao, which does not import here ({exc}): {TORCHAO_HINT}"
    return None


def is_fp8_target(module: nn.Module, fqn: str) -> bool:
    """The filter: linear layers inside the transformer blocks, nothing else."""
    return isinstance(module, nn.Linear) and fqn.startswith(TRANSFORMER_PREFIX)


def fp8_targets(model: nn.Module) -> list[str]:
    """Names of the layers ``quantize_fp8`` converts (for the manifest and the tests)."""
    return [name for name, module in model.named_modules() if is_fp8_target(module, name)]


def quantize_fp8(model: nn.Module) -> list[str]:
    """Convert the transformer's linear layers of a bf16 CUDA model in place; returns them."""
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        PerRow,
        quantize_,
    )

    targets = fp8_targets(model)
    if not targets:
        raise ValueError(f"no linear layers under {TRANSFORMER_PREFIX!r} to quantise")
    quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
              filter_fn=is_fp8_target)
    return targets

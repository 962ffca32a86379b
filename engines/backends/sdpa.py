"""Attention through ``F.scaled_dot_product_attention``, and a check of which kernel runs it.

open_clip's blocks use ``nn.MultiheadAttention``; in inference mode torch runs that as one native
op (``aten::_native_multi_head_attention``), which a compiler cannot see into and FP8 cannot
quantise (its q/k/v projection is a bare parameter, not an ``nn.Linear``). The compiled engine
therefore swaps each one for the same computation written as two ``nn.Linear`` and one SDPA call,
so inductor fuses around it, FP8 reaches the projections, and the flash kernels run attention.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

FUSED_SDPA_OPS = (
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention",
    "aten::_flash_attention_forward",
    "aten::_efficient_attention_forward",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
)
"""Profiler names of the fused SDPA kernels (CUDA flash, memory-efficient, cuDNN; CPU flash)."""
T = TypeVar("T")


class SDPAttention(nn.Module):
    """Self-attention equal to an ``nn.MultiheadAttention`` (no mask, no dropout), via SDPA."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
            raise ValueError("only attention with one packed q/k/v projection can be converted")
        width = mha.embed_dim
        self.heads = mha.num_heads
        self.batch_first = mha.batch_first
        self.qkv = nn.Linear(width, 3 * width, bias=mha.in_proj_bias is not None)
        self.out = nn.Linear(width, width, bias=mha.out_proj.bias is not None)
        with torch.no_grad():
            self.qkv.weight.copy_(mha.in_proj_weight)
            self.out.weight.copy_(mha.out_proj.weight)
            if mha.in_proj_bias is not None:
                self.qkv.bias.copy_(mha.in_proj_bias)
            if mha.out_proj.bias is not None:
                self.out.bias.copy_(mha.out_proj.bias)
        self.to(device=mha.in_proj_weight.device, dtype=mha.in_proj_weight.dtype)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        """The ``nn.MultiheadAttention`` call signature, for self-attention only."""
        if key is not query or value is not query or need_weights or attn_mask is not None:
            raise ValueError("SDPAttention computes unmasked self-attention without weights")
        x = query if self.batch_first else query.transpose(0, 1)
        batch, tokens, width = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        y = self.out(y.transpose(1, 2).reshape(batch, tokens, width))
        return (y if self.batch_first else y.transpose(0, 1)), None


def use_sdpa_attention(model: nn.Module) -> int:
    """Replace every ``nn.MultiheadAttention`` in ``model`` in place; returns how many."""
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, nn.MultiheadAttention)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, SDPAttention(module))
    return len(targets)


def attention_kernels(forward: Callable[[T], torch.Tensor], crops: T) -> list[str]:
    """The fused SDPA kernels one call of ``forward`` runs (empty: none, e.g. the math path)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with torch.inference_mode(), profile(activities=activities) as prof:
        forward(crops)
    names = {event.name for event in prof.events()}
    return sorted(name for name in names if name in FUSED_SDPA_OPS)

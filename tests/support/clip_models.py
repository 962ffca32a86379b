"""Random-weight CLIP towers in HF layout and the checkpoint files built from them.

Nothing is downloaded: ``transformers.CLIPVisionModel`` with OpenAI's activation (QuickGELU)
and LayerNorm epsilon stands in for the published weights, in the published layouts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from engines.checkpoints.base import BaseTower, load_base, save_base
from engines.checkpoints.keymap import hf_tower_to_open_clip
from engines.clip_detector import CLIP_MEAN, CLIP_STD

HF_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=2, patch_size=32),
    "ViT-B-16": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, patch_size=16),
    "ViT-L-14": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                     num_attention_heads=16, patch_size=14),
}


def hf_vision_model(arch: str = "tiny", seed: int = 0) -> Any:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        **HF_CONFIGS[arch], image_size=224, hidden_act="quick_gelu", layer_norm_eps=1e-5
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModel(config).eval()
        randomise_biases(model)
        return model


def randomise_biases(model: nn.Module, scale: float = 0.05) -> None:
    """HF initialises every Linear bias to zero, so a swapped q/k/v bias or a wrong out_proj/fc
    bias mapping would convert unnoticed: give each bias values of its own."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.add_(scale * torch.randn_like(param))


def tune_layernorms(model: Any, seed: int = 1) -> Any:
    """Move every LayerNorm away from its initial values, as LN-tuning would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.add_(0.2 * torch.randn(module.weight.shape, generator=generator))
                module.bias.add_(0.2 * torch.randn(module.bias.shape, generator=generator))
    return model


def linear_head(width: int, seed: int = 2) -> nn.Linear:
    """A head whose logits are of order one, so absolute tolerances mean something."""
    head = nn.Linear(width, 2)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(3.0 * torch.randn(head.weight.shape, generator=generator))
        head.bias.copy_(0.1 * torch.randn(2, generator=generator))
    return head


def random_crops(count: int, seed: int = 0, size: int = 224) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def clip_pixels(crops: np.ndarray) -> torch.Tensor:
    """CLIP preprocessing written out independently of the module under test."""
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def reference_logits(hf: nn.Module, head: nn.Linear, crops: np.ndarray) -> np.ndarray:
    """What the authors' models compute: pooler_output, L2-normalised, then the linear head."""
    with torch.no_grad():
        pooled = hf(pixel_values=clip_pixels(crops)).pooler_output
        return head(F.normalize(pooled, dim=-1)).numpy()


def install_base(hf: nn.Module, name: str = "clip-tiny-test") -> BaseTower:
    save_base(hf_tower_to_open_clip(hf.state_dict()), name, source={"test": True})
    return load_base(name)


def write_gend_file(hf: nn.Module, head: nn.Linear, path: Path) -> Path:
    """GenD's published layout: ``feature_extractor.vision_model.*``, ``model.linear.*``."""
    state = {f"feature_extractor.vision_model.{k}": v.contiguous()
             for k, v in hf.state_dict().items()}
    width = head.weight.shape[1]
    state["feature_extractor.visual_projection.weight"] = torch.randn(width // 2, width)
    state["model.linear.weight"] = head.weight.detach().clone()
    state["model.linear.bias"] = head.bias.detach().clone()
    save_file(state, str(path), metadata={"format": "pt"})
    return path

"""LN-CLIP: OpenAI CLIP's vision tower with an L2-normalised CLS feature and a linear head.

The tower is open_clip's own ``VisionTransformer`` built from open_clip's config registry (the
QuickGELU variants OpenAI trained with; a mismatch there changes every output), with CLIP's
projection removed so the feature is the CLS token after ``ln_post``. Only the LayerNorms and the
head are trainable: that delta is all a detector bundle has to carry
(engines/checkpoints/bundle.py).

The module takes uint8 RGB crops (N, 224, 224, 3) and normalises them itself, so every exported
form of it (ONNX, TensorRT) takes uint8 too and only a quarter of the bytes cross to the device.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import _build_vision_tower
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""CLIP's input normalisation of [0, 1] RGB; the one definition (bundles record it too)."""
NUM_CLASSES = 2
FAKE_CLASS = 1
DEFAULT_ARCH = "ViT-L-14"

ARCHS: dict[str, str] = {
    "ViT-L-14": "ViT-L-14-quickgelu",
    "ViT-B-16": "ViT-B-16-quickgelu",
    "tiny": "dfstream-tiny-quickgelu",
}
"""Our architecture names -> open_clip model config names (all QuickGELU, as OpenAI's CLIP)."""

_CONFIG_DIR = Path(__file__).with_name("model_configs")


@functools.cache
def register_open_clip_configs() -> None:
    """Add our configs (the tiny test tower) to open_clip's registry, once per process."""
    open_clip.add_model_config(_CONFIG_DIR)


@dataclass(frozen=True)
class ArchSpec:
    """The shape of one architecture, read from open_clip's config registry."""

    name: str
    open_clip_name: str
    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int
    mlp_ratio: float

    @property
    def embed_dim(self) -> int:
        """Length of the feature the head sees (the tower width: no projection)."""
        return self.width

    @property
    def layernorms(self) -> int:
        """ln_pre, ln_1 and ln_2 of every block, ln_post."""
        return 2 * self.layers + 2

    @property
    def trainable(self) -> int:
        """LayerNorm weights and biases plus the head's weight and bias."""
        return self.layernorms * 2 * self.width + self.width * NUM_CLASSES + NUM_CLASSES


def arch_spec(arch: str) -> ArchSpec:
    """The spec of a known architecture; a ValueError names the known ones otherwise."""
    if arch not in ARCHS:
        raise ValueError(f"unknown detector architecture {arch!r}; known: {', '.join(ARCHS)}")
    register_open_clip_configs()
    name = ARCHS[arch]
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise RuntimeError(f"open_clip has no config {name!r} (open_clip {open_clip.__version__})")
    if not cfg.get("quick_gelu", False):
        raise RuntimeError(f"open_clip config {name!r} does not use QuickGELU; OpenAI's CLIP does")
    vision = cfg["vision_cfg"]
    width = int(vision["width"])
    return ArchSpec(
        name=arch,
        open_clip_name=name,
        image_size=int(vision.get("image_size", 224)),
        patch_size=int(vision["patch_size"]),
        width=width,
        layers=int(vision["layers"]),
        heads=width // int(vision.get("head_width", 64)),
        mlp_ratio=float(vision.get("mlp_ratio", 4.0)),
    )


class LNCLIPDetector(nn.Module):
    """uint8 crops (N, H, W, 3) -> logits (N, 2); class 1 is fake."""

    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(self, arch: str = DEFAULT_ARCH) -> None:
        super().__init__()
        self.spec = arch_spec(arch)
        cfg = open_clip.get_model_config(self.spec.open_clip_name)
        assert cfg is not None  # arch_spec checked it
        self.visual = _build_vision_tower(
            cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=True, cast_dtype=None
        )
        # The feature is the CLS token after ln_post, before CLIP's projection.
        self.visual.proj = None
        self.head = nn.Linear(self.spec.width, NUM_CLASSES)
        self.register_buffer("pixel_mean", torch.empty(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.empty(1, 3, 1, 1), persistent=False)
        self.reset_pixel_constants()
        self.freeze_backbone()

    def reset_pixel_constants(self) -> None:
        """CLIP's mean and std in uint8 units: (x / 255 - m) / s == (x - 255 m) / (255 s).

        Not part of the state dict; a model materialised from the meta device calls this.
        """
        with torch.no_grad():
            self.pixel_mean.copy_(torch.tensor([m * 255.0 for m in CLIP_MEAN]).view(1, 3, 1, 1))
            self.pixel_std.copy_(torch.tensor([s * 255.0 for s in CLIP_STD]).view(1, 3, 1, 1))

    @property
    def arch(self) -> str:
        return self.spec.name

    def preprocess(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC RGB -> CLIP-normalised NCHW in the model's compute dtype."""
        # Shapes are checked by the scorers; a check here would be frozen into traced exports.
        if crops.dtype != torch.uint8:
            raise TypeError(f"crops must be uint8, got {crops.dtype}")
        x = crops.permute(0, 3, 1, 2).to(torch.float32)
        x = (x - self.pixel_mean) / self.pixel_std
        return x.to(self.head.weight.dtype)

    def features(self, crops: torch.Tensor) -> torch.Tensor:
        """L2-normalised CLS features (N, width)."""
        return F.normalize(self.visual(self.preprocess(crops)), dim=-1)

    def logits_and_features(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(crops)
        return self.head(features), features

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(crops))

    def layernorm_modules(self) -> Iterator[tuple[str, nn.LayerNorm]]:
        """Every LayerNorm of the tower, by its name under ``visual``."""
        for name, module in self.visual.named_modules():
            if isinstance(module, nn.LayerNorm):
                yield name, module

    def trainable_names(self) -> list[str]:
        """Parameter names of the LayerNorms and the head: exactly what LN-tuning trains."""
        names = [
            f"visual.{module_name}.{param}"
            for module_name, _ in self.layernorm_modules()
            for param in ("weight", "bias")
        ]
        return [*names, "head.weight", "head.bias"]

    def freeze_backbone(self) -> None:
        """Make exactly the LayerNorms and the head trainable."""
        trainable = set(self.trainable_names())
        for name, param in self.named_parameters():
            param.requires_grad_(name in trainable)

    def tuned_state_dict(self) -> dict[str, torch.Tensor]:
        """The LayerNorm and head values: what a bundle stores."""
        params = dict(self.named_parameters())
        return {name: params[name].detach() for name in self.trainable_names()}

    def frozen_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything of the tower that LN-tuning leaves as the base weights are."""
        trainable = set(self.trainable_names())
        return {
            name: tensor.detach()
            for name, tensor in self.state_dict().items()
            if name not in trainable and name.startswith("visual.")
        }


@dataclass(frozen=True)
class ParameterCount:
    arch: str
    trainable: int
    total: int
    embed_dim: int
    layernorms: int
    layers: int
    width: int
    heads: int
    patch_size: int
    image_size: int
    open_clip_model: str


def count_parameters(arch: str) -> ParameterCount:
    """Trainable and total values of a detector, counted on the meta device (no memory)."""
    with torch.device("meta"):
        model = LNCLIPDetector(arch)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    spec = model.spec
    return ParameterCount(
        arch=arch,
        trainable=trainable,
        total=total,
        embed_dim=spec.embed_dim,
        layernorms=spec.layernorms,
        layers=spec.layers,
        width=spec.width,
        heads=spec.heads,
        patch_size=spec.patch_size,
        image_size=spec.image_size,
        open_clip_model=spec.open_clip_name,
    )


def random_detector(arch: str = DEFAULT_ARCH, seed: int = 0) -> LNCLIPDetector:
    """A detector with open_clip's random initialisation, reproducible by seed.

    It detects nothing: callers must flag it as untrained wherever it scores.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LNCLIPDetector(arch)
    return model.eval()

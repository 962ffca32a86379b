"""The authors' training augmentations on uint8 crops (torchvision v2), drawn per sample."""

from __future__ import annotations

import torch
from torchvision.transforms import v2


def training_augmentation() -> v2.Transform:
    """Flip 0.5, affine (10 deg, 0.1 shift, 0.9-1.1 scale), Gaussian blur (p 0.1, kernel 7,
    sigma 0.1-2), colour jitter 0.1 (brightness, contrast, saturation; hue is left out: on
    the CPU it costs ten times the rest together), JPEG quality 40-100."""
    return v2.Compose([
        v2.RandomHorizontalFlip(0.5),
        v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
        v2.RandomApply([v2.GaussianBlur(7, sigma=(0.1, 2.0))], p=0.1),
        v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1),
        v2.JPEG(quality=(40, 100)),
    ])


def augment_batch(crops: torch.Tensor, transform: v2.Transform) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> the same, each crop with its own random draw (a v2 transform
    given a whole batch would apply one draw to all)."""
    chw = crops.permute(0, 3, 1, 2)
    out = torch.stack([transform(image) for image in chw])
    return out.permute(0, 2, 3, 1).contiguous()

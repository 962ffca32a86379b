"""Where the detector looks: a Grad-CAM saliency map of one crop's fake logit, and an overlay.

Method: Grad-CAM (Selvaraju et al. 2017) on the patch tokens that enter the tower's last block,
as is usual for ViTs (the tokens that leave the last block do not reach the CLS feature, so
their gradient is zero). The channel weights are the patch-averaged gradients of the fake
logit; the map is the ReLU of the weighted tokens on the patch grid, upsampled to the crop.

Why Grad-CAM and not attention rollout (Abnar & Zuidema 2020): rollout is class-agnostic (it
shows what the CLS token attends to, not what pushes the score towards fake), and open_clip's
blocks never materialise their attention weights, so rollout would mean re-implementing
attention. Grad-CAM needs one hook and one backward pass, whatever the depth, width or patch
size (ViT-L/14, ViT-B/16, the ``tiny`` test tower).

The "fake logit" is the head's log-odds ``z_fake - z_real``: what the softmax p_fake, and every
calibration of it, is a monotone function of. The forward pass is the detector's own
``forward`` on the uint8 crop, so the normalisation (CLIP_MEAN/CLIP_STD) is exactly the
scorer's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from engines.clip_detector import FAKE_CLASS, LNCLIPDetector

OVERLAY_ALPHA = 0.4
"""Weight of the colour map in the overlay; the crop stays readable underneath."""
OVERLAY_JPEG_QUALITY = 90


@dataclass(frozen=True)
class Heatmap:
    saliency: np.ndarray
    """(H, W) float32 in [0, 1]: how much each pixel's patch supports the fake logit."""
    jpeg: bytes
    """The crop with ``saliency`` overlaid as a JET colour map, JPEG."""
    fake_logit: float
    """``z_fake - z_real`` of this crop: the value the map explains."""


def grad_cam(model: LNCLIPDetector, crop: np.ndarray) -> tuple[np.ndarray, float]:
    """(grid_h, grid_w) float32 Grad-CAM of the fake logit on the patch grid, and that logit.

    ``crop``: (H, W, 3) uint8 RGB at the tower's input size. Uses no state between calls.
    """
    size = model.spec.image_size
    if crop.shape != (size, size, 3) or crop.dtype != np.uint8:
        raise ValueError(f"crop must be ({size}, {size}, 3) uint8 RGB, got {crop.shape} "
                         f"{crop.dtype}")
    visual: Any = model.visual
    grid_h, grid_w = visual.grid_size
    batch_first = getattr(visual.transformer, "batch_first", True)
    captured: list[torch.Tensor] = []

    def capture(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        # A leaf of its own: the gradient wanted is d(logit)/d(tokens), not the weights'.
        tokens = args[0].detach().requires_grad_(True)
        captured.append(tokens)
        return (tokens, *args[1:])

    hook = visual.transformer.resblocks[-1].register_forward_pre_hook(capture)
    try:
        with torch.enable_grad():
            logits = model(torch.from_numpy(np.ascontiguousarray(crop))[None])
            fake_logit = logits[0, FAKE_CLASS] - logits[0, 1 - FAKE_CLASS]
            (gradient,) = torch.autograd.grad(fake_logit, captured)
    finally:
        hook.remove()
    tokens = captured[0][0] if batch_first else captured[0][:, 0]
    gradient = gradient[0] if batch_first else gradient[:, 0]
    if tokens.shape[0] != 1 + grid_h * grid_w:
        raise RuntimeError(f"expected CLS + {grid_h}x{grid_w} patch tokens, got {tokens.shape}")
    patches, patch_gradient = tokens[1:].detach().float(), gradient[1:].float()
    weights = patch_gradient.mean(dim=0)
    cam = torch.relu(patches @ weights).reshape(grid_h, grid_w)
    return cam.numpy().astype(np.float32), float(fake_logit.detach())


def normalise(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """The patch map upsampled to (height, width) and scaled to [0, 1]; all zeros when flat."""
    upsampled = cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR)
    low, high = float(upsampled.min()), float(upsampled.max())
    if high - low <= 1e-12:
        return np.zeros((height, width), np.float32)
    return np.clip((upsampled - low) / (high - low), 0.0, 1.0).astype(np.float32)


def overlay_jpeg(crop: np.ndarray, saliency: np.ndarray) -> bytes:
    """The RGB crop under a JET colour map of ``saliency`` (red: most support for fake), JPEG."""
    colours = cv2.applyColorMap(np.round(saliency * 255).astype(np.uint8), cv2.COLORMAP_JET)
    bgr = np.ascontiguousarray(crop[:, :, ::-1])
    blended = cv2.addWeighted(bgr, 1.0 - OVERLAY_ALPHA, colours, OVERLAY_ALPHA, 0.0)
    ok, jpeg = cv2.imencode(".jpg", blended, [cv2.IMWRITE_JPEG_QUALITY, OVERLAY_JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode the heatmap overlay as JPEG")
    return jpeg.tobytes()


def compute_heatmap(model: LNCLIPDetector, crop: np.ndarray) -> Heatmap:
    """The saliency map of ``crop``'s fake logit at the crop's size, and the overlay JPEG.

    ``model`` is a torch detector (the ONNX/TensorRT scorers have no gradients); put it in
    eval mode once, and call from one thread at a time (the hook lives on the model meanwhile).
    """
    cam, fake_logit = grad_cam(model, crop)
    saliency = normalise(cam, crop.shape[0], crop.shape[1])
    return Heatmap(saliency=saliency, jpeg=overlay_jpeg(crop, saliency), fake_logit=fake_logit)

"""RetinaFace priors, box and landmark decoding, and NMS, all on the network's device.

Priors are cached per canvas size and device; decoding, NMS (``torchvision.ops.batched_nms``)
and the split per image run on the device, with one copy back to the host per batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torchvision.ops import batched_nms

from engines.interfaces import FaceDetection

MIN_SIZES = ((16, 32), (64, 128), (256, 512))
"""Prior box sides in pixels, per feature level."""
STEPS = (8, 16, 32)
"""Feature strides of the three levels."""
VARIANCES = (0.1, 0.2)
CANVAS_ALIGN = 32
"""Canvas sides are multiples of the coarsest stride, so every feature map is an exact
power-of-two reduction of the input and the priors tile it exactly."""


def _align(side: int) -> int:
    return -(-side // CANVAS_ALIGN) * CANVAS_ALIGN


def canvas_of(sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The (height, width) canvas that holds images of these (h, w) sizes."""
    return _align(max(h for h, _ in sizes)), _align(max(w for _, w in sizes))


def prior_boxes(height: int, width: int) -> torch.Tensor:
    """(P, 4) priors as centre x, centre y, width, height in pixels, in the network's order."""
    levels = []
    for step, sizes in zip(STEPS, MIN_SIZES, strict=True):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        ys, xs = torch.meshgrid(
            (torch.arange(rows, dtype=torch.float32) + 0.5) * step,
            (torch.arange(cols, dtype=torch.float32) + 0.5) * step,
            indexing="ij",
        )
        centres = torch.stack([xs, ys], dim=-1).reshape(-1, 1, 2).expand(-1, len(sizes), 2)
        sides = torch.tensor(sizes, dtype=torch.float32).view(1, -1, 1).expand(rows * cols, -1, 2)
        levels.append(torch.cat([centres, sides], dim=-1).reshape(-1, 4))
    return torch.cat(levels)


@lru_cache(maxsize=64)
def _cached_priors(height: int, width: int, device: str) -> torch.Tensor:
    return prior_boxes(height, width).to(device)


def decode(
    loc: torch.Tensor, landmarks: torch.Tensor, priors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (N, 4) x1 y1 x2 y2 and landmarks (N, 5, 2) in pixels from deltas and priors."""
    centres, sides = priors[:, :2], priors[:, 2:]
    box_centres = centres + loc[:, :2] * VARIANCES[0] * sides
    box_sides = sides * torch.exp(loc[:, 2:] * VARIANCES[1])
    boxes = torch.cat([box_centres - box_sides / 2, box_centres + box_sides / 2], dim=1)
    points = centres[:, None, :] + landmarks.reshape(-1, 5, 2) * VARIANCES[0] * sides[:, None, :]
    return boxes, points


@dataclass(frozen=True)
class DetectionOptions:
    confidence: float = 0.8
    nms_iou: float = 0.4
    pre_nms_top_k: int = 1000
    """Candidates per image considered for NMS, best first."""
    max_per_image: int = 256

    def __post_init__(self) -> None:
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must lie in (0, 1), got {self.confidence}")
        if not 0 < self.nms_iou < 1:
            raise ValueError(f"nms_iou must lie in (0, 1), got {self.nms_iou}")
        if self.pre_nms_top_k < 1 or self.max_per_image < 1:
            raise ValueError("pre_nms_top_k and max_per_image must be at least 1")


def postprocess(
    loc: torch.Tensor,
    scores: torch.Tensor,
    landmarks: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    options: DetectionOptions,
) -> list[list[FaceDetection]]:
    """Per-image detections from a batch's raw outputs; ``sizes`` are each image's (h, w)."""
    batch, count = scores.shape
    device = scores.device
    priors = _cached_priors(*canvas_of(sizes), str(device))
    if priors.shape[0] != count:
        raise RuntimeError(f"network gave {count} priors, expected {priors.shape[0]}")
    top_scores, top_index = scores.float().topk(min(options.pre_nms_top_k, count), dim=1)
    image_index, rank = (top_scores > options.confidence).nonzero(as_tuple=True)
    prior_index = top_index[image_index, rank]
    boxes, points = decode(
        loc[image_index, prior_index].float(), landmarks[image_index, prior_index].float(),
        priors[prior_index],
    )
    chosen = top_scores[image_index, rank]
    # Drop boxes centred in another image's padding before they can suppress anything.
    limits = torch.tensor([(w, h) for h, w in sizes], dtype=torch.float32, device=device)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = (centres < limits[image_index]).all(dim=1)
    boxes, points, chosen, image_index = (
        boxes[inside], points[inside], chosen[inside], image_index[inside]
    )
    keep = batched_nms(boxes, chosen, image_index, options.nms_iou)  # score order
    packed = torch.cat(
        [boxes[keep], chosen[keep, None], points[keep].reshape(-1, 10),
         image_index[keep, None].float()],
        dim=1,
    ).cpu().numpy()
    results: list[list[FaceDetection]] = [[] for _ in range(batch)]
    for row in packed:
        faces = results[int(row[15])]
        if len(faces) < options.max_per_image:
            faces.append(FaceDetection(
                box=row[0:4].copy(), score=float(row[4]), landmarks=row[5:15].reshape(5, 2).copy()
            ))
    return results


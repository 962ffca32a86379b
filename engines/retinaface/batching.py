"""What the torch and ONNX Runtime detectors share: loading, input checks, batching, decoding.

Images are padded, never resized, to a canvas whose sides are the next multiples of 32; the
padding holds the mean colour, which normalises to zero. Images of one call are grouped by that
canvas size and each group runs as one batch, so an image gives the same boxes alone or in any
batch: a larger canvas would change what the network sees beyond the image's bottom and right
edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Self

import numpy as np
import torch

from engines.interfaces import FaceDetection
from engines.retinaface.decode import DetectionOptions, canvas_of, postprocess
from engines.retinaface.network import MEAN_RGB, RetinaFace
from engines.retinaface.weights import WeightsInfo, load_network

MIN_IMAGE_SIDE = 2


def check_image(image: object, index: int = 0) -> np.ndarray:
    """The image if it is HxWx3 uint8 RGB; otherwise an error that names what is wrong."""
    label = f"image {index}"
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{label}: expected a numpy array, got {type(image).__name__}")
    if image.size == 0:
        raise ValueError(f"{label} is empty (shape {image.shape})")
    if image.dtype != np.uint8:
        raise ValueError(f"{label}: expected uint8 RGB pixels, got dtype {image.dtype}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 2, 4)):
        kind = "RGBA" if image.ndim == 3 and image.shape[2] == 4 else "grayscale"
        raise ValueError(
            f"{label}: expected an HxWx3 RGB image, got shape {image.shape} ({kind}); "
            "convert it to RGB first (e.g. cv2.cvtColor)"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{label}: expected an HxWx3 RGB image, got shape {image.shape}")
    if image.shape[0] < MIN_IMAGE_SIDE or image.shape[1] < MIN_IMAGE_SIDE:
        raise ValueError(
            f"{label}: {image.shape[1]}x{image.shape[0]} pixels is too small to search for faces"
        )
    return image


def pack(images: Sequence[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
    """Images top-left aligned on one (B, H, W, 3) uint8 canvas padded with the mean colour."""
    height, width = canvas_of([img.shape[:2] for img in images])
    shape = (len(images), height, width, 3)
    canvas = out if out is not None and out.shape == shape else np.empty(shape, np.uint8)
    mean = np.array(MEAN_RGB, np.uint8)
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        canvas[i, :h, :w] = img
        canvas[i, :h, w:] = mean
        canvas[i, h:] = mean
    return canvas


RawOutputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""The network's ``loc``, ``scores`` and ``landmarks`` for one packed canvas."""


class BatchedDetector:
    """FaceDetector plumbing shared by the backends: loading, validation, batching, decoding.

    Images are grouped by canvas size and run in chunks of at most ``max_batch``. A backend
    supplies ``from_network`` (a detector for a loaded network) and ``_infer`` (a packed uint8
    canvas to raw outputs).
    """

    name: str
    device: str

    def __init__(
        self, options: DetectionOptions | None, max_batch: int, weights: WeightsInfo | None
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.options = options or DetectionOptions()
        self.max_batch = max_batch
        self.weights = weights

    @classmethod
    def load(
        cls,
        arch: str = "mobilenet0.25",
        *,
        weights: Path | None = None,
        sha256: str | None = None,
        **kwargs: object,
    ) -> Self:
        """A detector with published weights (model store, or an explicit verified file);
        ``kwargs`` go to the backend's constructor."""
        net, info = load_network(arch, weights, sha256)
        return cls.from_network(net, info, **kwargs)

    @classmethod
    def from_network(cls, net: RetinaFace, weights: WeightsInfo, **kwargs: object) -> Self:
        """A detector running ``net``, loaded from ``weights``."""
        raise NotImplementedError

    def _infer(self, canvas: np.ndarray) -> RawOutputs:
        raise NotImplementedError

    def _canvas_buffer(self, shape: tuple[int, ...]) -> np.ndarray | None:
        return None

    def detect(self, images: Sequence[np.ndarray]) -> list[list[FaceDetection]]:
        """One list per image, highest score first, in that image's pixel coordinates."""
        checked = [check_image(img, i) for i, img in enumerate(images)]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(checked):
            groups.setdefault(canvas_of([img.shape[:2]]), []).append(i)
        results: list[list[FaceDetection]] = [[] for _ in checked]
        for (height, width), members in groups.items():
            for start in range(0, len(members), self.max_batch):
                chunk = members[start:start + self.max_batch]
                group = [checked[i] for i in chunk]
                sizes = [img.shape[:2] for img in group]
                canvas = pack(group, self._canvas_buffer((len(group), height, width, 3)))
                raw = self._infer(canvas)
                for i, faces in zip(chunk, postprocess(*raw, sizes, self.options), strict=True):
                    results[i] = faces
        return results

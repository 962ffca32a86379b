"""RetinaFace on torch, CPU or CUDA: pinned staging buffers and an asynchronous copy on CUDA."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Self

import numpy as np
import torch

from engines.devices import resolve_device
from engines.interfaces import FaceDetection
from engines.retinaface.batching import BatchedDetector, RawOutputs
from engines.retinaface.decode import DetectionOptions
from engines.retinaface.network import RetinaFace, Uint8RetinaFace
from engines.retinaface.weights import WeightsInfo


class RetinaFaceDetector(BatchedDetector):
    """RetinaFace on torch, CPU or CUDA (fp32, or fp16 on CUDA)."""

    def __init__(
        self,
        net: RetinaFace,
        *,
        device: str = "auto",
        options: DetectionOptions | None = None,
        max_batch: int = 32,
        half: bool = False,
        channels_last: bool = True,
        weights: WeightsInfo | None = None,
    ) -> None:
        super().__init__(options, max_batch, weights)
        self._device = resolve_device(device)
        if half and self._device.type != "cuda":
            raise ValueError("half precision is only offered on CUDA")
        self.device = str(self._device)
        self.name = f"retinaface-{net.arch}" + ("-fp16" if half else "")
        # A copy: moving to a device or a memory format is in place, and the caller may build
        # other detectors (another device, the ONNX export) from the same network.
        model = Uint8RetinaFace(copy.deepcopy(net)).to(self._device)
        if half:
            model = model.half()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self._model = model.eval()
        self._staging: dict[tuple[int, ...], torch.Tensor] = {}

    @classmethod
    def from_network(cls, net: RetinaFace, weights: WeightsInfo, **kwargs: object) -> Self:
        return cls(net, weights=weights, **kwargs)  # type: ignore[arg-type]

    def _canvas_buffer(self, shape: tuple[int, ...]) -> np.ndarray | None:
        if self._device.type != "cuda":
            return None
        # Pinned staging memory makes the host-to-device copy asynchronous and faster; the
        # buffer is reused only after the previous call has synchronised on its results.
        buffer = self._staging.get(shape)
        if buffer is None:
            if len(self._staging) >= 8:
                self._staging.clear()
            buffer = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            self._staging[shape] = buffer
        return buffer.numpy()

    def _infer(self, canvas: np.ndarray) -> RawOutputs:
        with torch.inference_mode():
            staged = self._staging.get(canvas.shape)
            host = (
                staged if staged is not None and staged.data_ptr() == canvas.ctypes.data
                else torch.from_numpy(canvas)
            )
            images = host.to(self._device, non_blocking=True)
            return self._model(images)

    def detect(self, images: Sequence[np.ndarray]) -> list[list[FaceDetection]]:
        with torch.inference_mode():
            return super().detect(images)

"""RetinaFace on ONNX Runtime (CPU): the torch network exported with dynamic batch and size.

The exported graph takes the same uint8 RGB NHWC canvas as the torch path and returns the same
raw outputs, so batching, decoding and NMS are shared (engines.retinaface.batching). The export
goes through torch's TorchScript-based ONNX exporter, which needs no extra package.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Self

import numpy as np
import torch

from engines.retinaface.batching import BatchedDetector, RawOutputs
from engines.retinaface.decode import DetectionOptions
from engines.retinaface.network import RetinaFace, Uint8RetinaFace
from engines.retinaface.weights import WeightsInfo

OPSET = 17
INPUT = "images"
OUTPUTS = ("loc", "scores", "landmarks")
RUN_FRAMES = 4
"""Frames per ONNX Runtime run. On the CPU a larger run is no faster per frame, but ORT's memory
arena keeps the largest run's activations for good (640x384 canvases, 2 cores: 7.8 ms per frame
at 4, 8 and 16 frames alike; about 65 MB retained at 4 against 250 MB at 16)."""


def export_onnx(net: RetinaFace, path: Path | None = None) -> bytes:
    """The ONNX model (uint8 NHWC in, dynamic batch, height and width); also written to ``path``."""
    model = Uint8RetinaFace(net).eval()
    example = torch.zeros(1, 64, 64, 3, dtype=torch.uint8)
    per_prior = {0: "batch", 1: "priors"}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the exporter's own notice
        exported = Path(tmp) / "retinaface.onnx"
        torch.onnx.export(
            model,
            (example,),
            exported,
            dynamo=False,
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            dynamic_axes={INPUT: {0: "batch", 1: "height", 2: "width"},
                          **{name: per_prior for name in OUTPUTS}},
            opset_version=OPSET,
        )
        data = exported.read_bytes()
    if path is not None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")
        partial.write_bytes(data)
        os.replace(partial, target)
    return data


class OnnxRetinaFaceDetector(BatchedDetector):
    """RetinaFace on ONNX Runtime's CPU provider."""

    def __init__(
        self,
        model: bytes | Path,
        *,
        arch: str,
        options: DetectionOptions | None = None,
        max_batch: int = 32,
        threads: int | None = None,
        weights: WeightsInfo | None = None,
    ) -> None:
        import onnxruntime as ort

        super().__init__(options, max_batch, weights)
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle worker threads would otherwise spin and starve the decode threads beside them
        # (measured: 3x slower detection under load with spinning on).
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is not None:
            session_options.intra_op_num_threads = threads
        source = model if isinstance(model, bytes) else str(model)
        self._session = ort.InferenceSession(
            source, sess_options=session_options, providers=["CPUExecutionProvider"]
        )
        self.name = f"retinaface-{arch}-onnx"
        self.device = "cpu"

    @classmethod
    def from_network(cls, net: RetinaFace, weights: WeightsInfo, **kwargs: object) -> Self:
        """The network exported to ONNX and run by ONNX Runtime."""
        model = export_onnx(net)
        return cls(model, arch=net.arch, weights=weights, **kwargs)  # type: ignore[arg-type]

    def _infer(self, canvas: np.ndarray) -> RawOutputs:
        runs = [self._session.run(list(OUTPUTS), {INPUT: canvas[i : i + RUN_FRAMES]})
                for i in range(0, len(canvas), RUN_FRAMES)]
        loc, scores, landmarks = (
            torch.from_numpy(np.concatenate(parts) if len(parts) > 1 else parts[0])
            for parts in zip(*runs, strict=True))
        return loc, scores, landmarks

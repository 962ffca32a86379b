"""Crop scorer on ONNX Runtime (CPU), and the ONNX export TensorRT builds from.

The exported graph takes the uint8 crops themselves (dynamic batch, fixed 224x224x3) and does
CLIP's normalisation inside, exactly as the torch module does. Exports are cached by the
weights' identity, so a service restart does not export again.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from engines.backends.base import BackendUnavailable, batches, check_crops
from engines.clip_detector import NUM_CLASSES, LNCLIPDetector

log = logging.getLogger(__name__)

OPSET = 17
"""17 is the first opset with LayerNormalization, which TensorRT maps to one fused layer."""
INPUT_NAME = "crops"
OUTPUT_NAME = "logits"


def export_onnx(model: LNCLIPDetector, path: Path, opset: int = OPSET) -> Path:
    """Write the detector as ONNX: uint8 (batch, H, W, 3) in, float32 (batch, 2) logits out."""
    size = model.spec.image_size
    was = next(model.parameters())
    if was.device.type != "cpu" or was.dtype != torch.float32:
        raise ValueError("export a float32 model on the CPU (before a backend moves or casts it)")
    dummy = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.part")
    os.close(fd)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        # MultiheadAttention's fused inference kernel has no ONNX form; trace the plain ops.
        torch.backends.mha.set_fastpath_enabled(False)
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript-based exporter is deprecated in favour of one that needs the
            # onnxscript package; it still exports these ops faithfully at opset 17.
            warnings.simplefilter("ignore", DeprecationWarning)
            # MultiheadAttention's own shape checks, constant for fixed-size crops.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                model.eval(),
                (dummy,),
                tmp,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
            )
        os.replace(tmp, path)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        Path(tmp).unlink(missing_ok=True)
    return path


def cached_onnx(model: LNCLIPDetector, key: str, cache_dir: Path, opset: int = OPSET) -> Path:
    """The model's ONNX file in ``cache_dir``, exported once per weights ``key``."""
    path = Path(cache_dir) / f"{model.arch}-{key[:16]}-opset{opset}.onnx"
    if path.is_file():
        return path
    log.info("exporting %s to ONNX at %s", model.arch, path)
    return export_onnx(model, path, opset)


class OnnxRuntimeScorer:
    """The exported detector on ONNX Runtime's CPU provider."""

    name = "onnxruntime"
    device = "cpu"

    def __init__(self, onnx_path: Path, max_batch: int = 32, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime is not installed: {exc}") from None
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning workers starve when another process holds a core (the service shares the
        # CPU with decoding and face detection); blocking waits degrade gracefully.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        inputs = self.session.get_inputs()
        if [i.name for i in inputs] != [INPUT_NAME] or inputs[0].type != "tensor(uint8)":
            raise ValueError(f"{onnx_path} does not take uint8 `{INPUT_NAME}`: {inputs}")
        self.size = int(inputs[0].shape[1])
        self.max_batch = max_batch
        self.precision = "fp32"
        self.path = Path(onnx_path)

    def score(self, crops: np.ndarray) -> np.ndarray:
        crops = check_crops(crops, self.size)
        out = np.empty((crops.shape[0], NUM_CLASSES), dtype=np.float32)
        for part in batches(crops.shape[0], self.max_batch):
            out[part] = self.session.run([OUTPUT_NAME], {INPUT_NAME: crops[part]})[0]
        return out

    def warmup(self) -> None:
        self.score(np.zeros((1, self.size, self.size, 3), dtype=np.uint8))

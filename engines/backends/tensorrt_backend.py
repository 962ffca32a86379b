"""Crop scorer on TensorRT 10: an fp16 engine built from the ONNX export, cached on disk.

The engine has one optimisation profile over the batch (1 .. max_batch, tuned for ``opt_batch``)
and takes the uint8 crops directly. It runs with the named-tensor API (``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``) on a torch CUDA stream, so inputs and outputs are
ordinary torch tensors and no other CUDA binding is needed.

TensorRT is imported only when this backend is used; where it is missing, BackendUnavailable
says so and how to get it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.backends.base import BackendUnavailable, batches, check_crops, scorer_device
from engines.backends.onnx_backend import INPUT_NAME, OUTPUT_NAME
from engines.clip_detector import NUM_CLASSES
from engines.devices import resolve_device

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "TensorRT is not installed: install NVIDIA's `tensorrt` wheels (pip install 'dfstream[gpu]' "
    "with access to pypi.nvidia.com) or run in an NGC TensorRT container; other backends: "
    "'torch', 'torch-compile', 'onnxruntime'"
)


def import_tensorrt() -> Any:
    """The tensorrt module, or BackendUnavailable with what to do."""
    try:
        import tensorrt
    except ImportError as exc:  # the PyPI stub raises other errors when it cannot download
        raise BackendUnavailable(f"{INSTALL_HINT} ({exc})") from None
    except Exception as exc:
        raise BackendUnavailable(f"{INSTALL_HINT} (import failed: {exc})") from None
    major = int(str(tensorrt.__version__).split(".")[0])
    if major < 10:
        raise BackendUnavailable(
            f"TensorRT {tensorrt.__version__} found; this backend needs TensorRT 10 or later"
        )
    return tensorrt


def tensorrt_available() -> bool:
    """Whether the TensorRT backend can run here (module importable and a CUDA GPU present)."""
    if resolve_device("auto").type != "cuda":
        return False
    try:
        import_tensorrt()
    except BackendUnavailable:
        return False
    return True


def engine_key(
    onnx_path: Path, trt_version: str, device: torch.device, profile: tuple[int, int, int],
    fp16: bool,
) -> str:
    """Engines are only valid for one ONNX file, TensorRT version, GPU model and profile."""
    props = torch.cuda.get_device_properties(device)
    stat = onnx_path.stat()
    parts = {
        "onnx": onnx_path.name,
        "onnx_size": stat.st_size,
        "onnx_mtime_ns": stat.st_mtime_ns,
        "tensorrt": trt_version,
        "gpu": props.name,
        "capability": f"{props.major}.{props.minor}",
        "profile": list(profile),
        "fp16": fp16,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _normalise_in_fp32(trt: Any, network: Any) -> None:
    """LayerNorm after attention can overflow in fp16: let it accumulate in fp32, as torch does.

    ``get_layer`` returns the base ILayer; the subclass's attributes need the downcast.
    """
    layer_class = getattr(trt, "INormalizationLayer", None)
    changed = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer_class is None or layer.type != trt.LayerType.NORMALIZATION:
            continue
        layer.__class__ = layer_class
        try:
            layer.compute_precision = trt.float32
            changed += 1
        except (AttributeError, TypeError) as exc:
            log.warning("TensorRT %s cannot keep LayerNorm in fp32: %s", trt.__version__, exc)
            return
    log.info("%d LayerNorm layers normalise in fp32", changed)


def build_engine(
    onnx_path: Path,
    max_batch: int,
    opt_batch: int,
    fp16: bool = True,
    workspace_bytes: int = 4 << 30,
) -> bytes:
    """Serialised engine for the ONNX model with a batch profile (1, opt_batch, max_batch)."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: " + "; ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        _normalise_in_fp32(trt, network)
    shape = tuple(network.get_input(0).shape)[1:]
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, *shape), (opt_batch, *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log)")
    return bytes(serialized)


class TensorRTScorer:
    """The detector as a TensorRT engine on one GPU."""

    name = "tensorrt"

    def __init__(
        self,
        onnx_path: Path,
        cache_dir: Path,
        device: str = "cuda",
        max_batch: int = 32,
        opt_batch: int | None = None,
        fp16: bool = True,
    ) -> None:
        trt = import_tensorrt()
        self._device = scorer_device(device)
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if self._device.type != "cuda":
            raise BackendUnavailable(f"TensorRT runs on CUDA devices, not {device!r}")
        if self._device.index is None:
            self._device = torch.device("cuda", torch.cuda.current_device())
        opt = min(opt_batch or max_batch, max_batch)
        key = engine_key(Path(onnx_path), trt.__version__, self._device, (1, opt, max_batch), fp16)
        engine_path = Path(cache_dir) / f"{Path(onnx_path).stem}-{key[:16]}.plan"
        if engine_path.is_file():
            plan = engine_path.read_bytes()
        else:
            log.info("building TensorRT engine %s (this takes minutes once)", engine_path)
            with torch.cuda.device(self._device):
                plan = build_engine(Path(onnx_path), max_batch, opt, fp16)
            engine_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=engine_path.parent, suffix=".plan.part")
            with os.fdopen(fd, "wb") as handle:
                handle.write(plan)
            os.replace(tmp, engine_path)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self._device):
            self._engine = self._runtime.deserialize_cuda_engine(plan)
            if self._engine is None:
                raise RuntimeError(f"TensorRT could not load {engine_path}; delete it to rebuild")
            self._context = self._engine.create_execution_context()
        input_shape = tuple(self._engine.get_tensor_shape(INPUT_NAME))
        self.size = int(input_shape[1])
        self._out_dtype = torch.from_numpy(
            np.empty(0, dtype=trt.nptype(self._engine.get_tensor_dtype(OUTPUT_NAME)))
        ).dtype
        self._stream = torch.cuda.Stream(self._device)
        self.device = str(self._device)
        self.max_batch = max_batch
        self.precision = "fp16" if fp16 else "fp32"
        self.engine_path = engine_path

    def _run(self, chunk: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(chunk).pin_memory().to(self._device, non_blocking=True)
        y = torch.empty((x.shape[0], NUM_CLASSES), dtype=self._out_dtype, device=self._device)
        self._context.set_input_shape(INPUT_NAME, tuple(x.shape))
        self._context.set_tensor_address(INPUT_NAME, x.data_ptr())
        self._context.set_tensor_address(OUTPUT_NAME, y.data_ptr())
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return y

    def score(self, crops: np.ndarray) -> np.ndarray:
        crops = check_crops(crops, self.size)
        out = np.empty((crops.shape[0], NUM_CLASSES), dtype=np.float32)
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            for part in batches(crops.shape[0], self.max_batch):
                out[part] = self._run(crops[part]).float().cpu().numpy()
        return out

    def warmup(self) -> None:
        for size in sorted({1, self.max_batch}):
            self.score(np.zeros((size, self.size, self.size, 3), dtype=np.uint8))

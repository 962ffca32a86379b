"""Crop-scorer backends and the factory that picks one for this machine.

``auto`` means: TensorRT when it imports and a CUDA GPU is present; else torch on the GPU (fp16);
on a CPU-only machine, whichever of ONNX Runtime and torch measures faster for this model here
(the measurement is cached per model and machine). The choice is logged with its reason.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from engines.backends.base import PRECISIONS, BackendUnavailable, check_precision, scorer_device
from engines.clip_detector import LNCLIPDetector
from engines.interfaces import CropScorer

log = logging.getLogger(__name__)

BACKENDS = ("torch", "torch-compile", "onnxruntime", "tensorrt")

__all__ = ["BACKENDS", "PRECISIONS", "BackendUnavailable", "create_scorer"]


def resolve_precision(precision: str, device: str) -> str:
    """'auto' -> fp16 on a GPU, fp32 on the CPU."""
    if precision == "auto":
        return "fp16" if torch.device(device).type == "cuda" else "fp32"
    return check_precision(precision)


def _weights_key(model: LNCLIPDetector) -> str:
    from engines.checkpoints.files import tensors_sha256

    return tensors_sha256(model.state_dict())


def _default_cache_dir() -> Path:
    from engines import store

    return store.writable_dir(store.ENGINES_SUBDIR)


def create_scorer(
    model: LNCLIPDetector,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    max_batch: int = 32,
    cache_dir: Path | None = None,
    model_key: str | None = None,
) -> CropScorer:
    """A scorer for ``model``; ``model_key`` names its weights for export caches (else hashed).

    The model must be float32 on the CPU (as loaded); the torch backends move it in place.
    """
    if backend not in (*BACKENDS, "auto"):
        raise ValueError(f"backend {backend!r} is not one of auto, {', '.join(BACKENDS)}")
    device = str(scorer_device(device))
    on_gpu = torch.device(device).type == "cuda"
    precision = resolve_precision(precision, device)
    if backend == "auto":
        backend = _choose(model, device, precision, max_batch, cache_dir, model_key)
    if backend in ("torch", "torch-compile"):
        from engines.backends.torch_backend import TorchScorer

        return TorchScorer(model, device, precision, max_batch, compile=backend == "torch-compile")
    cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    key = model_key or _weights_key(model)
    from engines.backends.onnx_backend import OnnxRuntimeScorer, cached_onnx

    if backend == "onnxruntime":
        if on_gpu:
            raise BackendUnavailable("the onnxruntime backend runs on the CPU; use device 'cpu'")
        if precision != "fp32":
            raise BackendUnavailable("the onnxruntime backend computes in fp32 only")
        return OnnxRuntimeScorer(cached_onnx(model, key, cache), max_batch)
    from engines.backends.tensorrt_backend import TensorRTScorer, import_tensorrt

    import_tensorrt()  # fail with the install hint before a long ONNX export
    if not on_gpu:
        raise BackendUnavailable("the tensorrt backend needs a CUDA device")
    if precision == "bf16":
        raise BackendUnavailable("the tensorrt backend builds fp16 or fp32 engines, not bf16")
    return TensorRTScorer(
        cached_onnx(model, key, cache), cache, device, max_batch, fp16=precision == "fp16"
    )


def _choose(
    model: LNCLIPDetector,
    device: str,
    precision: str,
    max_batch: int,
    cache_dir: Path | None,
    model_key: str | None,
) -> str:
    from engines.backends.tensorrt_backend import tensorrt_available

    if torch.device(device).type == "cuda":
        if tensorrt_available() and precision != "bf16":
            log.info("crop scorer: tensorrt (TensorRT imports and a CUDA GPU is present)")
            return "tensorrt"
        log.info("crop scorer: torch on %s, %s (TensorRT not available)", device, precision)
        return "torch"
    if precision != "fp32":
        log.info("crop scorer: torch on cpu (%s; onnxruntime computes fp32 only)", precision)
        return "torch"
    return _measured_cpu_choice(model, max_batch, cache_dir, model_key)


def _crops_per_second(scorer: CropScorer, crops: np.ndarray, min_seconds: float = 0.5) -> float:
    scorer.score(crops[:1])  # first call allocates and specialises
    runs, start = 0, time.perf_counter()
    while runs < 2 or (time.perf_counter() - start < min_seconds and runs < 10):
        scorer.score(crops)
        runs += 1
    return runs * len(crops) / (time.perf_counter() - start)


def _measured_cpu_choice(
    model: LNCLIPDetector, max_batch: int, cache_dir: Path | None, model_key: str | None
) -> str:
    """Time torch and ONNX Runtime on this CPU for this model; remember the answer."""
    from engines.backends.onnx_backend import OnnxRuntimeScorer, cached_onnx
    from engines.backends.torch_backend import TorchScorer

    cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    key = model_key or _weights_key(model)
    batch = min(max_batch, 4)
    machine = {
        "arch": model.arch,
        "weights": key[:16],
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "batch": batch,
    }
    choices_file = cache / "cpu-backend-choices.json"
    try:
        choices = json.loads(choices_file.read_text()) if choices_file.is_file() else {}
    except (OSError, json.JSONDecodeError):
        choices = {}
    entry_key = json.dumps(machine, sort_keys=True)
    if entry_key in choices:
        entry = choices[entry_key]
        log.info("crop scorer: %s (measured earlier on this machine: %s crops/s)",
                 entry["backend"], entry["crops_per_s"])
        return str(entry["backend"])
    size = model.spec.image_size
    crops = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    measured = {
        "torch": _crops_per_second(TorchScorer(model, "cpu", "fp32", batch), crops),
        "onnxruntime": _crops_per_second(
            OnnxRuntimeScorer(cached_onnx(model, key, cache), batch), crops
        ),
    }
    backend = max(measured, key=lambda name: measured[name])
    rounded = {name: round(value, 2) for name, value in measured.items()}
    log.info("crop scorer: %s, measured faster on this CPU at batch %d: %s crops/s",
             backend, batch, rounded)
    choices[entry_key] = {"backend": backend, "crops_per_s": rounded}
    try:
        choices_file.parent.mkdir(parents=True, exist_ok=True)
        choices_file.write_text(json.dumps(choices, indent=1))
    except OSError as exc:
        log.warning("could not remember the backend choice in %s: %s", choices_file, exc)
    return backend

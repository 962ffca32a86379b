"""Crop-scorer backends and the factory that picks one for this machine.

``auto`` means, on a GPU: the fastest compiled engine built for these weights on this GPU model
and torch that passed its accuracy gate and beat eager torch (``dfstream engine build`` makes
them; their manifests are in the engines cache); else TensorRT when it imports (fp16); else
eager torch (bf16 where the GPU has it, else fp16). On a CPU-only machine: whichever of ONNX
Runtime and eager torch measures faster for this model here (the measurement is cached per model
and machine). The choice is logged with its reason.
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


def default_precision(device_type: str, bf16_supported: bool) -> str:
    """bf16 on GPUs that have it (the detector was trained in bf16), else fp16; fp32 on CPU."""
    if device_type != "cuda":
        return "fp32"
    return "bf16" if bf16_supported else "fp16"


def resolve_precision(precision: str, device: str) -> str:
    """'auto' -> ``default_precision`` for this device; 'fp8' is the compiled engine's."""
    if precision == "auto":
        on_gpu = torch.device(device).type == "cuda"
        return default_precision("cuda" if on_gpu else "cpu",
                                 on_gpu and torch.cuda.is_bf16_supported())
    if precision == "fp8":
        return precision
    return check_precision(precision)


def _weights_key(model: LNCLIPDetector) -> str:
    from engines.checkpoints.files import tensors_sha256

    return tensors_sha256(model.state_dict())


def _cache(cache_dir: Path | None) -> Path:
    """The engines cache: ``cache_dir``, else the model store's engines folder."""
    if cache_dir is not None:
        return Path(cache_dir)
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
    compile_mode: str = "reduce-overhead",
    dynamic_batch: bool = False,
) -> CropScorer:
    """A scorer for ``model``; ``model_key`` names its weights for engine caches (else hashed).

    The model must be float32 on the CPU (as loaded); the torch backends move it in place.
    A compiled engine is warmed (every batch bucket compiled) and gated before it is returned.
    """
    if backend not in (*BACKENDS, "auto"):
        raise ValueError(f"backend {backend!r} is not one of auto, {', '.join(BACKENDS)}")
    device = str(scorer_device(device))
    on_gpu = torch.device(device).type == "cuda"
    explicit_precision = precision != "auto"
    precision = resolve_precision(precision, device)
    if backend == "auto" and precision == "fp8":
        backend = "torch-compile"  # FP8 exists only there; it gates itself (or says why not)
    if backend == "auto" and on_gpu:
        from engines.backends.engine_cache import device_name

        backend, precision, compile_mode, dynamic_batch = choose_gpu_engine(
            model.arch, model_key or _weights_key(model), device_name(torch.device(device)),
            precision if explicit_precision else None, precision, max_batch, _cache(cache_dir),
            compile_mode, dynamic_batch)
    elif backend == "auto":
        backend = _choose_cpu(model, precision, max_batch, _cache(cache_dir), model_key)
    if backend == "tensorrt" and not explicit_precision:
        precision = "fp16"  # TensorRT engines are fp16 or fp32
    if precision == "fp8" and backend != "torch-compile":
        raise BackendUnavailable(f"fp8 is the compiled engine's precision: use backend "
                                 f"'torch-compile' (or 'auto'), not {backend!r}")
    if backend == "torch":
        from engines.backends.torch_backend import TorchScorer

        return TorchScorer(model, device, precision, max_batch)
    key = model_key or _weights_key(model)
    cache = _cache(cache_dir)
    if backend == "torch-compile":
        from engines.backends.build import gated_engine
        from engines.backends.engine_cache import EngineCache

        engine, _ = gated_engine(model, device, precision, max_batch, compile_mode,
                                 EngineCache(cache), key, dynamic_batch=dynamic_batch)
        return engine
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


def choose_gpu_engine(
    arch: str,
    weights: str,
    gpu: str,
    precision: str | None,
    fallback_precision: str,
    max_batch: int,
    cache: Path,
    compile_mode: str,
    dynamic_batch: bool,
) -> tuple[str, str, str, bool]:
    """(backend, precision, compile mode, dynamic batch) for ``auto`` on the GPU model ``gpu``:
    the fastest gated compiled engine in ``cache`` (of ``precision`` unless None), else TensorRT
    fp16 where it imports, else eager torch at ``fallback_precision``."""
    from engines.backends.engine_cache import EngineCache, fastest_gated
    from engines.backends.tensorrt_backend import tensorrt_available

    built = [m for m in EngineCache(cache).manifests()
             if m.key.max_batch == max_batch and precision in (None, m.key.precision)]
    best = fastest_gated(built, weights, arch, gpu)
    if best is not None:
        log.info("crop scorer: torch-compile %s (%s): the fastest gated engine built for %s, "
                 "%.0f crops/s against eager %.0f", best.key.precision, best.key.mode, gpu,
                 best.crops_per_s or 0, best.eager_crops_per_s or 0)
        return "torch-compile", best.key.precision, best.key.mode, best.key.dynamic_batch
    if tensorrt_available() and precision in (None, "fp16"):
        log.info("crop scorer: tensorrt fp16 (no gated compiled engine for %s; TensorRT "
                 "imports)", gpu)
        return "tensorrt", "fp16", compile_mode, dynamic_batch
    log.info("crop scorer: eager torch, %s (no gated compiled engine built for %s at "
             "max_batch %d: `dfstream engine build` makes one; TensorRT not available)",
             fallback_precision, gpu, max_batch)
    return "torch", fallback_precision, compile_mode, dynamic_batch


def _choose_cpu(
    model: LNCLIPDetector,
    precision: str,
    max_batch: int,
    cache: Path,
    model_key: str | None,
) -> str:
    if precision != "fp32":
        log.info("crop scorer: torch on cpu (%s; onnxruntime computes fp32 only)", precision)
        return "torch"
    return _measured_cpu_choice(model, max_batch, cache, model_key)


def _crops_per_second(scorer: CropScorer, crops: np.ndarray, min_seconds: float = 0.5) -> float:
    scorer.score(crops[:1])  # first call allocates and specialises
    runs, start = 0, time.perf_counter()
    while runs < 2 or (time.perf_counter() - start < min_seconds and runs < 10):
        scorer.score(crops)
        runs += 1
    return runs * len(crops) / (time.perf_counter() - start)


def _measured_cpu_choice(
    model: LNCLIPDetector, max_batch: int, cache: Path, model_key: str | None
) -> str:
    """Time torch and ONNX Runtime on this CPU for this model; remember the answer."""
    from engines.backends.onnx_backend import OnnxRuntimeScorer, cached_onnx
    from engines.backends.torch_backend import TorchScorer

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

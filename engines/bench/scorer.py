"""Crop-scorer benchmark: crops/s per backend and batch size, with same-run baselines.

CPU: torch fp32 and ONNX Runtime. GPU: torch fp16 eager (the baseline), torch.compile and
TensorRT when it imports, plus the GPU's measured fp16 matmul ceiling, so each result also says
what fraction of that ceiling the scorer achieves. Ratios are always against numbers measured
in the same run, because these machines are noisy.
"""

from __future__ import annotations

import gc
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.backends.base import BackendUnavailable, scorer_device
from engines.clip_detector import ArchSpec, LNCLIPDetector, arch_spec, random_detector
from engines.devices import resolve_device
from engines.interfaces import CropScorer

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def vit_flops_per_crop(spec: ArchSpec) -> float:
    """Floating-point operations (2 per multiply-add) of one crop through tower and head."""
    grid = spec.image_size // spec.patch_size
    tokens = grid * grid + 1
    width, hidden = spec.width, int(spec.width * spec.mlp_ratio)
    patch = 2 * grid * grid * 3 * spec.patch_size**2 * width
    per_block = (
        2 * tokens * width * 3 * width  # q, k, v projections
        + 2 * 2 * tokens * tokens * width  # scores and weighted sum
        + 2 * tokens * width * width  # output projection
        + 2 * 2 * tokens * width * hidden  # MLP
    )
    return float(patch + spec.layers * per_block + 2 * width * 2)


def gpu_matmul_tflops(device: str = "cuda", size: int = 8192, seconds: float = 2.0) -> float:
    """The GPU's achievable dense fp16 matmul rate (TFLOP/s): the ceiling the scorer is held to."""
    a = torch.randn(size, size, device=device, dtype=torch.float16)
    b = torch.randn(size, size, device=device, dtype=torch.float16)
    for _ in range(3):
        torch.matmul(a, b)
    torch.cuda.synchronize(device)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or runs < 10:
        torch.matmul(a, b)
        runs += 1
        if runs % 10 == 0:
            torch.cuda.synchronize(device)
    torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    return 2 * size**3 * runs / elapsed / 1e12


def crops_for(batch: int, size: int) -> np.ndarray:
    return np.random.default_rng(batch).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def sample(scorer: CropScorer, crops: np.ndarray, seconds: float) -> tuple[float, int]:
    """(crops/s, calls) of ``scorer`` on ``crops``, calling it for at least ``seconds``."""
    runs, start = 0, time.perf_counter()
    while runs < 1 or time.perf_counter() - start < seconds:
        scorer.score(crops)
        runs += 1
    return runs * len(crops) / (time.perf_counter() - start), runs


def measure_interleaved(
    scorers: dict[str, CropScorer], batches: Sequence[int], size: int, seconds: float,
    rounds: int,
) -> dict[tuple[str, int], dict[str, Any]]:
    """Every (backend, batch) point sampled in ``rounds`` interleaved rounds; the median wins.

    Interleaving puts each backend through the same bursts of load from other processes, so
    their ratios hold even where the absolute numbers wander.
    """
    inputs = {batch: crops_for(batch, size) for batch in batches}
    for scorer in scorers.values():
        for batch in batches:
            scorer.score(inputs[batch])  # warm-up: allocation, specialisation, compilation
    samples: dict[tuple[str, int], list[float]] = {}
    calls: dict[tuple[str, int], int] = {}
    for _ in range(rounds):
        for name, scorer in scorers.items():
            for batch in batches:
                rate, runs = sample(scorer, inputs[batch], seconds / rounds)
                samples.setdefault((name, batch), []).append(rate)
                calls[name, batch] = calls.get((name, batch), 0) + runs
    return {
        key: {
            "crops_per_s": round(float(np.median(rates)), 3),
            "ms_per_batch": round(1000 * key[1] / float(np.median(rates)), 3),
            "samples": [round(r, 3) for r in rates],
            "calls": calls[key],
        }
        for key, rates in samples.items()
    }


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if resolve_device("auto").type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def _add_ratios(results: list[dict[str, Any]], baseline_backend: str) -> None:
    """Each row against batch 1 of its own backend, and against the baseline backend."""
    index = {(r["arch"], r["backend"], r["batch"]): r for r in results if "crops_per_s" in r}
    for row in results:
        if "crops_per_s" not in row:
            continue
        single = index.get((row["arch"], row["backend"], 1))
        if single is not None:
            row["vs_batch_1"] = round(row["crops_per_s"] / single["crops_per_s"], 3)
        base = index.get((row["arch"], baseline_backend, row["batch"]))
        if base is not None:
            row[f"vs_{baseline_backend}"] = round(row["crops_per_s"] / base["crops_per_s"], 3)


def _scorers_cpu(model: LNCLIPDetector, batch: int, cache: Path) -> list[tuple[str, Any]]:
    from engines.backends.onnx_backend import OnnxRuntimeScorer, cached_onnx
    from engines.backends.torch_backend import TorchScorer
    from engines.checkpoints.files import tensors_sha256

    onnx = cached_onnx(model, tensors_sha256(model.state_dict()), cache)
    return [
        ("torch", lambda: TorchScorer(model, "cpu", "fp32", batch)),
        ("onnxruntime", lambda: OnnxRuntimeScorer(onnx, batch)),
    ]


def run_scorer_benchmark(
    archs: Sequence[str] = ("tiny", "ViT-B-16", "ViT-L-14"),
    batches: Sequence[int] = (1, 8, 32),
    device: str = "auto",
    backends: Sequence[str] | None = None,
    seconds: float = 2.0,
    compile_mode: str = "reduce-overhead",
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    rounds: int = 3,
) -> dict[str, Any]:
    """Measure the scorer backends; returns the JSON-able report."""
    device = str(scorer_device(device))
    on_gpu = torch.device(device).type == "cuda"
    say = progress or (lambda message: log.info(message))
    cache = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="bench-scorer-"))
    chosen = list(backends) if backends else (
        ["torch", "torch-compile", "tensorrt"] if on_gpu else ["torch", "onnxruntime"]
    )
    baseline = "torch"
    report: dict[str, Any] = {
        "benchmark": "scorer",
        "device": device,
        "precision": "fp16" if on_gpu else "fp32",
        "seconds_per_point": seconds,
        "rounds": rounds,
        "statistic": "median over interleaved rounds",
        "machine": _machine(),
        "baseline": f"{baseline} ({'fp16 eager' if on_gpu else 'fp32'}) at the same batch size; "
        "vs_batch_1: the same backend at batch 1",
        "results": [],
    }
    if on_gpu:
        say("measuring the GPU's fp16 matmul ceiling")
        report["matmul_ceiling_tflops"] = round(gpu_matmul_tflops(device), 2)
    for arch in archs:
        spec = arch_spec(arch)
        flops = vit_flops_per_crop(spec)
        say(f"{arch}: building a random-weight detector")
        model = random_detector(arch)
        makers = _make_scorers(model, chosen, device, max(batches), compile_mode, cache, on_gpu)
        scorers: dict[str, CropScorer] = {}
        for backend, make in makers:
            say(f"{arch}: preparing {backend}")
            try:
                scorers[backend] = make()
            except (BackendUnavailable, ImportError) as exc:
                report["results"].append({"arch": arch, "backend": backend, "skipped": str(exc)})
                say(f"{arch} {backend}: skipped ({exc})")
        say(f"{arch}: measuring {', '.join(scorers)} at batch sizes {list(batches)}")
        points = measure_interleaved(scorers, batches, spec.image_size, seconds, rounds)
        for (backend, batch), point in points.items():
            scorer = scorers[backend]
            row: dict[str, Any] = {
                "arch": arch, "backend": backend, "batch": batch, "device": scorer.device,
                "precision": getattr(scorer, "precision", ""), **point,
            }
            row["achieved_tflops"] = round(row["crops_per_s"] * flops / 1e12, 4)
            if "matmul_ceiling_tflops" in report:
                row["fraction_of_ceiling"] = round(
                    row["achieved_tflops"] / report["matmul_ceiling_tflops"], 4
                )
            report["results"].append(row)
        del model, makers, scorers
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()
        report.setdefault("gflops_per_crop", {})[arch] = round(flops / 1e9, 2)
    _add_ratios(report["results"], baseline)
    if hasattr(os, "getloadavg"):
        report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def _make_scorers(
    model: LNCLIPDetector,
    backends: Sequence[str],
    device: str,
    max_batch: int,
    compile_mode: str,
    cache: Path,
    on_gpu: bool,
) -> list[tuple[str, Callable[[], CropScorer]]]:
    """Factories in an order that exports ONNX before torch moves the model to the GPU."""
    from engines.backends.torch_backend import TorchScorer

    makers: list[tuple[str, Callable[[], CropScorer]]] = []
    if not on_gpu:
        available = dict(_scorers_cpu(model, max_batch, cache))
        return [(name, available[name]) for name in backends if name in available] + [
            (name, _unavailable(f"{name} is not benchmarked on the CPU"))
            for name in backends if name not in available
        ]
    if "tensorrt" in backends:
        makers.append(("tensorrt", _tensorrt_maker(model, device, max_batch, cache)))
    if "torch" in backends:
        makers.append(("torch", lambda: TorchScorer(model, device, "fp16", max_batch)))
    if "torch-compile" in backends:
        makers.append(("torch-compile", lambda: TorchScorer(
            model, device, "fp16", max_batch, compile=True, compile_mode=compile_mode
        )))
    # Eager first: it is the baseline, and compiled/engine rows are read against it.
    order = {"torch": 0, "torch-compile": 1, "tensorrt": 2}
    return sorted(makers, key=lambda item: order[item[0]])


def _unavailable(reason: str) -> Callable[[], CropScorer]:
    def fail() -> CropScorer:
        raise BackendUnavailable(reason)

    return fail


def _tensorrt_maker(
    model: LNCLIPDetector, device: str, max_batch: int, cache: Path
) -> Callable[[], CropScorer]:
    from engines.backends.tensorrt_backend import TensorRTScorer, import_tensorrt

    try:
        import_tensorrt()
    except BackendUnavailable as exc:
        return _unavailable(str(exc))
    from engines.backends.onnx_backend import cached_onnx
    from engines.checkpoints.files import tensors_sha256

    onnx = cached_onnx(model, tensors_sha256(model.state_dict()), cache)  # before .to(cuda)
    return lambda: TensorRTScorer(onnx, cache, device, max_batch)

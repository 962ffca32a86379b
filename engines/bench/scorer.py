"""Crop-scorer benchmark: crops/s per engine and batch size, with same-run baselines.

An engine is ``backend:precision``. CPU: torch fp32 (the baseline) and ONNX Runtime. GPU: eager
torch bf16 and fp16 (fp16 is the baseline the targets name), the compiled engine in bf16 and FP8,
and TensorRT fp16 when it imports; plus the device's measured matmul ceilings (bf16 and FP8 on a
GPU, fp32 on the CPU), so each row says what fraction of them it achieves. Compiled engines are
also held to the accuracy gate against the eager engine of their reference precision. Ratios are
always against numbers measured in the same run, because these machines are noisy.
"""

from __future__ import annotations

import copy
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


GPU_ENGINES = ("torch:bf16", "torch:fp16", "torch-compile:bf16", "torch-compile:fp8",
               "tensorrt:fp16")
CPU_ENGINES = ("torch:fp32", "onnxruntime:fp32")
GPU_BATCHES = (1, 8, 32, 64, 128)
CPU_BATCHES = (1, 8, 32)
TARGET_FRACTION = 0.6
TARGET_VS_EAGER = 1.5
ENGINE_BACKENDS = ("torch", "torch-compile", "onnxruntime", "tensorrt")


def parse_engine(text: str, on_gpu: bool) -> str:
    """'backend[:precision]' -> 'backend:precision' (precision: bf16 on a GPU, fp32 on the CPU,
    fp16 for TensorRT); ValueError naming what is wrong."""
    backend, _, precision = text.strip().partition(":")
    if backend not in ENGINE_BACKENDS:
        raise ValueError(f"engine {text!r}: backend must be one of {', '.join(ENGINE_BACKENDS)}")
    if not precision:
        precision = "fp16" if backend == "tensorrt" else ("bf16" if on_gpu else "fp32")
    allowed = ("fp32", "fp16", "bf16", "fp8") if backend == "torch-compile" else (
        "fp32", "fp16", "bf16")
    if precision not in allowed:
        raise ValueError(f"engine {text!r}: precision must be one of {', '.join(allowed)}")
    return f"{backend}:{precision}"


def _add_ratios(results: list[dict[str, Any]], baseline: str) -> None:
    """Each row against batch 1 of its own engine, and against the baseline engine."""
    index = {(r["arch"], r["engine"], r["batch"]): r for r in results if "crops_per_s" in r}
    for row in results:
        if "crops_per_s" not in row:
            continue
        single = index.get((row["arch"], row["engine"], 1))
        if single is not None:
            row["vs_batch_1"] = round(row["crops_per_s"] / single["crops_per_s"], 3)
        base = index.get((row["arch"], baseline, row["batch"]))
        if base is not None:
            row["vs_eager"] = round(row["crops_per_s"] / base["crops_per_s"], 3)


def _targets(report: dict[str, Any]) -> dict[str, Any]:
    """The design's two scorer targets, read off the rows (ViT-L/14 where measured)."""
    rows = [r for r in report["results"] if "crops_per_s" in r]
    arch = "ViT-L-14" if any(r["arch"] == "ViT-L-14" for r in rows) else (
        rows[0]["arch"] if rows else None)
    rows = [r for r in rows if r["arch"] == arch]
    gates = report["engines"].get(arch, {}) if arch else {}
    compiled = [r.get("fraction_of_ceiling", 0.0) for r in rows
                if r["engine"] == "torch-compile:bf16"]
    usable = [r.get("vs_eager", 0.0) for r in rows
              if gates.get(r["engine"], {}).get("gate", {"passed": True}).get("passed")]
    best_fraction = max(compiled, default=None)
    best_ratio = max(usable, default=None)
    return {
        "arch": arch,
        "compiled_bf16_fraction_of_ceiling": best_fraction,
        "compiled_bf16_target": TARGET_FRACTION,
        "compiled_bf16_met": best_fraction is not None and best_fraction >= TARGET_FRACTION,
        "best_gated_vs_eager": best_ratio,
        "best_vs_eager_target": TARGET_VS_EAGER,
        "best_vs_eager_met": best_ratio is not None and best_ratio >= TARGET_VS_EAGER,
    }


def _significant(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant figures (CPU rates are tiny, GPU ones large)."""
    return float(f"{value:.{digits}g}")


def _ceilings(device: str, size: int, seconds: float, say: Progress,
              report: dict[str, Any]) -> dict[str, float]:
    """Measure the matmul ceilings into ``report``; returns them unrounded: 'bf16' (the
    device's main one: bf16 on a GPU, fp32 on the CPU) and 'fp8' where FP8 runs."""
    from engines.backends.fp8 import fp8_unavailable
    from engines.bench.ceiling import fp8_matmul_tflops, matmul_tflops

    target = torch.device(device)
    dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
    name = str(dtype).removeprefix("torch.")
    say(f"measuring the {device} {name} matmul ceiling ({size}^3)")
    ceilings = {"bf16": matmul_tflops(device, dtype, size, seconds)}
    report.update(matmul_ceiling_tflops=_significant(ceilings["bf16"]),
                  matmul_ceiling_dtype=name, matmul_ceiling_size=size)
    reason = fp8_unavailable(target)
    if reason is None:
        say(f"measuring the {device} FP8 matmul ceiling ({size}^3)")
        ceilings["fp8"] = fp8_matmul_tflops(device, size, seconds)
        report["fp8_matmul_ceiling_tflops"] = _significant(ceilings["fp8"])
    else:
        report["fp8_matmul_ceiling_skipped"] = reason
    return ceilings


def run_scorer_benchmark(
    archs: Sequence[str] = ("tiny", "ViT-B-16", "ViT-L-14"),
    batches: Sequence[int] | None = None,
    device: str = "auto",
    engines: Sequence[str] | None = None,
    seconds: float = 2.0,
    compile_mode: str = "reduce-overhead",
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    rounds: int = 3,
    ceiling_size: int | None = None,
    ceiling_seconds: float = 2.0,
    dynamic_batch: bool = False,
) -> dict[str, Any]:
    """Measure the scorer engines; returns the JSON-able report."""
    device = str(scorer_device(device))
    on_gpu = torch.device(device).type == "cuda"
    say = progress or (lambda message: log.info(message))
    cache = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="bench-scorer-"))
    chosen = [parse_engine(e, on_gpu) for e in (engines or (
        GPU_ENGINES if on_gpu else CPU_ENGINES))]
    batch_list = sorted(set(batches or (GPU_BATCHES if on_gpu else CPU_BATCHES)))
    baseline = "torch:fp16" if on_gpu else "torch:fp32"
    report: dict[str, Any] = {
        "benchmark": "scorer",
        "device": device,
        "seconds_per_point": seconds,
        "rounds": rounds,
        "compile_mode": compile_mode,
        "compile_dynamic_batch": dynamic_batch,
        "statistic": "median over interleaved rounds",
        "machine": _machine(),
        "baseline": f"vs_eager: {baseline} (eager) at the same batch size; vs_batch_1: the "
        "same engine at batch 1",
        "engines": {},
        "results": [],
    }
    ceilings = _ceilings(device, ceiling_size or (8192 if on_gpu else 1024), ceiling_seconds,
                         say, report)
    for arch in archs:
        spec = arch_spec(arch)
        flops = vit_flops_per_crop(spec)
        say(f"{arch}: building a random-weight detector")
        model = random_detector(arch)
        scorers = _prepare(model, arch, chosen, device, batch_list, compile_mode, dynamic_batch,
                           cache, report, say)
        say(f"{arch}: measuring {', '.join(scorers)} at batch sizes {batch_list}")
        points = measure_interleaved(scorers, batch_list, spec.image_size, seconds, rounds)
        for (engine, batch), point in points.items():
            row: dict[str, Any] = {
                "arch": arch, "engine": engine, "backend": engine.split(":")[0],
                "precision": engine.split(":")[1], "batch": batch,
                "device": scorers[engine].device, **point,
            }
            tflops = row["crops_per_s"] * flops / 1e12
            row["achieved_tflops"] = _significant(tflops)
            row["fraction_of_ceiling"] = _significant(tflops / ceilings["bf16"])
            if row["precision"] == "fp8" and "fp8" in ceilings:
                row["fraction_of_fp8_ceiling"] = _significant(tflops / ceilings["fp8"])
            report["results"].append(row)
        _gate_compiled(scorers, report["engines"].setdefault(arch, {}), model, device,
                       batch_list[-1], say)
        del model, scorers
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()
        report.setdefault("gflops_per_crop", {})[arch] = round(flops / 1e9, 2)
    _add_ratios(report["results"], baseline)
    report["targets"] = _targets(report)
    if hasattr(os, "getloadavg"):
        report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def _prepare(
    model: LNCLIPDetector, arch: str, engines: list[str], device: str, batches: list[int],
    compile_mode: str, dynamic_batch: bool, cache: Path, report: dict[str, Any], say: Progress,
) -> dict[str, CropScorer]:
    """Every engine that can run here, warmed; the others become rows saying why not."""
    scorers: dict[str, CropScorer] = {}
    info = report["engines"].setdefault(arch, {})
    for engine in engines:
        say(f"{arch}: preparing {engine}")
        try:
            start = time.perf_counter()
            scorers[engine] = _make(model, engine, device, batches, compile_mode, dynamic_batch,
                                    cache)
            info[engine] = {"prepare_s": round(time.perf_counter() - start, 2)}
        except (BackendUnavailable, ImportError) as exc:
            report["results"].append({"arch": arch, "engine": engine, "skipped": str(exc)})
            say(f"{arch} {engine}: skipped ({exc})")
    return scorers


def _make(model: LNCLIPDetector, engine: str, device: str, batches: list[int],
          compile_mode: str, dynamic_batch: bool, cache: Path) -> CropScorer:
    """One engine on its own copy of the model (the torch backends move theirs in place)."""
    from engines.backends.torch_backend import TorchScorer
    from engines.checkpoints.files import tensors_sha256

    backend, precision = engine.split(":")
    max_batch = batches[-1]
    if backend == "torch":
        return TorchScorer(copy.deepcopy(model), device, precision, max_batch)
    if backend == "torch-compile":
        from engines.backends.compiled import CompiledScorer
        from engines.backends.engine_cache import EngineCache

        scorer = CompiledScorer(copy.deepcopy(model), device, precision, max_batch,
                                compile_mode, cache=EngineCache(cache),
                                weights=tensors_sha256(model.state_dict()), buckets=batches,
                                dynamic_batch=dynamic_batch)
        scorer.warmup()
        return scorer
    on_gpu = torch.device(device).type == "cuda"
    from engines.backends.onnx_backend import OnnxRuntimeScorer, cached_onnx

    if backend == "onnxruntime":
        if on_gpu:
            raise BackendUnavailable("onnxruntime is benchmarked on the CPU only")
        return OnnxRuntimeScorer(cached_onnx(model, tensors_sha256(model.state_dict()), cache),
                                 max_batch)
    from engines.backends.tensorrt_backend import TensorRTScorer, import_tensorrt

    import_tensorrt()
    if not on_gpu:
        raise BackendUnavailable("the tensorrt backend needs a CUDA device")
    onnx = cached_onnx(model, tensors_sha256(model.state_dict()), cache)
    return TensorRTScorer(onnx, cache, device, max_batch, fp16=precision == "fp16")


def _gate_compiled(scorers: dict[str, CropScorer], info: dict[str, Any],
                   model: LNCLIPDetector, device: str, max_batch: int, say: Progress) -> None:
    """The accuracy gate of each compiled engine against eager torch at its reference
    precision (the bench's own eager engine when it has one), recorded beside its timings."""
    from engines.backends.build import accuracy_gate, gate_crops, reference_precision
    from engines.backends.compiled import CompiledScorer
    from engines.backends.torch_backend import TorchScorer

    compiled = {name: s for name, s in scorers.items() if isinstance(s, CompiledScorer)}
    if not compiled:
        return
    crops = gate_crops()
    for name, scorer in compiled.items():
        ref_precision = reference_precision(scorer.precision, torch.device(device))
        reference = scorers.get(f"torch:{ref_precision}") or TorchScorer(
            copy.deepcopy(model), device, ref_precision, max_batch)
        gate = accuracy_gate(reference.score(crops), scorer.score(crops),
                             f"eager {ref_precision}")
        info[name].update(gate=gate.as_dict(), attention=scorer.attention_kernels(),
                          fp8_layers=scorer.fp8_layers, buckets=scorer.buckets)
        say(f"{name}: accuracy gate {'passed' if gate.passed else 'FAILED'} "
            f"(p99 {gate.p99_abs_diff:.4g}, Spearman {gate.spearman:.5f})")

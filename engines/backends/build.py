"""Building a compiled engine: compile, hold it to the eager engine on real faces, record it.

A compiled or FP8 engine is a different program from the model it came from; it may only score
after it has been shown to give the same answers. The gate scores a fixed set of real face crops
with the engine and with the eager reference (bf16 on a GPU, fp32 on the CPU; the engine's own
precision when that is fp16 or fp32), compares p_fake crop by crop, and refuses the engine when
the 99th percentile of |difference| exceeds 0.01 or the crops' order by score changes (Spearman
below 0.999). The verdict, with its numbers, goes into the engine's manifest, so a start that
finds a gated engine in the cache does not run the gate again.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch
from scipy.stats import spearmanr

from engines.backends.base import BackendUnavailable, scorer_device
from engines.backends.compiled import CompiledScorer
from engines.backends.engine_cache import EngineCache, EngineManifest, engine_key
from engines.backends.torch_backend import TorchScorer
from engines.clip_detector import LNCLIPDetector
from engines.interfaces import CROP_SIZE, CropScorer

log = logging.getLogger(__name__)

MAX_P99_ABS_DIFF = 0.01
MIN_SPEARMAN = 0.999
ASTRONAUT_FACE_BOX = (181, 62, 268, 172)
"""The astronaut's face in skimage's 512x512 photograph."""


class EngineRefused(BackendUnavailable):
    """The engine failed its accuracy gate; the message names the numbers."""


@dataclass(frozen=True)
class GateResult:
    crops: int
    p99_abs_diff: float
    max_abs_diff: float
    spearman: float
    reference: str
    passed: bool
    reason: str | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def p_fake(logits: np.ndarray) -> np.ndarray:
    """Softmax probability of the fake class, in float64."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e[:, 1] / e.sum(axis=1))


def accuracy_gate(reference: np.ndarray, candidate: np.ndarray,
                  reference_name: str = "eager") -> GateResult:
    """Compare two engines' logits on the same crops against the gate's limits."""
    if reference.shape != candidate.shape or reference.ndim != 2 or len(reference) < 3:
        raise ValueError(f"need matching (N>=3, 2) logits, got {reference.shape} and "
                         f"{candidate.shape}")
    expected, got = p_fake(reference), p_fake(candidate)
    diff = np.abs(got - expected)
    p99 = float(np.percentile(diff, 99))
    rho = float(spearmanr(expected, got).statistic)
    if not np.isfinite(rho):  # a constant score: order is undefined, so not preserved
        rho = 0.0
    failures = []
    if p99 > MAX_P99_ABS_DIFF:
        failures.append(f"p99 |p_fake diff| {p99:.4g} > {MAX_P99_ABS_DIFF}")
    if rho < MIN_SPEARMAN:
        failures.append(f"Spearman {rho:.5f} < {MIN_SPEARMAN}")
    reason = (f"against {reference_name} on {len(diff)} face crops: " + "; ".join(failures)
              if failures else None)
    return GateResult(crops=len(diff), p99_abs_diff=round(p99, 6),
                      max_abs_diff=round(float(diff.max()), 6), spearman=round(rho, 6),
                      reference=reference_name, passed=not failures, reason=reason)


def gate_crops() -> np.ndarray:
    """The fixed set of real face crops the gate scores: 100 LFW faces (skimage's subset,
    greyscale, upscaled) and the astronaut's face at 28 shifts and scales, (128, 224, 224, 3)."""
    from skimage import data

    faces = []
    for face in data.lfw_subset()[:100]:  # the first 100 are faces, the rest are not
        grey = cv2.resize((face * 255).astype(np.uint8), (CROP_SIZE, CROP_SIZE),
                          interpolation=cv2.INTER_CUBIC)
        faces.append(np.repeat(grey[:, :, None], 3, axis=2))
    image = data.astronaut()
    x1, y1, x2, y2 = ASTRONAUT_FACE_BOX
    cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1)
    for scale in (1.1, 1.3, 1.6, 2.0):
        for dx, dy in ((0, 0), (-8, 0), (8, 0), (0, -8), (0, 8), (-6, 6), (6, -6)):
            half = side * scale / 2
            box = [round(v) for v in (cx + dx - half, cy + dy - half,
                                           cx + dx + half, cy + dy + half)]
            crop = image[max(box[1], 0):box[3], max(box[0], 0):box[2]]
            faces.append(cv2.resize(crop, (CROP_SIZE, CROP_SIZE),
                                    interpolation=cv2.INTER_CUBIC))
    return np.ascontiguousarray(np.stack(faces))


def reference_precision(precision: str, device: torch.device) -> str:
    """What the gate compares an engine of ``precision`` against."""
    if device.type != "cuda":
        return "fp32"
    return "bf16" if precision in ("bf16", "fp8") else precision


def crops_per_second(scorer: CropScorer, crops: np.ndarray, seconds: float = 1.0) -> float:
    """A short throughput figure for the manifest (the benchmarks measure properly)."""
    scorer.score(crops)
    runs, start = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < seconds:
        scorer.score(crops)
        runs += 1
    return runs * len(crops) / (time.perf_counter() - start)


def gated_engine(
    model: LNCLIPDetector,
    device: str,
    precision: str,
    max_batch: int,
    mode: str,
    cache: EngineCache,
    weights: str,
    rerun_gate: bool = False,
    measure: bool = False,
    buckets: Sequence[int] | None = None,
    dynamic_batch: bool = False,
) -> tuple[CompiledScorer, EngineManifest]:
    """A warmed compiled engine that has passed its gate (run now unless the cache holds a
    verdict for this key, or ``rerun_gate``); EngineRefused when it fails or failed.

    ``model`` is left as loaded (float32, CPU): the engine and the reference get copies.
    ``measure`` also records crops/s of engine and reference at max_batch in the manifest;
    ``buckets`` replaces the sizes the cached engine was built with (else the powers of two).
    """
    key = engine_key(weights, model.arch, precision, scorer_device(device), mode, max_batch,
                     dynamic_batch)
    recorded = cache.read(key)
    if recorded is not None and recorded.gate is not None and not recorded.passed \
            and not rerun_gate and not measure:
        raise EngineRefused(f"{key.id} failed its accuracy gate earlier: "
                            f"{recorded.gate.get('reason')} (rebuild with `dfstream engine "
                            "build` to try again)")
    if buckets is None and recorded is not None and recorded.buckets:
        buckets = recorded.buckets  # the sizes its cache holds compiled
    engine = CompiledScorer(copy.deepcopy(model), device, precision, max_batch, mode,
                            cache=cache, weights=weights, buckets=buckets,
                            dynamic_batch=dynamic_batch)
    assert engine.key == key
    engine.warmup()
    manifest = cache.read(key) or EngineManifest(key=key)
    if manifest.gate is None or rerun_gate or measure:
        crops = gate_crops()
        ref_precision = reference_precision(precision, torch.device(engine.device))
        reference = TorchScorer(copy.deepcopy(model), engine.device, ref_precision, max_batch)
        result = accuracy_gate(reference.score(crops), engine.score(crops),
                               f"eager {ref_precision}")
        manifest.gate = result.as_dict()
        manifest.attention = engine.attention_kernels()
        if measure:
            batch = crops[:max_batch] if len(crops) >= max_batch else np.resize(
                crops, (max_batch, *crops.shape[1:]))
            manifest.crops_per_s = round(crops_per_second(engine, batch), 2)
            manifest.eager_crops_per_s = round(crops_per_second(reference, batch), 2)
        del reference
        cache.write(manifest)
        log.info("%s: accuracy gate %s (p99 %.4g, Spearman %.5f)", key.id,
                 "passed" if result.passed else "FAILED", result.p99_abs_diff, result.spearman)
    if not manifest.passed:
        raise EngineRefused(f"{key.id} refused by its accuracy gate: "
                            f"{(manifest.gate or {}).get('reason')}")
    return engine, manifest

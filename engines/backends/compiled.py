"""Crop scorer compiled by torch.compile (inductor), one static graph per padded batch bucket.

A compiled graph is specialised to its input shape, and with ``reduce-overhead`` (or
``max-autotune``) each shape is also captured as a CUDA graph, which removes the per-kernel
launch cost that dominates small batches. So the engine runs a few fixed batch sizes (1, 2, 4,
..., max_batch), pads every call up to the next of them and drops the padding rows from the
output, and ``warmup`` compiles and captures every bucket before the first live batch. After
warm-up a recompilation is an error, not a silent multi-second stall on the live path.

Attention goes through SDPA (engines/backends/sdpa.py); ``fp8`` quantises the transformer's
linear layers with torchao (engines/backends/fp8.py) on top of bf16. With an EngineCache the
compiled artefacts persist per (weights, arch, precision, GPU, torch) key, so the next start
loads them; cold and warm start times go into that engine's manifest.

``dynamic_batch`` compiles one graph whose batch dimension is symbolic (dynamo specialises
batch 1 apart) instead of one per bucket, so the compile cost no longer grows with the number
of buckets; CUDA graphs are still captured per bucket.

``compile=False`` runs the same bucketing eagerly; it exists to test the padding on machines
where compiling is too slow, and its ``name`` says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

from engines.backends.base import TORCH_DTYPES, BackendUnavailable, batches, check_crops
from engines.backends.base import scorer_device as resolve_scorer_device
from engines.backends.engine_cache import EngineCache, EngineKey, EngineManifest, engine_key
from engines.backends.fp8 import fp8_unavailable, quantize_fp8
from engines.backends.sdpa import attention_kernels, use_sdpa_attention
from engines.backends.torch_backend import prepare_model
from engines.clip_detector import NUM_CLASSES, LNCLIPDetector
from engines.interfaces import CROP_SIZE

log = logging.getLogger(__name__)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILED_PRECISIONS = ("fp32", "fp16", "bf16", "fp8")
WARMUP_CALLS = 3
"""Calls per bucket at warm-up: CUDA-graph trees run a shape eagerly once, then record it, then
replay; the third call is the first that runs as it will live."""


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, ... below ``max_batch``, then ``max_batch``: the sizes a compiled scorer runs."""
    if max_batch < 1:
        raise ValueError("max_batch must be at least 1")
    sizes = []
    size = 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch]


def bucket_for(count: int, buckets: list[int]) -> int:
    """The smallest bucket that holds ``count`` crops."""
    for size in buckets:
        if size >= count:
            return size
    raise ValueError(f"{count} crops exceed the largest bucket {buckets[-1]}")


def padded_input(chunk: np.ndarray, buckets: list[int], target: torch.device) -> torch.Tensor:
    """The crops on ``target`` with zero rows appended up to their bucket.

    Always a fresh tensor made under inference mode, whether padded or not: an input that
    differs in autograd dispatch keys would fail the compiled graph's guards and recompile.
    """
    count = chunk.shape[0]
    x = torch.empty((bucket_for(count, buckets), *chunk.shape[1:]), dtype=torch.uint8,
                    device=target)
    source = torch.from_numpy(chunk)
    x[:count].copy_(source.pin_memory() if target.type == "cuda" else source, non_blocking=True)
    x[count:].zero_()
    return x


def base_dtype(precision: str) -> torch.dtype:
    """The dtype of everything FP8 does not touch (bf16 for fp8)."""
    if precision not in COMPILED_PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(COMPILED_PRECISIONS)}")
    return torch.bfloat16 if precision == "fp8" else TORCH_DTYPES[precision]


def _allow_recompiles(count: int) -> None:
    """Each bucket is one more specialisation of the same forward; dynamo gives up (and runs
    eagerly) past ``recompile_limit`` (8), which a max_batch of 256 already reaches."""
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, count + 1)


class CompiledScorer:
    """The detector compiled for one device, precision and set of batch buckets."""

    def __init__(
        self,
        model: LNCLIPDetector,
        device: str = "cuda",
        precision: str = "bf16",
        max_batch: int = 32,
        mode: str = "reduce-overhead",
        compile: bool = True,
        cache: EngineCache | None = None,
        weights: str | None = None,
        buckets: Sequence[int] | None = None,
        dynamic_batch: bool = False,
    ) -> None:
        """``weights`` (the bundle's sha256) names the engine in ``cache``; both or neither.
        ``buckets`` replaces the powers of two (each bucket is one more compilation)."""
        dtype = base_dtype(precision)
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {mode!r} is not one of {', '.join(COMPILE_MODES)}")
        if (cache is None) != (weights is None):
            raise ValueError("an engine cache needs the weights' sha256 to key its engines")
        target = resolve_scorer_device(device)
        if precision == "fp8" and (reason := fp8_unavailable(target)):
            raise BackendUnavailable(reason)
        self.buckets = sorted(set(buckets)) if buckets else batch_buckets(max_batch)
        if self.buckets[0] < 1 or self.buckets[-1] != max_batch:
            raise ValueError(f"buckets {self.buckets} must be >= 1 and end at max_batch "
                             f"{max_batch}")
        self.model = prepare_model(model, target, dtype)
        use_sdpa_attention(self.model)
        self.fp8_layers = len(quantize_fp8(self.model)) if precision == "fp8" else 0
        self.name = "torch-compile" if compile else "torch-buckets"
        self.device = str(target)
        self.precision = precision
        self.max_batch = max_batch
        self.mode = mode
        self.compiled = compile
        self.dynamic_batch = dynamic_batch
        self.cache = cache
        self.key: EngineKey | None = (
            engine_key(weights, model.arch, precision, target, mode, max_batch, dynamic_batch)
            if weights is not None else None
        )
        self.warm = False
        self._target = target
        if compile:
            _allow_recompiles(len(self.buckets))
            # dynamic=None lets mark_dynamic (in _run) make the batch dimension symbolic.
            self._forward = torch.compile(self.model, mode=mode, fullgraph=True,
                                          dynamic=None if dynamic_batch else False)
        else:
            self._forward = self.model

    def _run(self, chunk: np.ndarray) -> torch.Tensor:
        x = padded_input(chunk, self.buckets, self._target)
        if self.dynamic_batch and x.shape[0] > 1:
            torch._dynamo.mark_dynamic(x, 0)
        return self._forward(x)[: chunk.shape[0]]

    def score(self, crops: np.ndarray) -> np.ndarray:
        """Logits; refuses to run before ``warmup`` so that no live call compiles."""
        if not self.warm:
            raise RuntimeError(f"{self.name}: call warmup() before scoring")
        crops = check_crops(crops)
        out = np.empty((crops.shape[0], NUM_CLASSES), dtype=np.float32)
        with torch.inference_mode(), self._no_recompiles():
            for part in batches(crops.shape[0], self.max_batch):
                out[part] = self._run(crops[part]).float().cpu().numpy()
        return out

    def warmup(self) -> float:
        """Compile and capture every bucket; returns the seconds it took (recorded when cached)."""
        warm_cache = self.cache is not None and self.key is not None and self.cache.is_warm(
            self.key)
        start = time.perf_counter()
        if self.cache is not None and self.key is not None:
            with self.cache.compiling(self.key):
                self._warm_buckets()
        else:
            self._warm_buckets()
        seconds = time.perf_counter() - start
        self.warm = True
        log.info("%s %s on %s: batch buckets %s ready in %.1f s (%s start)", self.name,
                 self.precision, self.device, self.buckets, seconds,
                 "warm" if warm_cache else "cold")
        if self.cache is not None and self.key is not None:
            manifest = self.cache.read(self.key) or EngineManifest(key=self.key)
            manifest.buckets = list(self.buckets)
            manifest.fp8_layers = self.fp8_layers
            if warm_cache:
                manifest.warm_start_s = round(seconds, 2)
            else:
                manifest.cold_start_s = round(seconds, 2)
            self.cache.write(manifest)
        return seconds

    def _warm_buckets(self) -> None:
        with torch.inference_mode():
            for size in self.buckets:
                for _ in range(WARMUP_CALLS if self.compiled else 1):
                    self._run(_zeros(size))
        if self._target.type == "cuda":
            torch.cuda.synchronize(self._target)

    def attention_kernels(self) -> list[str]:
        """The fused SDPA kernels the engine runs (profiled on one batch-1 call)."""
        if not self.warm:
            raise RuntimeError(f"{self.name}: call warmup() first")
        with self._no_recompiles():
            return attention_kernels(self._run, _zeros(1))

    def _no_recompiles(self) -> AbstractContextManager[None]:
        """After warm-up a compile would stall the live path for seconds: make it an error."""
        return torch.compiler.set_stance("fail_on_recompile") if self.compiled else nullcontext()


def _zeros(count: int) -> np.ndarray:
    return np.zeros((count, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)

"""Heatmap cost: ms per heatmap of one crop (engines/heatmap.py) on the CPU, where the service
computes them, against the plain forward pass of the same model in the same run (interleaved
rounds, median).

The crop is random pixels: the cost does not depend on what it shows.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from engines.clip_detector import random_detector
from engines.heatmap import compute_heatmap, grad_cam


def _ms_per_call(work: Callable[[], object], seconds: float) -> float:
    runs, start = 0, time.perf_counter()
    while runs < 1 or time.perf_counter() - start < seconds:
        work()
        runs += 1
    return 1000 * (time.perf_counter() - start) / runs


def run_heatmap_benchmark(
    *, arch: str, seconds: float, rounds: int, threads: int = 0
) -> dict[str, Any]:
    """ms per call of: the forward pass (batch 1, inference mode, as the torch scorer runs it),
    Grad-CAM alone (forward + backward), and the whole heatmap (with the overlay JPEG).
    ``threads``: torch's CPU threads for this process (0: torch's default)."""
    if threads:
        torch.set_num_threads(threads)
    model = random_detector(arch)
    size = model.spec.image_size
    crop = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    batch = torch.from_numpy(crop)[None]

    def forward() -> object:
        with torch.inference_mode():
            return model(batch)

    cases: dict[str, Callable[[], object]] = {
        "forward": forward,
        "grad_cam": lambda: grad_cam(model, crop),
        "heatmap": lambda: compute_heatmap(model, crop),
    }
    for work in cases.values():
        work()  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, work in cases.items():
            samples[name].append(_ms_per_call(work, seconds / rounds))
    ms = {name: round(float(np.median(values)), 3) for name, values in samples.items()}
    return {
        "benchmark": "heatmap",
        "what": "Grad-CAM heatmap of one 224x224 crop's fake logit on the CPU (forward, "
                "backward, upsampling, colour-map overlay, JPEG); forward = the plain scoring "
                "pass of the same model, batch 1",
        "arch": arch,
        "device": "cpu",
        "rounds": rounds,
        "host": {"machine": platform.machine(), "torch": torch.__version__,
                 "threads": torch.get_num_threads(),
                 "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        "ms_per_call": ms,
        "samples_ms": {name: [round(v, 3) for v in values] for name, values in samples.items()},
        "ms_per_heatmap": ms["heatmap"],
        "ratios": {
            "heatmap / forward": round(ms["heatmap"] / ms["forward"], 3),
            "grad_cam / forward": round(ms["grad_cam"] / ms["forward"], 3),
        },
    }

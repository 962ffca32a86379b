"""Training throughput: optimiser steps/s and crops/s of LN-tuning, against the forward-only
rate of the same model, batch and device in the same run (interleaved rounds, median).

Crops are random pixels (SYNTHETIC): throughput does not depend on what the crops show.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from engines.clip_detector import random_detector
from engines.devices import resolve_device
from engines.training.augment import training_augmentation
from engines.training.losses import Objective
from engines.training.trainer import TrainConfig, predict_raw, train_step


def _timed(work: Callable[[], None], seconds: float, device: str) -> tuple[float, int]:
    runs, start = 0, time.perf_counter()
    while runs < 1 or time.perf_counter() - start < seconds:
        work()
        runs += 1
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return runs / (time.perf_counter() - start), runs


def run_training_benchmark(
    *, arch: str, batch: int, device: str, seconds: float, rounds: int,
) -> dict[str, Any]:
    """Steps/s and crops/s of training steps (with and without the image augmentations) and
    of forward-only scoring; ratios against the forward pass."""
    device = str(resolve_device(device))
    config = TrainConfig(arch=arch, batch_size=batch, device=device)
    model = random_detector(arch).to(device)
    optimiser = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=0.0
    )
    objective = Objective()
    transform = training_augmentation()
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
    labels = torch.from_numpy(np.arange(batch) % 2)
    generator = torch.Generator().manual_seed(0)
    def forward() -> None:
        predict_raw(model, crops, device)

    def step(augment: bool) -> Callable[[], None]:
        def run() -> None:
            model.train()
            train_step(model, optimiser, objective, torch.from_numpy(crops), labels, config,
                       transform if augment else None, generator)
        return run

    cases: dict[str, Callable[[], None]] = {
        "forward": forward, "train_step": step(False), "train_step_augmented": step(True),
    }
    for work in cases.values():
        work()  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, work in cases.items():
            rate, _ = _timed(work, seconds / rounds, device)
            samples[name].append(rate)
    results: dict[str, dict[str, Any]] = {}
    for name, rates in samples.items():
        calls_per_s = float(np.median(rates))
        results[name] = {
            "calls_per_s": round(calls_per_s, 3),
            "crops_per_s": round(calls_per_s * batch, 1),
            "samples": [round(r, 3) for r in rates],
        }
    forward = results["forward"]["crops_per_s"]
    return {
        "benchmark": "train",
        "what": "LN-tuning optimiser steps (CE + uniformity + alignment, slerp) on random "
                "SYNTHETIC crops; forward = eval-mode scoring of the same batch",
        "arch": arch,
        "batch": batch,
        "device": device,
        "precision": "bf16 autocast" if device.startswith("cuda") else "fp32",
        "rounds": rounds,
        "host": {"machine": platform.machine(), "torch": torch.__version__,
                 "threads": torch.get_num_threads(),
                 "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda")
                 else None},
        "results": results,
        "steps_per_s": results["train_step"]["calls_per_s"],
        "train_crops_per_s": results["train_step"]["crops_per_s"],
        "ratios": {
            "train_step / forward": round(results["train_step"]["crops_per_s"] / forward, 3),
            "train_step_augmented / forward": round(
                results["train_step_augmented"]["crops_per_s"] / forward, 3),
        },
    }

"""Face detector throughput: frames/s per frame size, batch size and backend, with ratios
against torch batch 1 of the same size and device measured in the same run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def run_bench(
    *,
    arch: str,
    sizes: list[tuple[int, int]],
    cpu_batches: list[int],
    gpu_batches: list[int],
    devices: list[str],
    seconds: float,
    rounds: int,
    weights: Path | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Frames/s of the detector per case (median of ``rounds`` interleaved rounds, so that
    machine noise falls on every case alike); ratios against torch batch 1 of the same size and
    device."""
    import os
    import platform

    import numpy as np
    import onnxruntime
    import torch

    from engines.retinaface.batching import BatchedDetector
    from engines.retinaface.decode import DetectionOptions
    from engines.retinaface.onnx_detector import OnnxRetinaFaceDetector, export_onnx
    from engines.retinaface.torch_detector import RetinaFaceDetector
    from engines.retinaface.weights import load_network
    from stream.samples import compose_frame, face_placement

    if threads is not None:
        torch.set_num_threads(threads)
    net, info = load_network(arch, weights)
    options = DetectionOptions()
    images = {f"{w}x{h}": compose_frame(w, h, face_placement(0, 1, w, h)) for w, h in sizes}

    cases: list[dict[str, Any]] = []
    detectors: list[BatchedDetector] = []
    onnx_model = export_onnx(net)
    for device in devices:
        if device == "cpu":
            backends: list[tuple[str, str, BatchedDetector]] = [
                ("torch", "fp32", RetinaFaceDetector(net, device="cpu", options=options)),
                ("onnxruntime", "fp32", OnnxRetinaFaceDetector(onnx_model, arch=arch,
                                                               options=options, threads=threads)),
            ]
            batches = cpu_batches
        else:
            backends = [
                ("torch", "fp32", RetinaFaceDetector(net, device=device, options=options)),
                ("torch", "fp16", RetinaFaceDetector(net, device=device, options=options,
                                                     half=True)),
            ]
            batches = gpu_batches
        for backend, precision, detector in backends:
            for size in sizes:
                for batch in batches:
                    detector.max_batch = max(detector.max_batch, batch)
                    cases.append({"device": device, "backend": backend, "precision": precision,
                                  "size": f"{size[0]}x{size[1]}", "batch": batch,
                                  "frames": 0, "seconds": 0.0, "round_fps": []})
                    detectors.append(detector)

    for case, detector in zip(cases, detectors, strict=True):
        for _ in range(2):  # warm-up: allocations, kernels, priors
            detector.detect([images[case["size"]]] * case["batch"])
    slice_s = seconds / rounds
    for _ in range(rounds):
        for case, detector in zip(cases, detectors, strict=True):
            batch_images = [images[case["size"]]] * case["batch"]
            start = time.perf_counter()
            done = 0
            while True:
                detector.detect(batch_images)
                done += case["batch"]
                elapsed = time.perf_counter() - start
                if elapsed >= slice_s:
                    break
            case["frames"] += done
            case["seconds"] += elapsed
            case["round_fps"].append(round(done / elapsed, 2))
    for case in cases:
        # The median round is the figure of merit: a busy machine slows some rounds a lot.
        case["frames_per_s"] = round(float(np.median(case["round_fps"])), 2)
        case["mean_frames_per_s"] = round(case["frames"] / case["seconds"], 2)
        case["ms_per_call"] = round(1000 * case["batch"] / case["frames_per_s"], 2)
        case["seconds"] = round(case["seconds"], 2)

    def fps(device: str, backend: str, precision: str, size: str, batch: int) -> float | None:
        for case in cases:
            if (case["device"], case["backend"], case["precision"], case["size"],
                    case["batch"]) == (device, backend, precision, size, batch):
                return float(case["frames_per_s"])
        return None

    ratios: dict[str, float] = {}
    for case in cases:
        base = fps(case["device"], "torch", "fp32", case["size"], 1)
        if base and not (case["backend"] == "torch" and case["precision"] == "fp32"
                         and case["batch"] == 1):
            key = (f"{case['device']} {case['size']} {case['backend']} {case['precision']} "
                   f"batch {case['batch']} / torch fp32 batch 1")
            ratios[key] = round(case["frames_per_s"] / base, 2)
    host: dict[str, Any] = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime_threads": threads or "default (one per core)",
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }
    if any(d.startswith("cuda") for d in devices):
        host["gpu"] = torch.cuda.get_device_name(torch.device(devices[-1]))
    return {
        "benchmark": "faces",
        "what": "RetinaFace detect() on RGB frames of the given size (pack, copy, network, "
                "decode, NMS, per-image split); frames_per_s is the median round",
        "arch": arch,
        "weights_sha256": info.sha256,
        "rounds": rounds,
        "host": host,
        "cases": cases,
        "ratios": ratios,
    }

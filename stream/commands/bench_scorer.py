"""``dfstream bench scorer``: crops/s of every crop-scorer engine against the device's own
matmul ceilings and eager torch, measured in one run (engines/bench/scorer.py measures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stream.cli import bench_app, console, fail
from stream.commands.bench import JsonOption


def _ints(text: str | None, name: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise fail(f"{name} must be integers, got {text!r}", 2) from None
    if not values or min(values) < 1 or max(values) > 1024:
        raise fail(f"{name}: give sizes in 1..1024, got {text!r}", 2)
    return values


@bench_app.command("scorer")
def bench_scorer(
    archs: Annotated[str, typer.Option(help="Comma-separated architectures.")] = (
        "tiny,ViT-B-16,ViT-L-14"
    ),
    batches: Annotated[str | None, typer.Option(
        help="Comma-separated batch sizes (default 1,8,32,64,128 on a GPU, 1,8,32 on the CPU).",
        show_default=False)] = None,
    backends: Annotated[str | None, typer.Option(help=(
        "Comma-separated engines, backend[:precision]; default torch:bf16,torch:fp16,"
        "torch-compile:bf16,torch-compile:fp8,tensorrt:fp16 on a GPU, torch:fp32,"
        "onnxruntime:fp32 on the CPU."
    ), show_default=False)] = None,
    device: Annotated[str, typer.Option(help="'auto', 'cpu', 'cuda' or 'cuda:N'.")] = "auto",
    seconds: Annotated[float, typer.Option(min=0.0, help="Measuring time per point.")] = 2.0,
    rounds: Annotated[int, typer.Option(
        min=1, help="Interleaved rounds per point; the median is reported."
    )] = 3,
    compile_mode: Annotated[str, typer.Option(help="torch.compile mode.")] = "reduce-overhead",
    dynamic_batch: Annotated[bool, typer.Option(
        help="Compile one graph with a symbolic batch size instead of one per batch size "
        "(CUDA graphs stay per size).")] = False,
    ceiling_size: Annotated[int | None, typer.Option(
        min=64, max=16384, help="Side of the ceiling matmul (default 8192 on a GPU, 1024 on "
        "the CPU).", show_default=False)] = None,
    ceiling_seconds: Annotated[float, typer.Option(min=0.1, help="Seconds per ceiling.")] = 2.0,
    cache_dir: Annotated[Path | None, typer.Option(
        help="Where compiled engines, ONNX exports and TensorRT engines are kept between runs "
        "(default: temp)."
    )] = None,
    as_json: JsonOption = False,
) -> None:
    """Crops/s of the crop scorer per engine and batch size, as fractions of the device's
    measured matmul ceilings and against eager torch in the same run, with the accuracy gate
    of each compiled engine."""
    from engines.backends.compiled import COMPILE_MODES
    from engines.bench.scorer import parse_engine, run_scorer_benchmark
    from engines.clip_detector import ARCHS
    from engines.devices import DeviceUnavailable, resolve_device

    arch_list = [a.strip() for a in archs.split(",") if a.strip()]
    bad = [a for a in arch_list if a not in ARCHS]
    if bad:
        raise fail(f"unknown architecture(s) {bad}; known: {', '.join(ARCHS)}", 2)
    if compile_mode not in COMPILE_MODES:
        raise fail(f"--compile-mode {compile_mode!r}: use one of {', '.join(COMPILE_MODES)}", 2)
    try:
        on_gpu = resolve_device(device).type == "cuda"
        engines = ([parse_engine(e, on_gpu) for e in backends.split(",") if e.strip()]
                   if backends else None)
    except (ValueError, DeviceUnavailable) as exc:
        raise fail(str(exc), 2) from None
    report = run_scorer_benchmark(
        archs=arch_list, batches=_ints(batches, "--batches"), device=device, engines=engines,
        seconds=seconds, rounds=rounds, compile_mode=compile_mode, cache_dir=cache_dir,
        ceiling_size=ceiling_size, ceiling_seconds=ceiling_seconds, dynamic_batch=dynamic_batch,
        progress=lambda message: console.print(f"[dim]{message}[/dim]"),
    )
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    from rich.table import Table

    table = Table(title=f"crop scorer on {report['device']} (ceiling "
                  f"{report['matmul_ceiling_tflops']} TFLOP/s {report['matmul_ceiling_dtype']})")
    for column in ("arch", "engine", "batch", "crops/s", "TFLOP/s", "of ceiling", "vs eager",
                   "vs batch 1"):
        table.add_column(column)
    for row in report["results"]:
        if "skipped" in row:
            table.add_row(row["arch"], row["engine"], "-", "skipped", "", "", "", "")
            continue
        table.add_row(row["arch"], row["engine"], str(row["batch"]), f"{row['crops_per_s']:.2f}",
                      str(row["achieved_tflops"]), f"{100 * row['fraction_of_ceiling']:.1f}%",
                      str(row.get("vs_eager", "")), str(row.get("vs_batch_1", "")))
    console.print(table)
    console.print_json(data=report["targets"])

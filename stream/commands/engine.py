"""``dfstream engine build|list|bench``: compiled crop-scorer engines in the engines cache.

``build`` compiles the configured detector for this device (every batch bucket), runs the
accuracy gate against eager torch and records engine, gate and crops/s in a manifest, which is
what ``detector.backend: auto`` chooses from. ``list`` shows the manifests; ``bench`` starts
every engine built for this machine again (a warm start, from the cache) and times it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from stream.cli import ConfigOption, console, engine_app, fail, settings_or_exit

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
DeviceOption = Annotated[str, typer.Option(help="'cuda', 'cuda:N' or 'cpu'.")]
ArchOption = Annotated[str | None, typer.Option(
    help="Detector architecture (default detector.arch).", show_default=False)]
BundleOption = Annotated[str | None, typer.Option(
    help="Detector bundle (default: as configured).", show_default=False)]
UntrainedOption = Annotated[bool, typer.Option(
    help="Use random weights when no bundle is installed (timings only).")]
CacheOption = Annotated[Path | None, typer.Option(
    help="Engines cache (default: the model store's engines folder, as the service uses).",
    show_default=False)]


def _cache_root(cache_dir: Path | None) -> Path:
    from engines import store

    return cache_dir if cache_dir is not None else store.writable_dir(store.ENGINES_SUBDIR)


def _model(config: Path | None, arch: str | None, bundle: str | None,
           allow_untrained: bool) -> tuple[Any, str]:
    """The configured detector as loaded (float32, CPU) and its weights' sha256."""
    from engines.checkpoints.files import tensors_sha256
    from engines.deepfake_detector import DetectorUnavailable, load_model
    from engines.store import StoreError

    settings = settings_or_exit(config)
    update: dict[str, Any] = {"allow_untrained": allow_untrained or
                              settings.detector.allow_untrained}
    if arch is not None:
        update["arch"] = arch
    if bundle is not None:
        update["bundle"] = bundle
    try:
        model, info = load_model(settings.detector.model_copy(update=update))
    except (DetectorUnavailable, StoreError, ValueError) as exc:
        raise fail(str(exc), 2) from None
    if info.warning:
        console.print(f"[yellow]{info.warning}[/yellow]")
    return model, info.weights_id or tensors_sha256(model.state_dict())


def _device_or_exit(device: str, precision: str) -> str:
    """The device, or a one-line error with the fix (exit 2)."""
    from engines.backends.base import BackendUnavailable, scorer_device
    from engines.backends.fp8 import fp8_unavailable

    try:
        target = scorer_device(device)
    except (BackendUnavailable, ValueError) as exc:
        raise fail(f"{exc}; use --device cpu or run on a machine with a CUDA GPU", 2) from None
    if precision == "fp8" and (reason := fp8_unavailable(target)):
        raise fail(f"{reason}; build --precision bf16 instead", 2)
    return str(target)


def _summary(manifest: Any) -> dict[str, Any]:
    gate = manifest.gate or {}
    return {
        "id": manifest.key.id, "arch": manifest.key.arch, "precision": manifest.key.precision,
        "mode": manifest.key.mode, "dynamic_batch": manifest.key.dynamic_batch,
        "max_batch": manifest.key.max_batch,
        "device": manifest.key.device, "torch": manifest.key.torch,
        "gate": "passed" if manifest.passed else ("failed" if gate else "not run"),
        "p99_abs_diff": gate.get("p99_abs_diff"), "spearman": gate.get("spearman"),
        "crops_per_s": manifest.crops_per_s, "eager_crops_per_s": manifest.eager_crops_per_s,
        "cold_start_s": manifest.cold_start_s, "warm_start_s": manifest.warm_start_s,
    }


@engine_app.command("build")
def engine_build(
    precision: Annotated[str, typer.Option(
        help="bf16, fp16, fp32 or fp8 (FP8 transformer linears on bf16; CUDA >= 8.9).")]
    = "bf16",
    mode: Annotated[str, typer.Option(help="torch.compile mode.")] = "reduce-overhead",
    dynamic_batch: Annotated[bool, typer.Option(
        help="One graph with a symbolic batch size instead of one per bucket.")] = False,
    max_batch: Annotated[int | None, typer.Option(
        min=1, max=1024, help="Largest bucket (default detector.max_batch).",
        show_default=False)] = None,
    device: DeviceOption = "cuda",
    arch: ArchOption = None,
    bundle: BundleOption = None,
    allow_untrained: UntrainedOption = False,
    cache_dir: CacheOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Compile the detector for this device, gate it against eager torch on real face crops,
    time it, and record all of it; exit 1 when the gate refuses the engine."""
    import torch

    from engines.backends.build import EngineRefused, gated_engine
    from engines.backends.compiled import COMPILE_MODES, COMPILED_PRECISIONS
    from engines.backends.engine_cache import EngineCache, engine_key

    if precision not in COMPILED_PRECISIONS:
        raise fail(f"--precision {precision!r}: use one of {', '.join(COMPILED_PRECISIONS)}", 2)
    if mode not in COMPILE_MODES:
        raise fail(f"--mode {mode!r}: use one of {', '.join(COMPILE_MODES)}", 2)
    target = _device_or_exit(device, precision)
    model, weights = _model(config, arch, bundle, allow_untrained)
    batch = max_batch or settings_or_exit(config).detector.max_batch
    cache = EngineCache(_cache_root(cache_dir))
    console.print(f"[dim]compiling {model.arch} {precision} ({mode}) for {target}, buckets up "
                  f"to {batch}...[/dim]")
    refused: str | None = None
    try:
        gated_engine(model, target, precision, batch, mode, cache, weights, rerun_gate=True,
                     measure=True, dynamic_batch=dynamic_batch)
    except EngineRefused as exc:
        refused = str(exc)
    manifest = cache.read(engine_key(weights, model.arch, precision, torch.device(target), mode,
                                      batch, dynamic_batch))
    if as_json:
        typer.echo(json.dumps({**(manifest.as_dict() if manifest else {}), "refused": refused},
                              indent=2))
    else:
        console.print_json(data=_summary(manifest) if manifest else {})
    if refused:
        raise fail(refused, 1)


@engine_app.command("list")
def engine_list(cache_dir: CacheOption = None, as_json: JsonOption = False,
                config: ConfigOption = None) -> None:
    """The engines built in the cache, with their gates, speeds and start times."""
    from engines.backends.engine_cache import EngineCache

    settings_or_exit(config)
    manifests = EngineCache(_cache_root(cache_dir)).manifests()
    if as_json:
        typer.echo(json.dumps([m.as_dict() for m in manifests], indent=2))
        return
    from rich.table import Table

    table = Table(title="compiled engines")
    columns = ("id", "device", "torch", "gate", "p99", "spearman", "crops/s", "eager",
               "cold s", "warm s")
    for column in columns:
        table.add_column(column)
    for manifest in manifests:
        row = _summary(manifest)
        table.add_row(row["id"], row["device"], row["torch"], row["gate"],
                      *(str(row[k]) for k in ("p99_abs_diff", "spearman", "crops_per_s",
                                              "eager_crops_per_s", "cold_start_s",
                                              "warm_start_s")))
    console.print(table)
    if not manifests:
        console.print("no engines built yet: `dfstream engine build`")


@engine_app.command("bench")
def engine_bench(
    device: DeviceOption = "cuda",
    arch: ArchOption = None,
    bundle: BundleOption = None,
    allow_untrained: UntrainedOption = False,
    cache_dir: CacheOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Start every engine built for this detector on this device again (warm, from the cache)
    and time it against eager torch at its largest bucket; the manifests are updated."""
    import torch

    from engines.backends.build import EngineRefused, gated_engine
    from engines.backends.engine_cache import EngineCache, device_name

    target = _device_or_exit(device, "bf16")
    model, weights = _model(config, arch, bundle, allow_untrained)
    cache = EngineCache(_cache_root(cache_dir))
    here = [m for m in cache.manifests()
            if m.key.same_machine(weights, model.arch, device_name(torch.device(target)))]
    if not here:
        raise fail(f"no engine built for this detector on {device_name(torch.device(target))} "
                   f"with torch {torch.__version__}: run `dfstream engine build` first", 2)
    results = []
    for manifest in here:
        key = manifest.key
        console.print(f"[dim]{key.id}: warm start and timing...[/dim]")
        try:
            _, updated = gated_engine(model, target, key.precision, key.max_batch, key.mode,
                                      cache, weights, measure=True,
                                      dynamic_batch=key.dynamic_batch)
            results.append(_summary(updated))
        except EngineRefused as exc:
            results.append({**_summary(cache.read(key) or manifest), "refused": str(exc)})
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    console.print_json(data=results)

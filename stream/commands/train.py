"""``dfstream train PREP --out BUNDLE``: LN-tuning of the detector on a prepared crop set."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from stream.cli import ConfigOption, app, console, fail, progress_bar, settings_or_exit

if TYPE_CHECKING:
    from engines.checkpoints.base import BaseTower
    from engines.training.distributed import Workers
    from engines.training.trainer import TrainConfig

RANDOM_BASE = "random"


def resolve_base(reference: str | None, arch: str, seed: int) -> BaseTower:
    """The base tower to tune: a file, an installed base, or a random-init tower (``random``,
    the default for ``tiny``, which has no published weights), kept in the store by seed."""
    from engines.checkpoints.base import DEFAULT_BASES, load_base, random_base, read_base

    if reference is None:
        reference = DEFAULT_BASES.get(arch, RANDOM_BASE)
    if reference == RANDOM_BASE:
        return random_base(arch, seed)
    path = Path(reference).expanduser()
    return read_base(path) if path.suffix == ".safetensors" else load_base(reference)


@app.command("train")
def train_command(
    prepared: Annotated[Path, typer.Argument(help="A folder made by `dfstream data prepare`.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the detector bundle "
                                      "(.safetensors).")],
    arch: Annotated[str, typer.Option(help="ViT-L-14 (the papers'), ViT-B-16 or tiny.")]
    = "ViT-L-14",
    base: Annotated[str | None, typer.Option(
        help="Base tower: an installed base name, a base .safetensors file, or 'random' (a "
        "random-init tower: tests and synthetic demos only). Default: the arch's OpenAI base; "
        "'random' for tiny.", show_default=False)] = None,
    epochs: Annotated[int, typer.Option(min=1, max=1000)] = 10,
    batch_size: Annotated[int, typer.Option(min=2, max=4096)] = 128,
    lr: Annotated[float, typer.Option(min=1e-8, max=1.0)] = 3e-4,
    min_lr: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1e-5,
    warmup_epochs: Annotated[float, typer.Option(min=0.0, max=100.0)] = 1.0,
    uniformity: Annotated[float, typer.Option(min=0.0, help="Weight of the uniformity loss.")]
    = 0.5,
    alignment: Annotated[float, typer.Option(min=0.0, help="Weight of the alignment loss.")]
    = 0.1,
    label_smoothing: Annotated[float, typer.Option(min=0.0, max=0.5)] = 0.0,
    slerp: Annotated[bool, typer.Option(help="Slerp feature augmentation.")] = True,
    augment: Annotated[bool, typer.Option(help="The authors' image augmentations.")] = True,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint beside --out.")]
    = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary.")] = False,
    config: ConfigOption = None,
) -> None:
    """LN-tune the detector (the 50 LayerNorms of ViT-L/14 + the head) with cross-entropy,
    uniformity and alignment, slerp feature augmentation and paired real/fake batches; keep
    the epoch with the best validation video AP; write a bundle that `serve` can load. Under
    `torchrun --nproc_per_node N` it trains data-parallel (DDP; --batch-size is the global
    batch) and rank 0 writes the bundle and the summary."""
    from engines.clip_detector import ARCHS
    from engines.training import distributed
    from engines.training.trainer import TrainConfig

    if arch not in ARCHS:
        raise fail(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    settings_or_exit(config)  # applies the config's store locations
    workers, device = distributed.join(device)  # under torchrun: this process's rank and device
    train_config = TrainConfig(
        arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, min_lr=min_lr,
        warmup_epochs=warmup_epochs, uniformity=uniformity, alignment=alignment,
        label_smoothing=label_smoothing, slerp=slerp, augment=augment, seed=seed, device=device,
    )
    try:
        _train(prepared, out, base, train_config, resume, as_json, workers)
    finally:
        distributed.leave()


def _train(
    prepared: Path, out: Path, base: str | None, train_config: TrainConfig, resume: bool,
    as_json: bool, workers: Workers,
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    from engines.checkpoints.bundle import save_bundle
    from engines.metrics import MetricsError
    from engines.store import sha256_of
    from engines.training.crops import PreparedSet, PreparedSetError
    from engines.training.trainer import TrainingError, train
    from engines.training.tuning import TuningError

    arch, epochs, seed = train_config.arch, train_config.epochs, train_config.seed
    prepared_set = PreparedSet.open(prepared)
    tower = resolve_base(base, arch, seed)
    checkpoint = out.with_name(out.stem + ".train.pt")
    columns = (TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
               MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"))
    with progress_bar(*columns, enabled=workers.main) as bar:
        task = bar.add_task("train", total=None, epoch=0, epochs=epochs, loss=0.0)

        def progress(epoch: int, step: int, steps: int, loss: float) -> None:
            bar.update(task, completed=step, total=steps, epoch=epoch, loss=loss)

        try:
            result = train(prepared_set, tower, train_config, checkpoint=checkpoint,
                           resume=resume, progress=progress)
        except (TrainingError, TuningError, MetricsError, PreparedSetError, ValueError) as exc:
            raise fail(str(exc)) from None
    if not workers.main:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    save_bundle(result.bundle, out)
    summary = {
        "arch": arch,
        "base": tower.name,
        "base_sha256": tower.sha256,
        "trainable": result.trainable,
        "changed_frozen": result.changed_frozen,
        "train_crops": result.train_crops,
        "paired_fakes": result.paired_fakes,
        "epochs": [asdict(h) for h in result.history],
        "steps": result.steps,
        "resumed_from_epoch": result.resumed_from,
        "val": {**result.best_val, "epoch": result.best_epoch},
        "bundle": str(out),
        "bundle_sha256": sha256_of(out),
        "checkpoint": str(checkpoint),
        "processes": workers.world,
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    for h in result.history:
        console.print(f"epoch {h.epoch}: loss {h.loss.get('total', 0):.4f}, val video AUROC "
                      f"{h.val['auroc']:.3f} AP {h.val['ap']:.3f} ({h.crops_per_s:.0f} crops/s)")
    console.print(f"[green]bundle[/green] {out} (best epoch {result.best_epoch}: AUROC "
                  f"{result.best_val['auroc']:.3f}, AP {result.best_val['ap']:.3f}); "
                  f"{result.trainable:,} values trained, {result.changed_frozen} frozen changed")

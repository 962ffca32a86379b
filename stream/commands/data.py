"""``dfstream data synth`` (the synthetic face-forgery set, ``stream.data.synth``) and
``dfstream data prepare`` (the crop cache for training and evaluation, ``stream.data.prepare``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stream.cli import ConfigOption, console, data_app, fail, progress_bar, settings_or_exit


def _size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise typer.BadParameter(f"{text!r} is not WIDTHxHEIGHT, e.g. 256x256")
    return int(width), int(height)


SYNTH_HELP = "\n\n".join([
    "Write a SYNTHETIC face-forgery set and OUT/manifest.csv, for tests and demos only.",
    "Reals move the astronaut photograph (scikit-image), made into distinct identities by "
    "warps and colour, over face-free backdrops. Each fake swaps another identity into a real's "
    "face region with a feathered blend: swap-blend, swap-colour, swap-blur or swap-sharpen. "
    "Splits are by source, so a real and its fakes share one.",
    "A model trained on it learns this generator's seams and colour mismatch, not real "
    "deepfakes.",
])


@data_app.command("synth", help=SYNTH_HELP)
def data_synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the set into.")],
    videos: Annotated[int, typer.Option("--videos", help="Videos in all, reals and fakes.")] = 24,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same set.")] = 0,
    frames: Annotated[int, typer.Option("--frames", help="Frames per video (5 fps).")] = 16,
    size: Annotated[str, typer.Option("--size", help="Frame size WIDTHxHEIGHT.")] = "256x256",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a set already in --out.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Write the synthetic set (help: SYNTH_HELP)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    from stream.data.synth import SynthConfig, synthesize

    width, height = _size(size)
    try:
        config = SynthConfig(videos=videos, frames=frames, width=width, height=height, seed=seed)
    except ValueError as exc:
        raise fail(str(exc)) from None
    with progress_bar(TextColumn("synth"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.description}")) as bar:
        task = bar.add_task("", total=videos)
        try:
            dataset = synthesize(out, config, lambda name: bar.update(task, advance=1,
                                                                      description=name),
                                 overwrite=overwrite)
        except FileExistsError as exc:
            raise fail(str(exc)) from None
    counts = dataset.counts()
    summary = {
        "out": str(out), "manifest": str(out / "manifest.csv"), "videos": len(dataset),
        "real": sum(c["real"] for c in counts.values()),
        "fake": sum(c["fake"] for c in counts.values()),
        "splits": counts, "manipulations": dataset.manipulations(),
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    console.print(f"wrote {summary['videos']} SYNTHETIC videos ({summary['real']} real, "
                  f"{summary['fake']} fake) and {summary['manifest']}")


@data_app.command("prepare")
def data_prepare(
    manifest: Annotated[Path, typer.Argument(help="A manifest (.csv, .jsonl) or a folder tree.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the prepared crop set.")],
    frames: Annotated[int, typer.Option("--frames", min=1, max=10_000,
                                        help="Frames per video, floor(linspace) indices.")] = 32,
    with_face: Annotated[bool, typer.Option(
        "--with-face", help="Sample densely until --frames frames have a face (GenD's mode).")]
    = False,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Videos analysed at once.")] = 2,
    crop: Annotated[str | None, typer.Option(
        help="Crop style: 'fast' or 'reference' (overrides faces.crop; serve with the same).",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    config: ConfigOption = None,
) -> None:
    """Run the service's face stage over every video and cache the largest face's aligned crop
    per sampled frame, for `dfstream train` and `dfstream eval`. Resumable: videos already
    prepared in --out are kept."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn

    from engines.store import StoreError
    from stream.analysis import Analyser
    from stream.data.manifest import load_manifest
    from stream.data.prepare import prepare, prepare_settings

    settings = settings_or_exit(config)
    if crop is not None:
        if crop not in ("fast", "reference"):
            raise fail(f"unknown crop style {crop!r}; choose fast or reference")
        settings.faces.crop = crop  # type: ignore[assignment]
    dataset = load_manifest(manifest)
    try:
        analyser = Analyser.faces_only(settings)
    except (StoreError, ValueError) as exc:
        raise fail(str(exc)) from None
    with progress_bar(TextColumn("prepare"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.description}")) as bar:
        task = bar.add_task("", total=len(dataset.entries))
        summary = prepare(
            dataset.entries, analyser, out, frames=frames, with_face=with_face, workers=workers,
            settings=prepare_settings(settings, manifest, dataset.synthetic),
            progress=lambda name: bar.update(task, advance=1, description=name),
        )
    if as_json:
        typer.echo(json.dumps(summary.as_dict(), indent=2))
    else:
        console.print(f"prepared {summary.prepared} video(s), kept {summary.resumed} already "
                      f"done, {summary.crops} crops in {out}")
        if summary.without_face:
            console.print(f"[yellow]{len(summary.without_face)} video(s) without a face:[/] "
                          + ", ".join(summary.without_face[:10]))
    if summary.failed:
        for video, error in summary.failed.items():
            console.print(f"[red]{video}:[/] {error}")
        raise typer.Exit(1)

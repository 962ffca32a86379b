"""``dfstream data synth``: write the synthetic face-forgery set (``stream.data.synth``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stream.cli import console, data_app, fail


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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from stream.data.synth import SynthConfig, synthesize

    width, height = _size(size)
    try:
        config = SynthConfig(videos=videos, frames=frames, width=width, height=height, seed=seed)
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    with Progress(TextColumn("synth"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), console=console, transient=True) as bar:
        task = bar.add_task("", total=videos)
        try:
            dataset = synthesize(out, config, lambda name: bar.update(task, advance=1,
                                                                      description=name),
                                 overwrite=overwrite)
        except FileExistsError as exc:
            raise fail(str(exc), 2) from None
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

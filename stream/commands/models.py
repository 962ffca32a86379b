"""``dfstream models pull|import|list|verify|info``.

The store holds three kinds of things: plain artifacts with a published sha256 (e.g. the face
detector weights, engines.artifacts.ARTIFACTS), CLIP base towers, and detector bundles. These
commands cover all three.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from stream.cli import ConfigOption, console, fail, models_app, progress_bar, settings_or_exit
from stream.console import make_console

DEFAULT_DETECTORS = {"ViT-L-14": "gend-clip-l-14"}
"""The published detector ``pull`` fetches by default, per architecture."""

ArchOption = Annotated[
    str, typer.Option("--arch", help="Architecture: ViT-L-14, ViT-B-16 or tiny.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


@models_app.command("info")
def models_info(
    arch: ArchOption = "ViT-L-14",
    as_json: JsonOption = False,
) -> None:
    """Parameter counts of a detector architecture (no weights needed)."""
    from engines.clip_detector import ARCHS, count_parameters

    if arch not in ARCHS:
        raise fail(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    counts = asdict(count_parameters(arch))
    counts["trainable_fraction"] = counts["trainable"] / counts["total"]
    counts["bundle_bytes_approx"] = counts["trainable"] * 4
    if as_json:
        _echo_json(counts)
        return
    from rich.table import Table

    table = Table(title=f"LN-CLIP {arch}", show_header=False)
    for key, value in counts.items():
        shown = f"{value:.4%}" if key == "trainable_fraction" else (
            f"{value:,}" if isinstance(value, int) else str(value)
        )
        table.add_row(key, shown)
    make_console().print(table)


def _list_rows() -> dict[str, list[dict[str, Any]]]:
    from engines.artifacts import ARTIFACTS, installed
    from engines.checkpoints.catalog import installed_bases, installed_bundles
    from engines.hub import HUB_MODELS

    artifacts = [
        {"name": row.name, "path": row.path, "installed": row.path is not None,
         "description": ARTIFACTS[row.name].description}
        for row in installed(check=False)
    ]
    bases = [
        {"name": b.name, "arch": b.arch, "path": b.path, "sha256": b.sha256, "size": b.size}
        for b in installed_bases()
    ]
    bundles = [
        {"name": b.name, "arch": b.arch, "path": b.path, "size": b.size,
         "base": b.base.id if b.base else None, "full": b.full,
         "calibration": b.calibration.get("method"), "created_at": b.created_at,
         "metrics": b.metrics}
        for b in installed_bundles()
    ]
    present = {b["name"] for b in bases} | {b["name"] for b in bundles}
    available = [
        {"name": m.name, "kind": m.kind, "arch": m.arch, "installed": m.name in present,
         "source": m.weights.url, "description": m.description}
        for m in sorted(HUB_MODELS.values(), key=lambda m: m.name)
    ]
    return {"artifacts": artifacts, "bases": bases, "bundles": bundles, "pullable": available}


@models_app.command("list")
def models_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """What is installed (artifacts, base towers, detector bundles) and what can be pulled."""
    settings_or_exit(config)
    rows = _list_rows()
    if as_json:
        _echo_json(rows)
        return
    from rich.table import Table

    table = Table(title="model store")
    for column in ("kind", "name", "arch", "status", "where / what"):
        table.add_column(column)
    for row in rows["artifacts"]:
        table.add_row("artifact", row["name"], "", "installed" if row["installed"] else
                      "[yellow]missing[/yellow]", str(row["path"] or row["description"]))
    for row in rows["bases"]:
        table.add_row("base", row["name"], row["arch"], "installed", str(row["path"]))
    for row in rows["bundles"]:
        what = f"over {row['base']}" if row["base"] else "full model"
        table.add_row("bundle", row["name"], row["arch"], "installed",
                      f"{what}; calibration {row['calibration']}; {row['path']}")
    for row in rows["pullable"]:
        if not row["installed"]:
            table.add_row(row["kind"], row["name"], row["arch"], "[dim]pullable[/dim]",
                          row["source"])
    make_console().print(table)


@models_app.command("verify")
def models_verify(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Check every installed file against its sha256 (and each bundle against its base)."""
    settings_or_exit(config)
    from engines import store
    from engines.artifacts import installed
    from engines.checkpoints.catalog import verify_base, verify_bundle
    from engines.checkpoints.errors import CheckpointError

    checks: list[dict[str, Any]] = []
    for row in installed(check=True):
        if row.path is not None:
            checks.append({"kind": "artifact", "name": row.name, "path": str(row.path),
                           "ok": row.ok, "detail": row.detail})
    for kind, subdir, verify in (("base", store.BASES_SUBDIR, verify_base),
                                 ("bundle", store.BUNDLES_SUBDIR, verify_bundle)):
        for path in store.store_files(subdir):
            try:
                checks.append({"kind": kind, "name": path.stem, "path": str(path), "ok": True,
                               "detail": verify(path)})
            except (CheckpointError, store.StoreError) as exc:
                checks.append({"kind": kind, "name": path.stem, "path": str(path), "ok": False,
                               "detail": str(exc)})
    bad = [c for c in checks if not c["ok"]]
    if as_json:
        _echo_json({"ok": not bad, "checks": checks})
    else:
        for check in checks:
            mark = "[green]ok[/green]" if check["ok"] else "[red]FAILED[/red]"
            console.print(f"{mark} {check['kind']} {check['name']}: {check['detail']}")
        if not checks:
            console.print("nothing installed; see `dfstream models list`")
    if bad:
        raise typer.Exit(1)


def _progress_bar() -> Any:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return progress_bar(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), transient=False,
    )


@models_app.command("pull")
def models_pull(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Models to fetch; default: what the configured service needs."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Download models (and convert CLIP weights into base towers and detector bundles)."""
    from engines import artifacts, store
    from engines.hub import HUB_MODELS

    settings = settings_or_exit(config)
    if not names:
        from engines.checkpoints.base import DEFAULT_BASES

        names = []
        if settings.faces.detector in artifacts.ARTIFACTS:
            names.append(settings.faces.detector)
        detector = settings.detector.bundle or DEFAULT_DETECTORS.get(settings.detector.arch)
        if detector is not None and detector in HUB_MODELS:
            names.append(detector)
        elif settings.detector.arch in DEFAULT_BASES:
            names.append(DEFAULT_BASES[settings.detector.arch])
    unknown = [n for n in names if n not in artifacts.ARTIFACTS and n not in HUB_MODELS]
    if unknown:
        known = sorted({*artifacts.ARTIFACTS, *HUB_MODELS})
        raise fail(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(known)}")
    failed = False
    with _progress_bar() as bar:
        tasks: dict[str, Any] = {}

        def report(label: str, done: int, total: int | None) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done, total=total)

        for name in names:
            try:
                if name in artifacts.ARTIFACTS:
                    path = artifacts.pull(name, progress=_labelled(report, name))
                else:
                    path = _pull_hub_model(name, report)
                console.print(f"[green]{name}[/green]: {path}")
            except store.StoreError as exc:
                failed = True
                console.print(f"[red]error:[/red] {name}: {exc}")
    if failed:
        raise typer.Exit(2)


def _pull_hub_model(name: str, report: Any) -> Path:
    """Hub models need torch and open_clip, seconds to import: loaded only when one is pulled."""
    from engines import store
    from engines.checkpoints.errors import CheckpointError
    from engines.checkpoints.pull import pull

    try:
        return pull(name, progress=report)
    except CheckpointError as exc:
        raise store.StoreError(str(exc)) from None


def _labelled(report: Any, label: str) -> Any:
    return lambda done, total: report(label, done, total)


class ImportKind(StrEnum):
    base = "base"
    gend = "gend"
    lightning = "lightning"
    bundle = "bundle"
    artifact = "artifact"


@models_app.command("import")
def models_import(
    kind: Annotated[ImportKind, typer.Argument(help=(
        "base: OpenAI CLIP weights (open_clip, OpenAI TorchScript or HF layout); "
        "gend: GenD's HF safetensors; lightning: the LN-CLIP paper's model.ckpt; "
        "bundle: a dfstream bundle; artifact: a file the store knows by name (e.g. RetinaFace), "
        "or the published archive it is extracted from"
    ))],
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The file.")],
    name: Annotated[str | None, typer.Option(help="Store name (defaults by kind).")] = None,
    arch: Annotated[str | None, typer.Option(help="Expected architecture (checked).")] = None,
    base: Annotated[str | None, typer.Option(help="Base tower it was tuned from.")] = None,
    full_model: Annotated[bool, typer.Option(
        "--full-model", help="Keep the whole tower when the frozen weights differ from the base."
    )] = False,
    force: Annotated[bool, typer.Option(help="Replace an installed bundle of that name.")] = False,
    config: ConfigOption = None,
) -> None:
    """Import a file you have into the store (the offline path of `pull`)."""
    settings_or_exit(config)
    from engines import artifacts
    from engines.checkpoints.base import import_base
    from engines.checkpoints.catalog import install_bundle
    from engines.checkpoints.importers import import_bundle_file, import_gend, import_lightning

    if kind is ImportKind.artifact:
        if name is None:
            known = ", ".join(sorted(artifacts.ARTIFACTS))
            raise fail(f"name the artifact with --name ({known})")
        target = artifacts.install_file(name, path)
        console.print(f"[green]{name}[/green]: sha256 ok, installed at {target}")
        return
    if kind is ImportKind.base:
        target = import_base(path, name=name, arch=arch,
                                         source={"imported_from": str(path)})
        console.print(f"[green]base[/green]: {target}")
        return
    source = {"imported_from": str(path)}
    if kind is ImportKind.gend:
        bundle = import_gend(path, base=base, full_model=full_model, source=source)
        default = "gend-clip-l-14" if bundle.arch == "ViT-L-14" else f"gend-{bundle.arch}"
    elif kind is ImportKind.lightning:
        bundle = import_lightning(path, base=base, full_model=full_model, source=source)
        default = "ln-clip-l-14" if bundle.arch == "ViT-L-14" else f"ln-clip-{bundle.arch}"
    else:
        bundle = import_bundle_file(path)
        default = path.stem
    if arch is not None and bundle.arch != arch:
        raise fail(f"{path} holds a {bundle.arch} detector, not {arch}")
    target = install_bundle(bundle, name or default, overwrite=force)
    kept = "whole tower" if bundle.base is None else f"LayerNorms + head over {bundle.base.id}"
    console.print(f"[green]bundle[/green] {target.stem}: {bundle.arch}, {kept}, "
                  f"{target.stat().st_size:,} bytes at {target}")

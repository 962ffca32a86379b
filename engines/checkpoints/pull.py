"""``pull`` of a hub model: fetch it, convert it, keep it (a base tower, or a bundle over its
base, which is pulled first)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engines import store
from engines.checkpoints.base import import_base
from engines.checkpoints.catalog import install_bundle
from engines.checkpoints.errors import CheckpointError
from engines.checkpoints.importers import import_gend, import_lightning
from engines.hub import HUB_MODELS, HubModel, hub_download, hub_manual_steps

DownloadProgress = Callable[[str, int, int | None], None]
"""(label, bytes done, bytes total or None)."""


def _import_command(model: HubModel) -> str:
    kind = "base" if model.kind == "base" else model.fmt
    return f"dfstream models import {kind} FILE --name {model.name}"


def pull(name: str, progress: DownloadProgress | None = None) -> Path:
    """Fetch a hub model and keep it: a base tower, or a detector bundle (its base first).

    Already installed models are returned as they are. Offline, a StoreError says so and gives
    the manual steps.
    """
    model = HUB_MODELS.lookup(name)
    subdir = store.BASES_SUBDIR if model.kind == "base" else store.BUNDLES_SUBDIR
    existing = store.find_in_store(subdir, name)
    if existing is not None:
        return existing
    if model.kind == "detector" and model.base is not None:
        try:
            pull(model.base, progress)
        except store.StoreError as exc:
            steps = hub_manual_steps(model.weights, _import_command(model))
            raise store.StoreError(f"{exc}\nThen, for {name}: {steps}") from None

    def reporter(label: str) -> store.ProgressCallback | None:
        if progress is None:
            return None
        return lambda done, total: progress(label, done, total)

    downloads = Path(tempfile.mkdtemp(prefix="pull-", dir=store.writable_dir("downloads")))
    try:
        config: dict[str, Any] | None = None
        if model.config is not None:
            config_path, _ = hub_download(
                model.config, downloads, _import_command(model), reporter(model.config.filename)
            )
            config = json.loads(config_path.read_text())
        weights, provenance = hub_download(
            model.weights, downloads, _import_command(model), reporter(f"{name} weights")
        )
        if model.kind == "base":
            return import_base(weights, name=name, arch=model.arch, source=provenance)
        if model.fmt == "gend":
            bundle = import_gend(weights, base=model.base, source=provenance, config=config)
        elif model.fmt == "lightning":
            bundle = import_lightning(weights, base=model.base, source=provenance)
        else:
            raise CheckpointError(f"no importer for format {model.fmt!r}")
        return install_bundle(bundle, name)
    finally:
        shutil.rmtree(downloads, ignore_errors=True)

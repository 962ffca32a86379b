"""What the store holds of bases and bundles: installing a bundle, summaries read from metadata
alone (no tensors), and verification of each file and of a bundle's base."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines import store
from engines.checkpoints.base import BASE_FORMAT, BaseRef, load_base, read_base
from engines.checkpoints.bundle import BUNDLE_FORMAT, Bundle, read_bundle, save_bundle
from engines.checkpoints.errors import CheckpointError
from engines.checkpoints.files import json_field, read_metadata

log = logging.getLogger(__name__)


def install_bundle(bundle: Bundle, name: str, overwrite: bool = False) -> Path:
    """Write a bundle into the store as ``name``."""
    store.check_store_name(name)
    path = store.writable_dir(store.BUNDLES_SUBDIR) / f"{name}.safetensors"
    if path.exists() and not overwrite:
        raise CheckpointError(f"a bundle named {name!r} exists ({path}); choose another name")
    return save_bundle(bundle, path)


@dataclass(frozen=True)
class BundleSummary:
    name: str
    path: Path
    arch: str
    full: bool
    base: BaseRef | None
    created_at: str
    calibration: dict[str, Any]
    metrics: dict[str, Any]
    source: dict[str, Any]
    size: int


def bundle_summary(path: Path) -> BundleSummary:
    """What a bundle is, from its metadata alone (no tensors read)."""
    metadata = read_metadata(path, BUNDLE_FORMAT)
    base = json_field(metadata, "base", path)
    return BundleSummary(
        name=path.stem,
        path=path,
        arch=metadata.get("arch", "?"),
        full=bool(json_field(metadata, "full", path)),
        base=None if base is None else BaseRef(base["id"], base["sha256"]),
        created_at=metadata.get("created_at", ""),
        calibration=json_field(metadata, "calibration", path),
        metrics=json_field(metadata, "metrics", path),
        source=json_field(metadata, "source", path),
        size=path.stat().st_size,
    )


def installed_bundles(arch: str | None = None) -> list[BundleSummary]:
    """Readable bundles in the store (of ``arch`` if given); unreadable ones are logged."""
    out = []
    for path in store.store_files(store.BUNDLES_SUBDIR):
        try:
            summary = bundle_summary(path)
        except CheckpointError as exc:
            log.warning("skipping %s: %s", path, exc)
            continue
        if arch is None or summary.arch == arch:
            out.append(summary)
    return out


@dataclass(frozen=True)
class BaseSummary:
    name: str
    path: Path
    arch: str
    sha256: str
    source: dict[str, Any]
    size: int


def installed_bases() -> list[BaseSummary]:
    out = []
    for path in store.store_files(store.BASES_SUBDIR):
        try:
            metadata = read_metadata(path, BASE_FORMAT)
        except CheckpointError as exc:
            log.warning("skipping %s: %s", path, exc)
            continue
        out.append(BaseSummary(
            path.stem, path, metadata.get("arch", "?"), metadata.get("sha256", ""),
            json.loads(metadata.get("source", "{}")), path.stat().st_size,
        ))
    return out


def verify_bundle(path: Path) -> str:
    """Check a bundle's own sha256 and that its base is installed with the named sha256."""
    bundle = read_bundle(path, verify=True)
    if bundle.base is None:
        return "sha256 ok (full model)"
    load_base(bundle.base.id, expected_sha256=bundle.base.sha256, verify=False)
    return f"sha256 ok, base {bundle.base.id} present"


def verify_base(path: Path) -> str:
    base = read_base(path, verify=True)
    return f"sha256 ok ({base.sha256[:12]})"

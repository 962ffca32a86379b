"""Base towers: the frozen CLIP vision towers that bundles name by store id and tensors sha256,
kept once in the store and shared by every bundle tuned from them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from engines import store
from engines.checkpoints.errors import CheckpointError
from engines.checkpoints.files import (
    FORMAT_VERSION,
    as_stored,
    atomic_save,
    read_metadata,
    tensors_sha256,
    utc_now,
)
from engines.checkpoints.keymap import check_tower, infer_arch, split_checkpoint
from engines.checkpoints.safe_load import read_checkpoint
from engines.clip_detector import ARCHS, random_detector

BASE_FORMAT = "dfstream-clip-base"
DEFAULT_BASES = {"ViT-L-14": "clip-vit-l-14-openai", "ViT-B-16": "clip-vit-b-16-openai"}
"""The store name of the OpenAI tower each architecture's published detectors were tuned from."""


@dataclass(frozen=True)
class BaseRef:
    """How a bundle names its frozen base: store id and the sha256 of the base's tensors."""

    id: str
    sha256: str


@dataclass
class BaseTower:
    """A loaded base: its tensors (open_clip names), their sha256 and where they came from."""

    name: str
    arch: str
    sha256: str
    tensors: dict[str, torch.Tensor]
    source: dict[str, Any]
    path: Path | None = None

    @property
    def ref(self) -> BaseRef:
        return BaseRef(self.name, self.sha256)


def save_base(
    tower: Mapping[str, torch.Tensor],
    name: str,
    arch: str | None = None,
    source: Mapping[str, Any] | None = None,
    directory: Path | None = None,
) -> Path:
    """Keep a complete vision tower (open_clip names, no projection) as a store base."""
    store.check_store_name(name)
    arch = arch or infer_arch(tower)
    tensors = {k: as_stored(v) for k, v in tower.items()}
    check_tower(arch, tensors, f"base {name}")
    metadata = {
        "format": BASE_FORMAT,
        "version": FORMAT_VERSION,
        "name": name,
        "arch": arch,
        "sha256": tensors_sha256(tensors),
        "source": json.dumps(dict(source or {}), sort_keys=True),
        "created_at": utc_now(),
    }
    path = (directory or store.writable_dir(store.BASES_SUBDIR)) / f"{name}.safetensors"
    atomic_save(tensors, metadata, path)
    return path


def read_base(path: Path, verify: bool = True) -> BaseTower:
    """A stored base tower; with ``verify``, its tensors must hash to its recorded sha256."""
    metadata = read_metadata(path, BASE_FORMAT)
    tensors = load_file(path)
    arch = metadata["arch"]
    if arch not in ARCHS:
        raise CheckpointError(f"{path}: unknown architecture {arch!r}")
    check_tower(arch, tensors, str(path))
    if verify and tensors_sha256(tensors) != metadata["sha256"]:
        raise CheckpointError(
            f"{path}: its tensors no longer match its sha256; the file is corrupt, pull or "
            "import the base again"
        )
    return BaseTower(
        metadata["name"], arch, metadata["sha256"], tensors, json.loads(metadata["source"]), path
    )


def load_base(name: str, expected_sha256: str | None = None, verify: bool = True) -> BaseTower:
    """The installed base ``name``; a CheckpointError says how to get it when missing."""
    path = store.find_in_store(store.BASES_SUBDIR, name)
    if path is None:
        where = ", ".join(str(d / store.BASES_SUBDIR) for d in store.search_dirs())
        raise CheckpointError(
            f"base weights {name!r} are not installed (looked in {where}); run "
            f"`dfstream models pull {name}`, or `dfstream models import base FILE --name {name}`"
        )
    base = read_base(path, verify=verify)
    if expected_sha256 is not None and base.sha256 != expected_sha256:
        raise CheckpointError(
            f"the installed base {name!r} ({path}) has tensors sha256 {base.sha256}, but the "
            f"bundle was tuned on {expected_sha256}: different weights under the same name"
        )
    return base


def import_base(
    path: Path,
    name: str | None = None,
    arch: str | None = None,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Keep the vision tower of OpenAI CLIP weights (open_clip, OpenAI TorchScript or HF layout)."""
    loaded = read_checkpoint(path)
    found = split_checkpoint(loaded.state)
    tower_arch = infer_arch(found.tower)
    if arch is not None and arch != tower_arch:
        raise CheckpointError(f"{path} holds a {tower_arch} tower, not {arch}")
    if name is None:
        if tower_arch not in DEFAULT_BASES:
            raise CheckpointError(f"name the base of a {tower_arch} tower with --name")
        name = DEFAULT_BASES[tower_arch]
    provenance = {"file": Path(path).name, "layout": found.layout, **dict(source or {})}
    return save_base(found.tower, name, tower_arch, provenance)


def random_base(arch: str, seed: int) -> BaseTower:
    """A random-init tower (tests and synthetic demos: ``tiny`` has no published weights), kept
    in the store by arch and seed so a bundle over it can be loaded again."""
    name = f"{arch.lower()}-random-init-seed{seed}"
    if store.find_in_store(store.BASES_SUBDIR, name) is None:
        model = random_detector(arch, seed=seed)
        tower = {k: v for k, v in model.state_dict().items() if k.startswith("visual.")}
        save_base(tower, name, arch, {"init": "open_clip random initialisation", "seed": seed,
                                      "pretrained": False})
    return load_base(name)

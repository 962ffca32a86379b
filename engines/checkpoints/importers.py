"""Importers of the published detectors (GenD's HF safetensors, the LN-CLIP paper's Lightning
checkpoint, our own bundle files) into bundles.

The frozen part of an imported tower must equal the named base before only the delta is kept; a
checkpoint whose frozen weights differ is refused unless the caller asks to keep the whole tower.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from engines.checkpoints.base import DEFAULT_BASES, BaseTower, load_base
from engines.checkpoints.bundle import Bundle, read_bundle
from engines.checkpoints.errors import CheckpointError
from engines.checkpoints.keymap import (
    ForeignCheckpoint,
    check_shapes,
    check_tower,
    infer_arch,
    split_checkpoint,
    tower_keys,
    tuned_keys,
)
from engines.checkpoints.safe_load import read_checkpoint
from engines.clip_detector import arch_spec

log = logging.getLogger(__name__)


class BaseMismatchError(CheckpointError):
    """The frozen weights are not the named base; only a full bundle can hold the model."""


def _differences(
    tensors: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], names: list[str]
) -> list[tuple[str, float]]:
    diffs = []
    for name in names:
        a = tensors[name].to(torch.float32)
        b = reference[name].to(torch.float32)
        if not torch.equal(a, b):
            diffs.append((name, float((a - b).abs().max())))
    return diffs


def detector_bundle(
    found: ForeignCheckpoint,
    base: str | None = None,
    full_model: bool = False,
    source: Mapping[str, Any] | None = None,
) -> Bundle:
    """A bundle of an imported detector: its LayerNorms and head over the base it names.

    The frozen weights must equal the base exactly; otherwise BaseMismatchError, unless
    ``full_model`` asks to keep the whole tower (1.2 GB for ViT-L/14) instead.
    """
    arch = infer_arch(found.tower)
    check_tower(arch, found.tower, "the checkpoint's tower")
    if set(found.head) != {"head.weight", "head.bias"}:
        raise CheckpointError(
            "the checkpoint has no linear head (`model.linear.weight/bias`); found "
            f"{sorted(found.head) or 'none'}"
        )
    check_shapes(arch, found.head, "the checkpoint's head")
    state = {**found.tower, **found.head}
    provenance: dict[str, Any] = {"layout": found.layout, **dict(source or {})}
    base_name = base or DEFAULT_BASES.get(arch)
    tuned = tuned_keys(arch)
    frozen = [k for k in tower_keys(arch) if k not in set(tuned)]
    base_tower: BaseTower | None = None
    if base_name is not None:
        try:
            base_tower = load_base(base_name)
        except CheckpointError:
            if not full_model:
                raise
    if base_tower is not None:
        if base_tower.arch != arch:
            raise CheckpointError(f"base {base_name} is {base_tower.arch}; the tower is {arch}")
        frozen_diffs = _differences(state, base_tower.tensors, frozen)
        ln_names = [k for k in tuned if k.startswith("visual.")]
        changed_ln = {k.rsplit(".", 1)[0] for k, _ in _differences(state, base_tower.tensors,
                                                                     ln_names)}
        provenance["tuned_layernorms"] = f"{len(changed_ln)}/{arch_spec(arch).layernorms}"
        if len(changed_ln) < arch_spec(arch).layernorms:
            untouched = sorted({k.rsplit(".", 1)[0] for k in ln_names} - changed_ln)
            log.warning("%d LayerNorms equal the base (not tuned): %s", len(untouched),
                        ", ".join(untouched[:5]))
        if frozen_diffs and not full_model:
            worst = max(frozen_diffs, key=lambda d: d[1])
            raise BaseMismatchError(
                f"{len(frozen_diffs)} of {len(frozen)} frozen tensors differ from base "
                f"{base_name} (e.g. {frozen_diffs[0][0]}; largest |diff| {worst[1]:.3g} in "
                f"{worst[0]}): this is not an LN-tuned {base_name}. Refusing to keep only the "
                "LayerNorms; import with --full-model to keep the whole tower instead"
            )
        if not frozen_diffs and not full_model:
            return Bundle(
                arch=arch,
                tensors={k: state[k] for k in tuned},
                base=base_tower.ref,
                source=provenance,
            )
        provenance["frozen_equals_base"] = not frozen_diffs
    return Bundle(arch=arch, tensors=state, base=None, source=provenance)


_HEADS_ON_NORMALISED = {"LinearNorm"}


def import_gend(
    path: Path, base: str | None = None, full_model: bool = False,
    source: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
) -> Bundle:
    """GenD's HF safetensors (``feature_extractor.vision_model.*``, ``model.linear.*``).

    ``config`` is the model's published config.json when known; its head must be LinearNorm.
    """
    if config is not None and config.get("head") not in _HEADS_ON_NORMALISED:
        raise CheckpointError(
            f"this GenD model's head is {config.get('head')!r}; only a head on L2-normalised "
            "features (LinearNorm) is the LN-CLIP detector dfstream runs"
        )
    loaded = read_checkpoint(Path(path))
    found = split_checkpoint(loaded.state)
    provenance = {"format": "gend", "file": Path(path).name, **dict(source or {})}
    if config is not None:
        provenance["config"] = {k: config.get(k) for k in ("backbone", "head") if k in config}
    return detector_bundle(found, base=base, full_model=full_model, source=provenance)


def import_lightning(
    path: Path, base: str | None = None, full_model: bool = False,
    source: Mapping[str, Any] | None = None,
) -> Bundle:
    """The LN-CLIP paper's Lightning checkpoint: ``state_dict`` with the authors' prefixes
    (``feature_extractor.[base_model.model.]vision_model.*``, ``model.linear.*``)."""
    loaded = read_checkpoint(Path(path))
    if loaded.container != "lightning":
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no `state_dict` inside)")
    hyper = loaded.extra.get("hyper_parameters") or {}
    head = hyper.get("head") if isinstance(hyper, Mapping) else None
    if head is not None and head not in _HEADS_ON_NORMALISED:
        raise CheckpointError(
            f"this checkpoint's head is {head!r} (on unnormalised features); dfstream's detector "
            "applies its head to L2-normalised features (LinearNorm)"
        )
    if head is None:
        log.warning("%s does not say which head it trained; assuming LinearNorm", path)
    found = split_checkpoint(loaded.state)
    provenance: dict[str, Any] = {
        "format": "lightning", "file": Path(path).name, "head": head or "unknown",
        **{k: loaded.extra[k] for k in ("epoch", "global_step") if k in loaded.extra},
        **dict(source or {}),
    }
    if isinstance(hyper, Mapping):
        provenance["hyper_parameters"] = {
            k: hyper[k] for k in ("backbone", "run_name", "loss", "lr", "batch_size") if k in hyper
        }
    return detector_bundle(found, base=base, full_model=full_model, source=provenance)


def import_bundle_file(path: Path) -> Bundle:
    """One of our own bundle files (e.g. trained elsewhere), fully verified."""
    bundle = read_bundle(Path(path))
    if bundle.base is not None:
        load_base(bundle.base.id, expected_sha256=bundle.base.sha256, verify=False)
    return bundle

"""The detector bundle: what LN-tuning changes and nothing else.

A bundle holds the LayerNorm values and the head (104,450 values, 0.4 MB for ViT-L/14), the
calibration parameters and JSON metadata, in one safetensors file. It names its frozen base tower
by store id and by the sha256 of the base's tensors, so it only ever loads over exactly the
weights it was tuned from; a bundle without a base holds the whole model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from engines.checkpoints.base import BaseRef, BaseTower, load_base
from engines.checkpoints.errors import CheckpointError
from engines.checkpoints.files import (
    FORMAT_VERSION,
    as_stored,
    atomic_save,
    json_field,
    read_metadata,
    tensors_sha256,
    utc_now,
)
from engines.checkpoints.keymap import check_shapes, detector_keys, tuned_keys
from engines.clip_detector import ARCHS, CLIP_MEAN, CLIP_STD, FAKE_CLASS, LNCLIPDetector, arch_spec

BUNDLE_FORMAT = "dfstream-detector-bundle"
CALIBRATION_PARAMS = {"none": 0, "temperature": 1, "platt": 2}
"""Calibration methods a bundle may carry and how many parameters each has."""


def preprocessing_constants(arch: str) -> dict[str, Any]:
    """The input convention, recorded in each bundle so that it can be run outside dfstream."""
    spec = arch_spec(arch)
    return {
        "input": f"uint8 RGB, (N, {spec.image_size}, {spec.image_size}, 3)",
        "size": spec.image_size,
        "mean": list(CLIP_MEAN),
        "std": list(CLIP_STD),
        "scale": "1/255, then (x - mean) / std, inside the model",
        "fake_class": FAKE_CLASS,
        "feature": "CLS after ln_post, no projection, L2-normalised",
    }


def check_calibration(calibration: Mapping[str, Any]) -> dict[str, Any]:
    """``{"method": "none"|"temperature"|"platt", "params": [floats]}``, validated."""
    method = calibration.get("method")
    params = calibration.get("params", [])
    if method not in CALIBRATION_PARAMS:
        raise CheckpointError(
            f"calibration method {method!r} is not one of {', '.join(CALIBRATION_PARAMS)}"
        )
    if not isinstance(params, list | tuple) or not all(
        isinstance(p, int | float) and math.isfinite(p) for p in params
    ):
        raise CheckpointError(f"calibration params must be finite numbers, got {params!r}")
    if len(params) != CALIBRATION_PARAMS[method]:
        raise CheckpointError(
            f"calibration {method!r} takes {CALIBRATION_PARAMS[method]} params, got {len(params)}"
        )
    if method == "temperature" and params[0] <= 0:
        raise CheckpointError(f"calibration temperature must be > 0, got {params[0]}")
    return {"method": method, "params": [float(p) for p in params]}


NO_CALIBRATION: dict[str, Any] = {"method": "none", "params": []}


@dataclass
class Bundle:
    """A detector: the tuned values over a named base (or, when ``base`` is None, a whole tower)."""

    arch: str
    tensors: dict[str, torch.Tensor]
    base: BaseRef | None
    calibration: dict[str, Any] = field(default_factory=lambda: dict(NO_CALIBRATION))
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=utc_now)

    @property
    def full(self) -> bool:
        return self.base is None

    def check(self) -> None:
        """Raise CheckpointError unless the tensors are exactly what this kind of bundle holds."""
        if self.arch not in ARCHS:
            raise CheckpointError(f"unknown architecture {self.arch!r}")
        expected = set(detector_keys(self.arch)[0] if self.full else tuned_keys(self.arch))
        missing = sorted(expected - set(self.tensors))
        extra = sorted(set(self.tensors) - expected)
        if missing or extra:
            kind = "full" if self.full else "LayerNorm + head"
            raise CheckpointError(
                f"not a {kind} {self.arch} bundle: missing {missing[:5]}, unexpected {extra[:5]}"
            )
        check_shapes(self.arch, self.tensors, "bundle")
        self.calibration = check_calibration(self.calibration)


def weights_id(bundle: Bundle) -> str:
    """sha256 of the bundle's tensors (and its base's): names the weights a model runs, for
    engine caches and per-stream calibrations."""
    return tensors_sha256(bundle.tensors) + (f":{bundle.base.sha256}" if bundle.base else "")


def trained_on_synthetic(training: Mapping[str, Any]) -> bool:
    """Whether a bundle's training data was synthetic (``dfstream data synth``)."""
    return bool(training.get("prepared_settings", {}).get("synthetic", False))


def training_crop(training: Mapping[str, Any]) -> str | None:
    """The crop style (``faces.crop``) of a bundle's training crops, when the bundle says."""
    faces = training.get("prepared_settings", {}).get("faces", {})
    crop = faces.get("crop") if isinstance(faces, Mapping) else None
    return str(crop) if crop else None


def save_bundle(bundle: Bundle, path: Path) -> Path:
    bundle.check()
    tensors = {k: as_stored(v) for k, v in bundle.tensors.items()}
    metadata = {
        "format": BUNDLE_FORMAT,
        "version": FORMAT_VERSION,
        "arch": bundle.arch,
        "base": json.dumps(
            None if bundle.base is None else {"id": bundle.base.id, "sha256": bundle.base.sha256}
        ),
        "full": json.dumps(bundle.full),
        "preprocessing": json.dumps(preprocessing_constants(bundle.arch)),
        "calibration": json.dumps(bundle.calibration),
        "training": json.dumps(bundle.training, sort_keys=True),
        "metrics": json.dumps(bundle.metrics, sort_keys=True),
        "source": json.dumps(bundle.source, sort_keys=True),
        "created_at": bundle.created_at,
        "tensors_sha256": tensors_sha256(tensors),
    }
    atomic_save(tensors, metadata, Path(path))
    return Path(path)


def read_bundle(path: Path, verify: bool = True) -> Bundle:
    """A bundle file; with ``verify``, its tensors must hash to its recorded sha256."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    metadata = read_metadata(path, BUNDLE_FORMAT)
    tensors = load_file(path)
    if verify and tensors_sha256(tensors) != metadata.get("tensors_sha256"):
        raise CheckpointError(f"{path}: its tensors do not match its sha256; the file is corrupt")
    base = json_field(metadata, "base", path)
    bundle = Bundle(
        arch=metadata.get("arch", "?"),
        tensors=tensors,
        base=None if base is None else BaseRef(base["id"], base["sha256"]),
        calibration=json_field(metadata, "calibration", path),
        training=json_field(metadata, "training", path),
        metrics=json_field(metadata, "metrics", path),
        source=json_field(metadata, "source", path),
        created_at=metadata.get("created_at", ""),
    )
    try:
        bundle.check()
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return bundle


def bundle_from_model(
    model: LNCLIPDetector,
    base: BaseRef | None,
    calibration: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
) -> Bundle:
    """The bundle of a (trained) model: its tuned values over ``base``, or all of it if None."""
    tensors = model.tuned_state_dict() if base is not None else dict(model.state_dict())
    bundle = Bundle(
        arch=model.arch,
        tensors={k: v.detach().to("cpu", torch.float32) for k, v in tensors.items()},
        base=base,
        calibration=dict(calibration or NO_CALIBRATION),
        training=dict(training or {}),
        metrics=dict(metrics or {}),
        source=dict(source or {}),
    )
    bundle.check()
    return bundle


def model_from_state(arch: str, state: Mapping[str, torch.Tensor]) -> LNCLIPDetector:
    """The deepfake-detector model holding exactly ``state``, built without a wasted random
    initialisation."""
    with torch.device("meta"):
        model = LNCLIPDetector(arch)
    model = model.to_empty(device="cpu")
    model.reset_pixel_constants()
    model.load_state_dict(
        {k: v.to(torch.float32) for k, v in state.items()}, strict=True, assign=True
    )
    model.freeze_backbone()
    return model.eval()


def model_from_bundle(bundle: Bundle, base: BaseTower | None = None) -> LNCLIPDetector:
    """The deepfake-detector model a bundle describes; a tuned bundle loads over its verified
    base."""
    bundle.check()
    if bundle.full:
        return model_from_state(bundle.arch, bundle.tensors)
    assert bundle.base is not None
    if base is None:
        base = load_base(bundle.base.id, expected_sha256=bundle.base.sha256)
    elif base.sha256 != bundle.base.sha256:
        raise CheckpointError(
            f"the bundle was tuned on base {bundle.base.id} ({bundle.base.sha256}), not on "
            f"{base.name} ({base.sha256})"
        )
    if base.arch != bundle.arch:
        raise CheckpointError(f"base {base.name} is {base.arch}, the bundle is {bundle.arch}")
    return model_from_state(bundle.arch, {**base.tensors, **bundle.tensors})

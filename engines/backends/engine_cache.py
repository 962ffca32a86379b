"""On-disk cache of compiled engines: inductor's artefacts and one manifest per built engine.

A compiled engine is only valid for the weights, architecture, precision, GPU model and torch
version it was compiled for, so each such key gets its own inductor cache directory (FX graphs,
Triton kernels, autotuning results); the next start with the same key loads them instead of
compiling again. The manifest beside them records how the engine was built, how long a cold and
a warm start took, and the accuracy gate it passed or failed: ``detector.backend: auto`` reads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
COMPILED_SUBDIR = "compiled"


def device_name(device: torch.device) -> str:
    """The GPU's model name, or the CPU's: engines compiled for one do not fit another."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.processor() or platform.machine()}"


@dataclass(frozen=True)
class EngineKey:
    """What a compiled engine depends on; any change means compiling again."""

    weights: str
    """sha256 of the bundle's tensors (or of a model's state dict)."""
    arch: str
    precision: str
    device: str
    torch: str
    mode: str
    max_batch: int
    dynamic_batch: bool = False
    """One graph for every batch size (CUDA graphs still per bucket) instead of one each."""

    @property
    def id(self) -> str:
        """A readable, unique directory name for this key."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        shapes = "-dynamic" if self.dynamic_batch else ""
        return (f"{self.arch}-{self.precision}-{self.mode}{shapes}-b{self.max_batch}-"
                f"{digest[:12]}")

    def same_machine(self, weights: str, arch: str, device: str) -> bool:
        """Built for these weights on this GPU model with the running torch."""
        return (self.weights, self.arch, self.device, self.torch) == (
            weights, arch, device, torch.__version__)


def engine_key(weights: str, arch: str, precision: str, device: torch.device, mode: str,
               max_batch: int, dynamic_batch: bool = False) -> EngineKey:
    return EngineKey(weights=weights, arch=arch, precision=precision, device=device_name(device),
                     torch=torch.__version__, mode=mode, max_batch=max_batch,
                     dynamic_batch=dynamic_batch)


@dataclass
class EngineManifest:
    """One built engine: its key, its start times and its accuracy gate."""

    key: EngineKey
    built_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    cold_start_s: float | None = None
    """Compile and warm-up of every bucket with an empty cache."""
    warm_start_s: float | None = None
    """The same with this key's cache filled (the latest such start)."""
    buckets: list[int] = field(default_factory=list)
    gate: dict[str, Any] | None = None
    """The accuracy gate's numbers and verdict; None until one has run."""
    crops_per_s: float | None = None
    """Measured at max_batch when built; the reference eager engine's figure beside it."""
    eager_crops_per_s: float | None = None
    attention: list[str] = field(default_factory=list)
    fp8_layers: int = 0

    @property
    def passed(self) -> bool:
        return bool(self.gate and self.gate.get("passed"))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "id": self.key.id, "passed": self.passed}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineManifest:
        fields = {k: v for k, v in data.items() if k not in ("id", "passed", "key")}
        return cls(key=EngineKey(**data["key"]), **fields)


class EngineCache:
    """The compiled engines under one directory (the model store's engines folder by default)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / COMPILED_SUBDIR

    def engine_dir(self, key: EngineKey) -> Path:
        return self.root / key.id

    def inductor_dir(self, key: EngineKey) -> Path:
        return self.engine_dir(key) / "inductor"

    def is_warm(self, key: EngineKey) -> bool:
        """Whether a start with this key finds compiled artefacts to load."""
        directory = self.inductor_dir(key)
        return directory.is_dir() and any(directory.iterdir())

    @contextmanager
    def compiling(self, key: EngineKey) -> Iterator[Path]:
        """Inductor (and Triton under it) read and write this key's directory meanwhile."""
        from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

        directory = self.inductor_dir(key)
        directory.mkdir(parents=True, exist_ok=True)
        with temporary_cache_dir(str(directory)):
            yield directory

    def read(self, key: EngineKey) -> EngineManifest | None:
        return self._load(self.engine_dir(key) / MANIFEST)

    def write(self, manifest: EngineManifest) -> Path:
        path = self.engine_dir(manifest.key) / MANIFEST
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest.as_dict(), indent=2))
        tmp.replace(path)
        return path

    def manifests(self) -> list[EngineManifest]:
        """Every readable manifest, oldest first; unreadable ones are logged and skipped."""
        if not self.root.is_dir():
            return []
        found = [self._load(path) for path in sorted(self.root.glob(f"*/{MANIFEST}"))]
        return sorted((m for m in found if m is not None), key=lambda m: m.built_at)

    def _load(self, path: Path) -> EngineManifest | None:
        if not path.is_file():
            return None
        try:
            return EngineManifest.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring unreadable engine manifest %s: %s", path, exc)
            return None


def fastest_gated(manifests: list[EngineManifest], weights: str, arch: str,
                  device: str) -> EngineManifest | None:
    """The fastest engine for these weights on this GPU model that passed its gate and beat the
    eager engine it was measured against; None when no built engine qualifies."""
    usable = [m for m in manifests
              if m.key.same_machine(weights, arch, device) and m.passed
              and m.crops_per_s is not None
              and m.crops_per_s > (m.eager_crops_per_s or 0.0)]
    return max(usable, key=lambda m: m.crops_per_s or 0.0, default=None)

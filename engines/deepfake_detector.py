"""The deepfake detector a service runs: which bundle, whether it is trained at all, which backend.

``load_detector`` is the one entry point for everything that scores. It takes the configured
bundle, or the best installed one, and refuses to run without a trained detector unless random
weights are explicitly allowed; then the returned info says ``trained=False`` and carries the
warning that every scoring command must show. A bundle trained on synthetic data (``dfstream
data synth``) is trained but says ``synthetic=True`` and carries its own warning.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engines import store
from engines.backends import create_scorer
from engines.checkpoints.bundle import (
    NO_CALIBRATION,
    model_from_bundle,
    read_bundle,
    trained_on_synthetic,
    training_crop,
    weights_id,
)
from engines.checkpoints.catalog import BundleSummary, bundle_summary, installed_bundles
from engines.checkpoints.errors import CheckpointError
from engines.clip_detector import LNCLIPDetector, random_detector
from engines.errors import UserError
from engines.interfaces import CropScorer

log = logging.getLogger(__name__)

UNTRAINED_WARNING = (
    "UNTRAINED DETECTOR: no trained detector bundle is installed, so the crop scorer has random "
    "weights and every score is meaningless. Install one with `dfstream models pull` (or "
    "`dfstream models import`)."
)


SYNTHETIC_WARNING = (
    "SYNTHETIC DEMO MODEL: this detector was trained on synthetic face swaps of one photograph "
    "(`dfstream data synth`); it detects that generator's artefacts, not real deepfakes."
)


class DetectorUnavailable(UserError, RuntimeError):
    """No usable detector; the message says how to install one or allow an untrained one."""


class DetectorConfig(Protocol):
    """What load_detector reads (stream.config.DetectorSettings has these fields)."""

    @property
    def arch(self) -> str: ...
    @property
    def bundle(self) -> str | None: ...
    @property
    def backend(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def precision(self) -> str: ...
    @property
    def max_batch(self) -> int: ...
    @property
    def compile_mode(self) -> str: ...
    @property
    def compile_dynamic_batch(self) -> bool: ...
    @property
    def allow_untrained(self) -> bool: ...


@dataclass(frozen=True)
class DetectorInfo:
    arch: str
    trained: bool
    bundle: str | None
    bundle_path: str | None
    base: str | None
    calibration: dict[str, Any]
    backend: str
    device: str
    precision: str
    max_batch: int
    metrics: dict[str, Any] = field(default_factory=dict)
    weights_id: str | None = None
    """sha256 of the bundle's tensors (and its base's): names the weights for engine caches."""
    synthetic: bool = False
    """Trained on synthetic data only: its scores say nothing about real deepfakes."""
    crop: str | None = None
    """The face crop style (faces.crop) its training crops were made with, when it says."""

    @property
    def warning(self) -> str | None:
        """The loud line every scoring command prints when the scores mean nothing real."""
        if not self.trained:
            return UNTRAINED_WARNING
        return SYNTHETIC_WARNING if self.synthetic else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "warning": self.warning}


def best_installed_bundle(arch: str) -> BundleSummary | None:
    """The newest loadable bundle of ``arch``: calibrated ones first, then by creation time."""
    loadable = []
    for summary in installed_bundles(arch):
        if summary.base is not None and store.find_in_store(store.BASES_SUBDIR,
                                                            summary.base.id) is None:
            log.info("bundle %s skipped: its base %s is not installed", summary.name,
                     summary.base.id)
            continue
        loadable.append(summary)
    if not loadable:
        return None
    return max(loadable, key=lambda s: (s.calibration.get("method", "none") != "none",
                                        s.created_at))


def _bundle_path(reference: str) -> Path:
    """A bundle given as a path or as a store name."""
    candidate = Path(reference).expanduser()
    if candidate.suffix == ".safetensors" or candidate.is_file():
        if not candidate.is_file():
            raise DetectorUnavailable(f"detector bundle {candidate} does not exist")
        return candidate
    path = store.find_in_store(store.BUNDLES_SUBDIR, reference)
    if path is None:
        names = ", ".join(s.name for s in installed_bundles()) or "none"
        raise DetectorUnavailable(
            f"no detector bundle named {reference!r} is installed (installed: {names}); "
            "see `dfstream models list`"
        )
    return path


def load_model(config: DetectorConfig) -> tuple[LNCLIPDetector, DetectorInfo]:
    """The configured (or best installed) detector as a CPU float32 model, before any backend."""
    path: Path | None
    if config.bundle is not None:
        path = _bundle_path(config.bundle)
    else:
        best = best_installed_bundle(config.arch)
        path = best.path if best is not None else None
    if path is None:
        if not config.allow_untrained:
            raise DetectorUnavailable(
                f"no trained {config.arch} detector is installed. Run `dfstream models pull` "
                "(needs internet) or `dfstream models import ...`; to run anyway with random "
                "weights (scores meaningless), set detector.allow_untrained: true",
                setting="detector.allow_untrained",
            )
        log.warning(UNTRAINED_WARNING)
        model = random_detector(config.arch)
        info = DetectorInfo(config.arch, False, None, None, None, dict(NO_CALIBRATION),
                            "", "", "", config.max_batch)
        return model, info
    try:
        summary = bundle_summary(path)
        if summary.arch != config.arch and config.bundle is not None:
            raise DetectorUnavailable(
                f"bundle {path} is a {summary.arch} detector but detector.arch is "
                f"{config.arch}; set detector.arch: {summary.arch}"
            )
        bundle = read_bundle(path)
        model = model_from_bundle(bundle)
    except CheckpointError as exc:
        raise DetectorUnavailable(f"cannot load detector bundle {path}: {exc}") from None
    info = DetectorInfo(
        arch=bundle.arch,
        trained=True,
        bundle=path.stem,
        bundle_path=str(path),
        base=bundle.base.id if bundle.base else None,
        calibration=dict(bundle.calibration),
        backend="",
        device="",
        precision="",
        max_batch=config.max_batch,
        metrics=dict(bundle.metrics),
        weights_id=weights_id(bundle),
        synthetic=trained_on_synthetic(bundle.training),
        crop=training_crop(bundle.training),
    )
    return model, info


def load_detector(config: DetectorConfig) -> tuple[CropScorer, DetectorInfo]:
    """The crop scorer the service runs, and what it is (``info.trained`` False: random weights).

    Raises DetectorUnavailable when there is no trained detector and random weights are not
    allowed, or the configured bundle cannot be loaded; BackendUnavailable when the asked-for
    backend cannot run here.
    """
    model, info = load_model(config)
    scorer = create_scorer(
        model,
        backend=config.backend,
        device=config.device,
        precision=config.precision,
        max_batch=config.max_batch,
        model_key=info.weights_id,
        compile_mode=config.compile_mode,
        dynamic_batch=config.compile_dynamic_batch,
    )
    info = DetectorInfo(**{
        **asdict(info),
        "backend": scorer.name,
        "device": scorer.device,
        "precision": str(getattr(scorer, "precision", config.precision)),
    })
    return scorer, info

"""The synthetic demo detector and the two cameras it is shown on, for ``dfstream demo``.

Random weights would show a constant score. So, when no real detector is installed, the demo
trains once a ``tiny`` LN-tuned detector (``dfstream train``'s method on a random-init tower: no
CLIP weights ship here) on a SYNTHETIC set from ``dfstream data synth``, fits Platt scaling on
the set's val split, and caches it in the model store (``demo/<recipe>/``). Its cameras are
made by the same generator from an identity the set does not hold: a real clip and a face swap
of it. A tiny tower on random features separates this set only moderately (held-out video AUROC
about 0.8) and Platt scaling then keeps its probabilities modest, so the demo's alert thresholds
are chosen the way an operator would: on the val split, where the calibrated video means of
real and fake videos are best told apart (Youden's J), with ``exit`` a little below ``enter``.

What it detects is that generator's seams and colour mismatch on one photographed face: it is
not a deepfake detector. Its bundle says it was trained on synthetic data, so the service, the
API, the dashboard and the demo's table all show the SYNTHETIC DEMO MODEL banner.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines import store
from stream.config import Settings

DEMO_SUBDIR = "demo"
BUNDLE_NAME = "demo-synthetic-tiny.safetensors"
CAMERAS = ("real", "fake")

Progress = Callable[[str, int, int], None]
"""(phase, done, total): phases ``synthesise``, ``prepare``, ``train``, ``calibrate``, ``check``."""


@dataclass(frozen=True)
class DemoRecipe:
    """How the demo model and its cameras are made. Deterministic: the same recipe gives the
    same model on the same software; a change of recipe builds a new one."""

    videos: int = 160
    frames: int = 6
    data_seed: int = 7
    epochs: int = 15
    batch_size: int = 32
    lr: float = 0.1
    seed: int = 0
    camera_manipulation: str = "swap-blend"
    camera_fps: int = 15
    camera_seconds: int = 12
    camera_width: int = 320
    camera_height: int = 256

    @property
    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


EXIT_BELOW_ENTER = 0.1


@dataclass(frozen=True)
class DemoModel:
    bundle: Path
    cameras: dict[str, Path]
    report: dict[str, Any]
    """Validation and test metrics, calibration, thresholds and the cameras' mean p_fake."""
    cached: bool

    @property
    def thresholds(self) -> dict[str, float]:
        """``enter`` and ``exit`` for the demo's streams (chosen on the val split)."""
        chosen = self.report["thresholds"]
        return {"enter": float(chosen["enter"]), "exit": float(chosen["exit"])}


def youden_thresholds(labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """``enter`` where TPR - FPR is highest on these (video) scores, halfway to the next lower
    score so a small drift does not flip a video; ``exit`` EXIT_BELOW_ENTER below it."""
    from sklearn.metrics import roc_curve

    fpr, tpr, cuts = roc_curve(labels, scores)
    best = int(np.argmax(tpr - fpr))
    lower = scores[scores < cuts[best]]
    enter = float(cuts[best] if lower.size == 0 else (cuts[best] + lower.max()) / 2)
    enter = min(max(enter, 0.05), 0.99)
    return {"enter": round(enter, 4), "exit": round(max(0.0, enter - EXIT_BELOW_ENTER), 4),
            "chosen_on": "val video means of calibrated p_fake, Youden's J"}


def demo_cameras(recipe: DemoRecipe = DemoRecipe()) -> dict[str, Path]:
    """The two camera clips (real, fake), written once into the store's ``samples/``."""
    from stream.data.synth import SynthConfig, held_out_pair

    folder = store.writable_dir("samples") / f"demo-cameras-{recipe.key}"
    paths = {name: folder / f"{name}.mp4" for name in CAMERAS}
    if all(p.is_file() for p in paths.values()):
        return paths
    config = SynthConfig(videos=2, frames=recipe.camera_fps * recipe.camera_seconds,
                         fps=recipe.camera_fps, width=recipe.camera_width,
                         height=recipe.camera_height, seed=recipe.data_seed)
    partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder.parent))
    try:
        held_out_pair(partial, config, recipe.camera_manipulation)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)  # a crash never leaves half a pair behind
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return paths


def demo_model(
    settings: Settings, recipe: DemoRecipe = DemoRecipe(), progress: Progress | None = None
) -> DemoModel:
    """The cached demo model, or a new one built (about 1.5 minutes on two CPU cores)."""
    cameras = demo_cameras(recipe)
    folder = store.writable_dir(DEMO_SUBDIR) / recipe.key
    report_path = folder / "model.json"
    if report_path.is_file() and (folder / BUNDLE_NAME).is_file():
        return DemoModel(folder / BUNDLE_NAME, cameras, json.loads(report_path.read_text()),
                         cached=True)
    say = progress or (lambda _phase, _done, _total: None)
    work = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder.parent))
    try:
        report = _build(settings, recipe, work, cameras, say)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(work, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return DemoModel(folder / BUNDLE_NAME, cameras, report, cached=False)


def _build(
    settings: Settings, recipe: DemoRecipe, work: Path, cameras: dict[str, Path],
    say: Progress,
) -> dict[str, Any]:
    from engines.checkpoints.base import random_base
    from engines.checkpoints.bundle import model_from_bundle, save_bundle
    from engines.evaluate import evaluate, score_prepared
    from engines.metrics import video_means
    from engines.recalibrate import recalibrate
    from engines.training.crops import PreparedSet
    from engines.training.trainer import TrainConfig, train
    from stream.analysis import EVERY_FACE, Analyser
    from stream.data.prepare import prepare, prepare_settings
    from stream.data.synth import SynthConfig, synthesize
    from stream.video_score import score_video

    began = time.monotonic()
    written = iter(range(1, recipe.videos + 1))
    dataset = synthesize(
        work / "synth", SynthConfig(videos=recipe.videos, frames=recipe.frames,
                                    seed=recipe.data_seed),
        lambda _name: say("synthesise", next(written), recipe.videos))
    prepared_count = iter(range(1, recipe.videos + 1))
    summary = prepare(
        dataset.entries, Analyser.faces_only(settings), work / "prepared", frames=recipe.frames,
        workers=2, settings=prepare_settings(settings, work / "synth" / "manifest.csv", True),
        progress=lambda _name: say("prepare", next(prepared_count), recipe.videos))
    if summary.failed:
        raise RuntimeError(f"the demo set did not prepare: {summary.failed}")
    prepared = PreparedSet.open(work / "prepared")
    config = TrainConfig(arch="tiny", epochs=recipe.epochs, batch_size=recipe.batch_size,
                         lr=recipe.lr, augment=False, seed=recipe.seed)
    result = train(prepared, random_base("tiny", recipe.seed), config,
                   progress=lambda e, s, n, _loss: say("train", (e - 1) * n + s,
                                                       recipe.epochs * n))
    say("calibrate", 0, 1)
    calibrated = recalibrate(result.bundle, model_from_bundle(result.bundle), prepared,
                             split="val", method="platt")
    bundle_path = save_bundle(calibrated.bundle, work / BUNDLE_NAME)
    say("calibrate", 1, 1)

    detector = settings.detector.model_copy(update={"arch": "tiny", "bundle": str(bundle_path)})
    analyser, _info = Analyser.load(settings, EVERY_FACE, detector=detector)
    assert analyser.scorer is not None
    test = evaluate(score_prepared(prepared, "test", analyser.scorer), bootstrap_rounds=200)
    val = score_prepared(prepared, "val", analyser.scorer)
    thresholds = youden_thresholds(
        val.video_labels, video_means(val.p_fake, val.owners, len(val.videos)))
    seen = {}
    for done, (name, path) in enumerate(cameras.items(), start=1):
        seen[name] = score_video(path, analyser, frames=24).p_fake
        say("check", done, len(cameras))
    shutil.rmtree(work / "synth")
    shutil.rmtree(work / "prepared")
    report = {
        "synthetic": True,
        "recipe": asdict(recipe),
        "build_s": round(time.monotonic() - began, 1),
        "val": {**result.best_val, "epoch": result.best_epoch},
        "test": {"video_auroc": test["video"]["auroc"], "video_ap": test["video"]["ap"],
                 "videos": test["videos_evaluated"]},
        "calibration": calibrated.as_dict(),
        "thresholds": thresholds,
        "cameras_p_fake": seen,
    }
    (work / "model.json").write_text(json.dumps(report, indent=2))
    return report

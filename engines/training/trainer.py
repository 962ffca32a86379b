"""The LN-tuning loop: AdamW on the LayerNorms and the head, warm-up then cosine, the papers'
objective with slerp feature augmentation, paired real/fake batches, validation every epoch on
video-level AP and AUROC, the best epoch kept, resumable and deterministic by seed.

Every epoch draws its randomness from ``(seed, epoch)``, so a run resumed from its checkpoint
continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import special
from torchvision.transforms import v2

from engines.checkpoints.base import BaseTower
from engines.checkpoints.bundle import Bundle, bundle_from_model, model_from_state
from engines.clip_detector import LNCLIPDetector, arch_spec
from engines.errors import UserError
from engines.metrics import ranking_metrics, video_means
from engines.training import distributed
from engines.training.augment import augment_batch, training_augmentation
from engines.training.crops import PreparedSet, PreparedVideo
from engines.training.losses import Objective
from engines.training.sampling import PairedBatches
from engines.training.slerp import slerp_augment
from engines.training.tuning import TuningError, changed_frozen, check_trainable

CHECKPOINT_VERSION = 1
EVAL_BATCH = 256

Progress = Callable[[int, int, int, float], None]
"""(epoch, step within the epoch, steps per epoch, running loss)."""


class TrainingError(UserError, ValueError):
    """Training cannot start or resume; the message says what to change."""


@dataclass(frozen=True)
class TrainConfig:
    """The authors' defaults, except where a small CPU run needs less."""

    arch: str = "ViT-L-14"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-4
    min_lr: float = 1e-5
    warmup_epochs: float = 1.0
    weight_decay: float = 0.0
    ce: float = 1.0
    uniformity: float = 0.5
    alignment: float = 0.1
    label_smoothing: float = 0.0
    slerp: bool = True
    augment: bool = True
    seed: int = 0
    device: str = "cpu"

    def lr_at(self, step: int, steps_per_epoch: int) -> float:
        """Linear warm-up from ``min_lr`` over ``warmup_epochs``, then cosine to ``min_lr``."""
        warmup = round(self.warmup_epochs * steps_per_epoch)
        total = max(1, self.epochs * steps_per_epoch)
        if step < warmup:
            return self.min_lr + (self.lr - self.min_lr) * step / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * progress))


@dataclass
class EpochLog:
    epoch: int
    steps: int
    loss: dict[str, float]
    val: dict[str, float | int]
    lr: float
    seconds: float
    crops_per_s: float


@dataclass
class TrainResult:
    trainable: int
    changed_frozen: int
    history: list[EpochLog]
    best_epoch: int
    best_val: dict[str, float | int]
    steps: int
    bundle: Bundle
    resumed_from: int | None = None
    paired_fakes: int = 0
    train_crops: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _source_numbers(videos: list[PreparedVideo]) -> list[int | None]:
    """Per video the number of the real it was made from: a fake's ``source_id`` names the
    ``source_id`` of its real (which, for a real, is its own id unless the manifest says)."""
    number_of = {(v.source_id or v.id): i for i, v in enumerate(videos) if v.label == "real"}
    return [number_of.get(v.source_id) if v.label == "fake" else None for v in videos]


def initial_model(base: BaseTower, seed: int) -> LNCLIPDetector:
    """The base tower with a fresh head, drawn from ``seed``."""
    spec = arch_spec(base.arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = torch.nn.Linear(spec.width, 2)
    # Copies: the model takes its tensors over as they are, and training must not write the
    # trained LayerNorms back into the base (a second run would start from them).
    state = {name: tensor.clone() for name, tensor in base.tensors.items()}
    state.update({"head.weight": head.weight.detach(), "head.bias": head.bias.detach()})
    return model_from_state(base.arch, state)


@torch.no_grad()
def predict_raw(model: LNCLIPDetector, crops: np.ndarray, device: str) -> np.ndarray:
    """Uncalibrated softmax p_fake of each crop, in eval mode."""
    model.eval()
    out = []
    for i in range(0, len(crops), EVAL_BATCH):
        batch = torch.from_numpy(crops[i : i + EVAL_BATCH]).to(device)
        with _autocast(device):
            logits = model(batch)
        out.append(logits.float().cpu().numpy())
    logits_all = np.concatenate(out) if out else np.empty((0, 2), np.float32)
    return special.softmax(logits_all.astype(np.float64), axis=1)[:, 1]


def _autocast(device: str) -> torch.autocast:
    on_gpu = torch.device(device).type == "cuda"
    return torch.autocast("cuda" if on_gpu else "cpu", dtype=torch.bfloat16, enabled=on_gpu)


class TrainingForward(torch.nn.Module):
    """The training forward (features, slerp, head) as one module call, so that DDP, which
    hooks ``forward``, averages its gradients across processes."""

    def __init__(self, model: LNCLIPDetector, slerp: bool) -> None:
        super().__init__()
        self.model = model
        self.slerp = slerp

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.features(x)
        if self.slerp:
            features = slerp_augment(features, y, generator)
        return self.model.head(features), features


def train_step(
    model: LNCLIPDetector,
    optimiser: torch.optim.Optimizer,
    objective: Objective,
    crops: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    transform: v2.Transform | None,
    generator: torch.Generator,
    forward: torch.nn.Module | None = None,
) -> dict[str, float]:
    """One optimiser step on a batch of uint8 crops; the loss terms' values. ``forward``: the
    model's TrainingForward, under DDP when training runs in several processes."""
    device = config.device
    x = augment_batch(crops, transform) if transform is not None else crops
    y = labels.to(device)
    forward = forward if forward is not None else TrainingForward(model, config.slerp)
    with _autocast(device):
        logits, features = forward(x.to(device), y, generator)
    loss, parts = objective(logits, features, y)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return parts


def train(
    prepared: PreparedSet,
    base: BaseTower,
    config: TrainConfig,
    *,
    checkpoint: Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> TrainResult:
    """Train on the ``train`` split, validate on ``val``; returns the best epoch's bundle."""
    if base.arch != config.arch:
        raise TrainingError(f"base {base.name} is a {base.arch} tower, not {config.arch}")
    train_videos, val_videos = prepared.split("train"), prepared.split("val")
    if not train_videos or not val_videos:
        raise TrainingError(
            f"{prepared.root} needs train and val videos with faces; it has "
            f"{len(train_videos)} train and {len(val_videos)} val"
        )
    crops, targets, owners = prepared.arrays(train_videos)
    val_crops, _, val_owners = prepared.arrays(val_videos)
    val_labels = np.array([v.target for v in val_videos])
    batches = PairedBatches(targets, owners, _source_numbers(train_videos), config.batch_size)

    device = config.device
    workers = distributed.current()
    model = initial_model(base, config.seed).to(device)
    trainable = check_trainable(model)
    forward = distributed.parallel(TrainingForward(model, config.slerp), workers, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    objective = Objective(config.ce, config.uniformity, config.alignment, config.label_smoothing)
    transform = training_augmentation()

    history: list[EpochLog] = []
    best: tuple[float, int, dict[str, float | int], dict[str, torch.Tensor]] | None = None
    start_epoch, step, resumed_from = 1, 0, None
    if resume:
        state = _load_checkpoint(checkpoint, config, base)
        model.load_state_dict(state["tuned"], strict=False)
        optimiser.load_state_dict(state["optimiser"])
        history = [EpochLog(**h) for h in state["history"]]
        if state["best"] is not None:
            b = state["best"]
            best = (b["ap"], b["epoch"], b["val"], b["tuned"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        resumed_from = state["epoch"]

    steps_per_epoch = len(batches)
    for epoch in range(start_epoch, config.epochs + 1):
        rng = np.random.default_rng([config.seed, epoch])
        torch.manual_seed(config.seed * 1_000_003 + epoch)  # augmentation draws
        generator = torch.Generator().manual_seed(config.seed * 7919 + epoch)
        model.train()
        started = time.perf_counter()
        sums: dict[str, float] = {}
        seen = 0
        lr = config.lr
        for index, batch in enumerate(batches.epoch(rng)):
            lr = config.lr_at(step, steps_per_epoch)
            for group in optimiser.param_groups:
                group["lr"] = lr
            if len(batch) < workers.world:  # every process needs a row; all skip it alike
                continue
            mine = workers.shard(batch)
            parts = train_step(
                model, optimiser, objective, torch.from_numpy(crops[mine]),
                torch.from_numpy(targets[mine]), config,
                transform if config.augment else None, generator, forward,
            )
            step += 1
            seen += len(batch)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value
            if progress is not None:
                progress(epoch, index + 1, steps_per_epoch, sums["total"] / (index + 1))
        seconds = time.perf_counter() - started
        val_p = predict_raw(model, val_crops, device)
        metrics = ranking_metrics(val_labels, video_means(val_p, val_owners, len(val_videos)))
        log = EpochLog(
            epoch, steps_per_epoch, {k: v / steps_per_epoch for k, v in sums.items()},
            metrics.as_dict(), lr, round(seconds, 3), round(seen / seconds, 1),
        )
        history.append(log)
        if best is None or metrics.ap > best[0]:
            tuned = {k: v.detach().cpu().clone() for k, v in model.tuned_state_dict().items()}
            best = (metrics.ap, epoch, metrics.as_dict(), tuned)
        if checkpoint is not None and workers.main:
            _save_checkpoint(checkpoint, model, optimiser, epoch, step, history, best, config,
                             base)

    if best is None:
        raise TrainingError(
            f"nothing to train: the checkpoint is at epoch {start_epoch - 1} already; raise "
            "--epochs to continue"
        )
    model.load_state_dict(best[3], strict=False)
    model = model.to("cpu").float()
    changed = changed_frozen(model, base.tensors)
    if changed:
        raise TuningError(f"frozen tensors changed during training: {changed[:5]}")
    bundle = bundle_from_model(
        model,
        base.ref,
        training={**asdict(config), "best_epoch": best[1], "steps": step,
                  "train_videos": len(train_videos), "val_videos": len(val_videos),
                  "prepared": str(prepared.root), "prepared_settings": prepared.settings},
        metrics={"val_video": best[2]},
        source={"trained_by": "dfstream train", "base": base.name},
    )
    return TrainResult(
        trainable=trainable, changed_frozen=len(changed), history=history, best_epoch=best[1],
        best_val=best[2], steps=step, bundle=bundle, resumed_from=resumed_from,
        paired_fakes=batches.paired, train_crops=len(crops),
    )


def _save_checkpoint(
    path: Path,
    model: LNCLIPDetector,
    optimiser: torch.optim.Optimizer,
    epoch: int,
    step: int,
    history: list[EpochLog],
    best: tuple[float, int, dict[str, float | int], dict[str, torch.Tensor]] | None,
    config: TrainConfig,
    base: BaseTower,
) -> None:
    state = {
        "version": CHECKPOINT_VERSION,
        "config": asdict(config),
        "base_sha256": base.sha256,
        "epoch": epoch,
        "step": step,
        "tuned": {k: v.detach().cpu() for k, v in model.tuned_state_dict().items()},
        "optimiser": optimiser.state_dict(),
        "history": [asdict(h) for h in history],
        "best": None if best is None else {
            "ap": best[0], "epoch": best[1], "val": best[2], "tuned": best[3]
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    torch.save(state, tmp)
    tmp.replace(path)


RESUMABLE_CHANGES = {"epochs"}
"""Settings a resumed run may change (to train further); any other change would make the
resumed run a different experiment."""


def _load_checkpoint(path: Path | None, config: TrainConfig, base: BaseTower) -> dict[str, Any]:
    if path is None or not path.is_file():
        raise TrainingError(f"no training checkpoint at {path} to resume from")
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("version") != CHECKPOINT_VERSION:
        raise TrainingError(f"{path} is not a dfstream training checkpoint of this version")
    if state["base_sha256"] != base.sha256:
        raise TrainingError(f"{path} was trained on another base ({state['base_sha256'][:12]})")
    saved = state["config"]
    differs = sorted(k for k, v in asdict(config).items()
                     if saved.get(k) != v and k not in RESUMABLE_CHANGES | {"device"})
    if differs:
        raise TrainingError(
            f"{path} was trained with other settings ({', '.join(differs)}); resume with the "
            "same settings, or start afresh without --resume"
        )
    return state

"""What LN-tuning may change, checked: exactly the tower's LayerNorms and the head train, and
every other tensor leaves training bit-identical to the base it started from."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from engines.clip_detector import LNCLIPDetector


class TuningError(RuntimeError):
    """The trainable set is not the papers', or a frozen tensor changed."""


def check_trainable(model: LNCLIPDetector) -> int:
    """The number of trainable values, after checking they are exactly the LayerNorms of the
    vision tower and the head (ViT-L/14: 50 LayerNorms, 104,450 values)."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    expected = set(model.trainable_names())
    if trainable != expected:
        raise TuningError(
            f"the trainable set is not LN + head: unexpected {sorted(trainable - expected)[:5]}, "
            f"missing {sorted(expected - trainable)[:5]}"
        )
    layernorms = sum(1 for _ in model.layernorm_modules())
    if layernorms != model.spec.layernorms:
        raise TuningError(f"{layernorms} LayerNorms in the tower, expected {model.spec.layernorms}")
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if count != model.spec.trainable:
        raise TuningError(f"{count} trainable values, expected {model.spec.trainable}")
    return count


def changed_frozen(model: LNCLIPDetector, base: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of frozen tower tensors that are no longer bit-identical to ``base``."""
    changed = []
    for name, tensor in model.frozen_state_dict().items():
        reference = base.get(name)
        if reference is None or not torch.equal(tensor.cpu(), reference.to(tensor.dtype)):
            changed.append(name)
    return changed

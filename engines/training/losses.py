"""The papers' objective on L2-normalised features: cross-entropy + uniformity + alignment.

Uniformity spreads features over the sphere (a detector that collapses them generalises badly);
alignment pulls same-label features together. Weights default to the authors' later code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

UNIFORMITY_T = 2.0
UNIFORMITY_FLOOR = 1e-6


def uniformity_loss(features: torch.Tensor, t: float = UNIFORMITY_T) -> torch.Tensor:
    """log of the mean over all pairs i<j of exp(-t ||z_i - z_j||^2); the mean is clamped at
    1e-6 before the log so a spread-out batch cannot drive the loss to -inf."""
    n = features.shape[0]
    if n < 2:
        return features.new_zeros(())
    distances = torch.pdist(features.float(), p=2).pow(2)
    return torch.log(torch.exp(-t * distances).mean().clamp_min(UNIFORMITY_FLOOR))


def alignment_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared distance (not halved) over pairs i<j with the same label; 0 without pairs."""
    z = features.float()
    distances = torch.cdist(z, z).pow(2)
    same = labels[:, None] == labels[None, :]
    upper = torch.triu(torch.ones_like(same), diagonal=1)
    mask = same & upper
    if not bool(mask.any()):
        return z.new_zeros(())
    return distances[mask].mean()


@dataclass(frozen=True)
class Objective:
    ce: float = 1.0
    uniformity: float = 0.5
    alignment: float = 0.1
    label_smoothing: float = 0.0

    def __call__(
        self, logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted total and each term's value (for logs)."""
        ce = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        uni = uniformity_loss(features)
        ali = alignment_loss(features, labels)
        total = self.ce * ce + self.uniformity * uni + self.alignment * ali
        parts = {"ce": ce, "uniformity": uni, "alignment": ali, "total": total}
        return total, {name: float(value.detach()) for name, value in parts.items()}

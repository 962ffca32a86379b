"""Slerp feature augmentation: each feature moves along the sphere towards a random partner of
its own class, so the head sees the space between same-class samples (training only)."""

from __future__ import annotations

import torch

DOT_LIMIT = 1.0 - 1e-7


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between unit rows of ``a`` and ``b`` at ``t`` (N,) in [0, 1]."""
    dot = (a * b).sum(-1).clamp(-DOT_LIMIT, DOT_LIMIT)
    omega = torch.acos(dot)
    sin = torch.sin(omega)
    t = t.to(a.dtype)
    wa = torch.sin((1 - t) * omega) / sin
    wb = torch.sin(t * omega) / sin
    return wa[:, None] * a + wb[:, None] * b


def slerp_augment(
    features: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Features with each one replaced by its slerp towards a same-class partner drawn from a
    random permutation of that class, t ~ U[0, 1] per sample; batch size unchanged. A class
    with fewer than two samples is left as it is."""
    out = features.clone()
    for label in labels.unique():
        members = torch.nonzero(labels == label, as_tuple=True)[0]
        if len(members) < 2:
            continue
        order = torch.randperm(len(members), generator=generator, device="cpu")
        partners = members[order.to(members.device)]
        t = torch.rand(len(members), generator=generator, device="cpu").to(features.device)
        out[members] = slerp(features[members], features[partners], t)
    return out

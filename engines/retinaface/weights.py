"""RetinaFace weights: reading, checking and fitting them to the network.

Weights come as a PyTorch state dict in biubug6's layout (``.pth``) or as an ONNX export of that
architecture with batch norms folded into the convolutions (``.onnx``, e.g. the published
MobileNet-0.25 model of the store); the ONNX convolutions are mapped onto the network by their
node names. At load time RGB-to-BGR is folded into the first convolution and batch norms into
their convolutions, so the network runs on RGB pixels with no extra work per frame.
"""

from __future__ import annotations

import itertools
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engines import artifacts, store
from engines.retinaface.network import ARCHS, RetinaFace

log = logging.getLogger(__name__)

ARTIFACT_OF_ARCH = {arch: f"retinaface-{arch}" for arch in ARCHS}
"""The model-store artifact holding each backbone's published weights."""


@dataclass(frozen=True)
class WeightsInfo:
    """Which file the weights came from, and whether a known checksum vouched for it."""

    path: Path
    sha256: str
    registered: bool
    """True when the file is a model-store artifact verified against its published sha256."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a RetinaFace checkpoint, without a DataParallel ``module.`` prefix."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise store.StoreError(f"weights file {path} does not exist") from None
    except Exception as exc:  # torch raises many types for a damaged file
        raise store.StoreError(
            f"{path} cannot be read as PyTorch weights ({type(exc).__name__}: {exc}); "
            "the file is corrupt or not a checkpoint"
        ) from None
    if isinstance(loaded, dict) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise store.StoreError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


FOLDED_CONVS: tuple[tuple[re.Pattern[str], str, str | None], ...] = (
    (re.compile(r"/fx/stage1/stage1\.0/stage1\.0\.0/Conv"), "body.stage1.0.0", "body.stage1.0.1"),
    (re.compile(r"/fx/(stage\d)/\1\.(\d+)/\1\.\2\.0/\1\.\2\.0\.0/Conv"),
     r"body.\1.\2.0", r"body.\1.\2.1"),
    (re.compile(r"/fx/(stage\d)/\1\.(\d+)/\1\.\2\.1/\1\.\2\.1\.0/Conv"),
     r"body.\1.\2.3", r"body.\1.\2.4"),
    (re.compile(r"/fpn/((?:output|merge)\d)/\1\.0/Conv"), r"fpn.\1.0", r"fpn.\1.1"),
    # The exporter repeats a module called twice (SSH's conv5X5_1) as "<name>.0_1".
    (re.compile(r"/(ssh\d)/(\w+)/\2\.0(?:_\d+)?/Conv"), r"\1.\2.0", r"\1.\2.1"),
    (re.compile(r"/class_head/class_head\.(\d)/Conv"), r"ClassHead.\1.conv1x1", None),
    (re.compile(r"/bbox_head/bbox_head\.(\d)/Conv"), r"BboxHead.\1.conv1x1", None),
    (re.compile(r"/landmark_head/landmark_head\.(\d)/Conv"), r"LandmarkHead.\1.conv1x1", None),
)
"""ONNX Conv node names of the folded MobileNet-0.25 export -> (our convolution, the batch norm
that follows it in biubug6's layout, or None for the heads, whose convolutions have biases)."""


def state_dict_from_folded_onnx(
    model: bytes, arch: str = "mobilenet0.25", source: str = "the ONNX model"
) -> dict[str, torch.Tensor]:
    """A biubug6-layout state dict from an ONNX export with batch norms folded into its convs.

    Each folded convolution keeps its weight; its bias goes into the batch norm after it, made an
    identity (scale 1, mean 0, variance ``1 - eps`` so that ``sqrt(var + eps) == 1``), so that
    ``build_network`` checks and fuses it like any checkpoint.
    """
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load_model_from_string(model).graph
    except Exception as exc:  # protobuf raises DecodeError and others for a damaged file
        raise store.StoreError(
            f"{source} cannot be read as an ONNX model ({type(exc).__name__}: {exc})"
        ) from None
    tensors = {init.name: init for init in graph.initializer}
    aliases = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "Identity"}

    def constant(name: str) -> torch.Tensor:
        seen = 0
        while name in aliases and seen < len(aliases):
            name, seen = aliases[name], seen + 1
        if name not in tensors:
            raise store.StoreError(f"{source}: convolution input {name} is not a stored tensor")
        return torch.from_numpy(numpy_helper.to_array(tensors[name]).copy())

    template = dict(RetinaFace(arch).named_modules())
    folded: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    state: dict[str, torch.Tensor] = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        match, conv, norm = next(
            ((m, c, n) for pattern, c, n in FOLDED_CONVS if (m := pattern.fullmatch(node.name))),
            (None, "", None),
        )
        if match is None:
            raise store.StoreError(
                f"{source}: convolution {node.name!r} does not map onto RetinaFace {arch}"
            )
        if len(node.input) != 3:
            raise store.StoreError(
                f"{source}: convolution {node.name!r} has no bias; expected folded batch norms"
            )
        conv = match.expand(conv)
        weight, bias = constant(node.input[1]), constant(node.input[2])
        if conv in folded:
            if not all(torch.equal(a, b) for a, b in zip(folded[conv], (weight, bias),
                                                          strict=True)):
                raise store.StoreError(
                    f"{source}: two convolutions map onto {conv} with different weights"
                )
            continue
        folded[conv] = (weight, bias)
        state[f"{conv}.weight"] = weight
        if norm is None:
            state[f"{conv}.bias"] = bias
            continue
        norm = match.expand(norm)
        module = template.get(norm)
        if not isinstance(module, nn.BatchNorm2d):
            raise store.StoreError(
                f"{source}: {node.name!r} maps onto {norm}, which is not a batch norm of "
                f"RetinaFace {arch}"
            )
        channels = bias.shape[0]
        state[f"{norm}.weight"] = torch.ones(channels)
        state[f"{norm}.bias"] = bias
        state[f"{norm}.running_mean"] = torch.zeros(channels)
        state[f"{norm}.running_var"] = torch.full((channels,), 1.0 - module.eps)
        state[f"{norm}.num_batches_tracked"] = torch.tensor(0)
    return state


def read_weights(path: Path, arch: str) -> dict[str, torch.Tensor]:
    """The state dict of a weights file: a folded ONNX export (``.onnx``) or a checkpoint."""
    if path.suffix.lower() == ".onnx":
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise store.StoreError(f"weights file {path} does not exist") from None
        return state_dict_from_folded_onnx(data, arch, source=str(path))
    return read_state_dict(path)


def build_network(
    arch: str, state_dict: dict[str, torch.Tensor] | None, source: str = ""
) -> RetinaFace:
    """The network in eval mode with RGB input folded in and batch norms fused.

    ``state_dict=None`` keeps random weights (for tests of the plumbing only).
    """
    net = RetinaFace(arch)
    if state_dict is not None:
        expected = net.state_dict()
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        mismatched = sorted(
            k for k in set(expected) & set(state_dict) if expected[k].shape != state_dict[k].shape
        )
        if missing or unexpected or mismatched:
            detail = "; ".join(
                f"{label} {len(keys)} (e.g. {keys[0]})"
                for label, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("wrong shape", mismatched))
                if keys
            )
            raise store.StoreError(
                f"{source or 'the state dict'} does not hold RetinaFace {arch} weights: {detail}"
            )
        net.load_state_dict(state_dict)
    net.eval()
    with torch.no_grad():
        stem = net.body.stem
        stem.weight.copy_(stem.weight.flip(1))  # BGR -> RGB input channels
    _fuse_batch_norms(net)
    return net


def load_network(
    arch: str = "mobilenet0.25", weights: Path | None = None, sha256: str | None = None
) -> tuple[RetinaFace, WeightsInfo]:
    """The network with published weights: from the model store, or from an explicit file
    (a biubug6-layout ``.pth`` checkpoint or a folded ``.onnx`` export).

    An explicit file is checked against ``sha256`` when given; otherwise its sha256 is logged
    (and returned) so that it can be pinned.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown RetinaFace backbone {arch!r}; known: {', '.join(ARCHS)}")
    if weights is None:
        art = artifacts.ARTIFACTS.lookup(ARTIFACT_OF_ARCH[arch])
        path = artifacts.resolve(art.name)
        info = WeightsInfo(path, art.sha256, registered=True)
    else:
        path = Path(weights)
        if not path.is_file():
            raise store.StoreError(f"weights file {path} does not exist")
        digest = store.sha256_of(path)
        if sha256 is not None and digest != sha256.lower():
            raise store.StoreError(
                f"{path} has sha256 {digest}, expected {sha256.lower()}: "
                "the file is corrupt or a different model"
            )
        if sha256 is None:
            log.warning("RetinaFace %s weights %s are unverified: sha256 %s", arch, path, digest)
        info = WeightsInfo(path, digest, registered=False)
    return build_network(arch, read_weights(path, arch), source=str(path)), info


def _fuse_batch_norms(module: nn.Module) -> None:
    """Fold every eval-mode BatchNorm into the convolution before it."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def pairs(parent: nn.Module) -> list[tuple[str, str]]:
        if isinstance(parent, nn.Sequential):
            return list(itertools.pairwise(name for name, _ in parent.named_children()))
        found = []
        for i in range(1, 4):  # ResNet's conv1/bn1 ... conv3/bn3
            if hasattr(parent, f"conv{i}") and hasattr(parent, f"bn{i}"):
                found.append((f"conv{i}", f"bn{i}"))
        return found

    for parent in list(module.modules()):
        for conv_name, bn_name in pairs(parent):
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(parent, bn_name, nn.Identity())

"""RetinaFace face detector (biubug6's architecture), batched over images of any sizes.

Weights come as a PyTorch state dict in biubug6's layout (``.pth``) or as an ONNX export of that
architecture with batch norms folded into the convolutions (``.onnx``, e.g. the published
MobileNet-0.25 model of the store); the ONNX convolutions are mapped onto the network by their
node names.

Images are padded, never resized, to a canvas whose sides are the next multiples of 32 (every
feature map is then an exact power-of-two reduction of the input); the padding holds the mean
colour, which normalises to zero. Images of one call are grouped by that canvas size and each
group runs as one batch, so an image gives the same boxes alone or in any batch: a larger
canvas would change what the network sees beyond the image's bottom and right edges.

The network takes uint8 NHWC pixels and normalises them on the device (4x fewer bytes to copy
than float32). RGB-to-BGR is folded into the first convolution and batch norms into their
convolutions at load time. Priors are cached per canvas size and device; decoding, NMS
(``torchvision.ops.batched_nms``) and the split per image run on the device, with one copy
back to the host per call.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops import batched_nms

from engines import store
from engines.devices import resolve_device
from engines.interfaces import FaceDetection

log = logging.getLogger(__name__)

MIN_SIZES = ((16, 32), (64, 128), (256, 512))
"""Prior box sides in pixels, per feature level."""
STEPS = (8, 16, 32)
"""Feature strides of the three levels."""
VARIANCES = (0.1, 0.2)
MEAN_BGR = (104, 117, 123)
"""The training input mean; the network saw BGR minus this."""
MEAN_RGB = MEAN_BGR[::-1]
CANVAS_ALIGN = 32
"""Canvas sides are multiples of the coarsest stride."""
MIN_IMAGE_SIDE = 2

ARCHS = ("mobilenet0.25", "resnet50")
ARTIFACT_OF_ARCH = {arch: f"retinaface-{arch}" for arch in ARCHS}


# --- network (module and parameter names follow the published state dicts) ---------------------


def _conv_bn(
    cin: int, cout: int, *, kernel: int = 3, stride: int = 1, leaky: float | None = 0.0,
    groups: int = 1,
) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if leaky is not None:
        layers.append(nn.LeakyReLU(leaky, inplace=True))
    return layers


def _depthwise_separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        *_conv_bn(cin, cin, stride=stride, leaky=0.1, groups=cin),
        *_conv_bn(cin, cout, kernel=1, leaky=0.1),
    )


class _MobileNetBody(nn.Module):
    """MobileNet-0.25 up to stride 32; returns the stride 8, 16 and 32 features."""

    out_channels = (64, 128, 256)

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            nn.Sequential(*_conv_bn(3, 8, stride=2, leaky=0.1)),
            _depthwise_separable(8, 16, 1),
            _depthwise_separable(16, 32, 2),
            _depthwise_separable(32, 32, 1),
            _depthwise_separable(32, 64, 2),
            _depthwise_separable(64, 64, 1),
        )
        self.stage2 = nn.Sequential(
            _depthwise_separable(64, 128, 2),
            *(_depthwise_separable(128, 128, 1) for _ in range(5)),
        )
        self.stage3 = nn.Sequential(
            _depthwise_separable(128, 256, 2),
            _depthwise_separable(256, 256, 1),
        )

    @property
    def stem(self) -> nn.Conv2d:
        first = self.stage1[0]
        assert isinstance(first, nn.Sequential) and isinstance(first[0], nn.Conv2d)
        return first[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        return c3, c4, self.stage3(c4)


class _ResNet50Body(torchvision.models.ResNet):
    """torchvision's ResNet-50 up to layer4; returns the stride 8, 16 and 32 features."""

    out_channels = (512, 1024, 2048)

    def __init__(self) -> None:
        super().__init__(torchvision.models.resnet.Bottleneck, [3, 4, 6, 3])
        del self.avgpool, self.fc

    @property
    def stem(self) -> nn.Conv2d:
        return self.conv1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c3 = self.layer2(self.layer1(x))
        c4 = self.layer3(c3)
        return c3, c4, self.layer4(c4)


class _FPN(nn.Module):
    def __init__(self, in_channels: Sequence[int], out: int) -> None:
        super().__init__()
        leaky = 0.1 if out <= 64 else 0.0
        self.output1 = nn.Sequential(*_conv_bn(in_channels[0], out, kernel=1, leaky=leaky))
        self.output2 = nn.Sequential(*_conv_bn(in_channels[1], out, kernel=1, leaky=leaky))
        self.output3 = nn.Sequential(*_conv_bn(in_channels[2], out, kernel=1, leaky=leaky))
        self.merge1 = nn.Sequential(*_conv_bn(out, out, leaky=leaky))
        self.merge2 = nn.Sequential(*_conv_bn(out, out, leaky=leaky))

    def forward(
        self, features: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p3, p4, p5 = (self.output1(features[0]), self.output2(features[1]),
                      self.output3(features[2]))
        p4 = self.merge2(p4 + F.interpolate(p5, size=p4.shape[-2:], mode="nearest"))
        p3 = self.merge1(p3 + F.interpolate(p4, size=p3.shape[-2:], mode="nearest"))
        return p3, p4, p5


class _SSH(nn.Module):
    """Context module: parallel 3x3, 5x5 and 7x7 receptive fields (stacked 3x3 convolutions)."""

    def __init__(self, cin: int, out: int) -> None:
        super().__init__()
        leaky = 0.1 if out <= 64 else 0.0
        self.conv3X3 = nn.Sequential(*_conv_bn(cin, out // 2, leaky=None))
        self.conv5X5_1 = nn.Sequential(*_conv_bn(cin, out // 4, leaky=leaky))
        self.conv5X5_2 = nn.Sequential(*_conv_bn(out // 4, out // 4, leaky=None))
        self.conv7X7_2 = nn.Sequential(*_conv_bn(out // 4, out // 4, leaky=leaky))
        self.conv7x7_3 = nn.Sequential(*_conv_bn(out // 4, out // 4, leaky=None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5 = self.conv5X5_1(x)
        return F.relu(torch.cat(
            [self.conv3X3(x), self.conv5X5_2(branch5), self.conv7x7_3(self.conv7X7_2(branch5))],
            dim=1,
        ))


class _Head(nn.Module):
    def __init__(self, cin: int, values_per_anchor: int, anchors: int = 2) -> None:
        super().__init__()
        self.values = values_per_anchor
        self.conv1x1 = nn.Conv2d(cin, anchors * values_per_anchor, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.values)


class RetinaFace(nn.Module):
    """The network: normalised NCHW float in; box deltas, face scores, landmark deltas out.

    Outputs per prior, in prior order: ``loc`` (B, P, 4), ``scores`` (B, P) face probability,
    ``landmarks`` (B, P, 10).
    """

    def __init__(self, arch: str) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown RetinaFace backbone {arch!r}; known: {', '.join(ARCHS)}")
        self.arch = arch
        self.body: _MobileNetBody | _ResNet50Body = (
            _MobileNetBody() if arch == "mobilenet0.25" else _ResNet50Body()
        )
        width = 64 if arch == "mobilenet0.25" else 256
        self.fpn = _FPN(self.body.out_channels, width)
        self.ssh1 = _SSH(width, width)
        self.ssh2 = _SSH(width, width)
        self.ssh3 = _SSH(width, width)
        self.ClassHead = nn.ModuleList(_Head(width, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(width, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(_Head(width, 10) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p3, p4, p5 = self.fpn(self.body(x))
        features = (self.ssh1(p3), self.ssh2(p4), self.ssh3(p5))
        loc = torch.cat([head(f) for head, f in zip(self.BboxHead, features, strict=True)], 1)
        logits = torch.cat([head(f) for head, f in zip(self.ClassHead, features, strict=True)], 1)
        marks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features, strict=True)], 1)
        return loc, logits.softmax(dim=-1)[..., 1], marks


class Uint8RetinaFace(nn.Module):
    """RetinaFace taking uint8 RGB NHWC pixels, normalised inside (after the copy to device)."""

    def __init__(self, net: RetinaFace) -> None:
        super().__init__()
        self.net = net
        self.mean: torch.Tensor
        self.register_buffer(
            "mean", torch.tensor(MEAN_RGB, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # The NHWC -> NCHW permute is a view with channels-last strides: no copy.
        x = images.permute(0, 3, 1, 2).to(self.mean.dtype) - self.mean
        return self.net(x)


# --- weights ------------------------------------------------------------------------------------


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
        path = store.resolve(ARTIFACT_OF_ARCH[arch])
        info = WeightsInfo(path, store.artifact(ARTIFACT_OF_ARCH[arch]).sha256, registered=True)
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


# --- priors, decoding, post-processing ----------------------------------------------------------


def prior_boxes(height: int, width: int) -> torch.Tensor:
    """(P, 4) priors as centre x, centre y, width, height in pixels, in the network's order."""
    levels = []
    for step, sizes in zip(STEPS, MIN_SIZES, strict=True):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        ys, xs = torch.meshgrid(
            (torch.arange(rows, dtype=torch.float32) + 0.5) * step,
            (torch.arange(cols, dtype=torch.float32) + 0.5) * step,
            indexing="ij",
        )
        centres = torch.stack([xs, ys], dim=-1).reshape(-1, 1, 2).expand(-1, len(sizes), 2)
        sides = torch.tensor(sizes, dtype=torch.float32).view(1, -1, 1).expand(rows * cols, -1, 2)
        levels.append(torch.cat([centres, sides], dim=-1).reshape(-1, 4))
    return torch.cat(levels)


@lru_cache(maxsize=64)
def _cached_priors(height: int, width: int, device: str) -> torch.Tensor:
    return prior_boxes(height, width).to(device)


def decode(
    loc: torch.Tensor, landmarks: torch.Tensor, priors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (N, 4) x1 y1 x2 y2 and landmarks (N, 5, 2) in pixels from deltas and priors."""
    centres, sides = priors[:, :2], priors[:, 2:]
    box_centres = centres + loc[:, :2] * VARIANCES[0] * sides
    box_sides = sides * torch.exp(loc[:, 2:] * VARIANCES[1])
    boxes = torch.cat([box_centres - box_sides / 2, box_centres + box_sides / 2], dim=1)
    points = centres[:, None, :] + landmarks.reshape(-1, 5, 2) * VARIANCES[0] * sides[:, None, :]
    return boxes, points


@dataclass(frozen=True)
class DetectionOptions:
    confidence: float = 0.8
    nms_iou: float = 0.4
    pre_nms_top_k: int = 1000
    """Candidates per image considered for NMS, best first."""
    max_per_image: int = 256

    def __post_init__(self) -> None:
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must lie in (0, 1), got {self.confidence}")
        if not 0 < self.nms_iou < 1:
            raise ValueError(f"nms_iou must lie in (0, 1), got {self.nms_iou}")
        if self.pre_nms_top_k < 1 or self.max_per_image < 1:
            raise ValueError("pre_nms_top_k and max_per_image must be at least 1")


def postprocess(
    loc: torch.Tensor,
    scores: torch.Tensor,
    landmarks: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    options: DetectionOptions,
) -> list[list[FaceDetection]]:
    """Per-image detections from a batch's raw outputs; ``sizes`` are each image's (h, w)."""
    batch, count = scores.shape
    device = scores.device
    priors = _cached_priors(*_canvas_of(sizes), str(device))
    if priors.shape[0] != count:
        raise RuntimeError(f"network gave {count} priors, expected {priors.shape[0]}")
    top_scores, top_index = scores.float().topk(min(options.pre_nms_top_k, count), dim=1)
    image_index, rank = (top_scores > options.confidence).nonzero(as_tuple=True)
    prior_index = top_index[image_index, rank]
    boxes, points = decode(
        loc[image_index, prior_index].float(), landmarks[image_index, prior_index].float(),
        priors[prior_index],
    )
    chosen = top_scores[image_index, rank]
    # Drop boxes centred in another image's padding before they can suppress anything.
    limits = torch.tensor([(w, h) for h, w in sizes], dtype=torch.float32, device=device)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = (centres < limits[image_index]).all(dim=1)
    boxes, points, chosen, image_index = (
        boxes[inside], points[inside], chosen[inside], image_index[inside]
    )
    keep = batched_nms(boxes, chosen, image_index, options.nms_iou)  # score order
    packed = torch.cat(
        [boxes[keep], chosen[keep, None], points[keep].reshape(-1, 10),
         image_index[keep, None].float()],
        dim=1,
    ).cpu().numpy()
    results: list[list[FaceDetection]] = [[] for _ in range(batch)]
    for row in packed:
        faces = results[int(row[15])]
        if len(faces) < options.max_per_image:
            faces.append(FaceDetection(
                box=row[0:4].copy(), score=float(row[4]), landmarks=row[5:15].reshape(5, 2).copy()
            ))
    return results


# --- batching -----------------------------------------------------------------------------------


def check_image(image: object, index: int = 0) -> np.ndarray:
    """The image if it is HxWx3 uint8 RGB; otherwise an error that names what is wrong."""
    label = f"image {index}"
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{label}: expected a numpy array, got {type(image).__name__}")
    if image.size == 0:
        raise ValueError(f"{label} is empty (shape {image.shape})")
    if image.dtype != np.uint8:
        raise ValueError(f"{label}: expected uint8 RGB pixels, got dtype {image.dtype}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 2, 4)):
        kind = "RGBA" if image.ndim == 3 and image.shape[2] == 4 else "grayscale"
        raise ValueError(
            f"{label}: expected an HxWx3 RGB image, got shape {image.shape} ({kind}); "
            "convert it to RGB first (e.g. cv2.cvtColor)"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{label}: expected an HxWx3 RGB image, got shape {image.shape}")
    if image.shape[0] < MIN_IMAGE_SIDE or image.shape[1] < MIN_IMAGE_SIDE:
        raise ValueError(
            f"{label}: {image.shape[1]}x{image.shape[0]} pixels is too small to search for faces"
        )
    return image


def _align(side: int) -> int:
    return -(-side // CANVAS_ALIGN) * CANVAS_ALIGN


def _canvas_of(sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    return _align(max(h for h, _ in sizes)), _align(max(w for _, w in sizes))


def pack(images: Sequence[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
    """Images top-left aligned on one (B, H, W, 3) uint8 canvas padded with the mean colour."""
    height, width = _canvas_of([img.shape[:2] for img in images])
    shape = (len(images), height, width, 3)
    canvas = out if out is not None and out.shape == shape else np.empty(shape, np.uint8)
    mean = np.array(MEAN_RGB, np.uint8)
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        canvas[i, :h, :w] = img
        canvas[i, :h, w:] = mean
        canvas[i, h:] = mean
    return canvas


RawOutputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class BatchedDetector:
    """FaceDetector plumbing shared by the backends: validation, batching, post-processing.

    Images are grouped by canvas size and run in chunks of at most ``max_batch``. A backend
    supplies ``_infer`` from a packed uint8 canvas to raw outputs.
    """

    name: str
    device: str

    def __init__(self, options: DetectionOptions, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.options = options
        self.max_batch = max_batch

    def _infer(self, canvas: np.ndarray) -> RawOutputs:
        raise NotImplementedError

    def _canvas_buffer(self, shape: tuple[int, ...]) -> np.ndarray | None:
        return None

    def detect(self, images: Sequence[np.ndarray]) -> list[list[FaceDetection]]:
        """One list per image, highest score first, in that image's pixel coordinates."""
        checked = [check_image(img, i) for i, img in enumerate(images)]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(checked):
            groups.setdefault(_canvas_of([img.shape[:2]]), []).append(i)
        results: list[list[FaceDetection]] = [[] for _ in checked]
        for (height, width), members in groups.items():
            for start in range(0, len(members), self.max_batch):
                chunk = members[start:start + self.max_batch]
                group = [checked[i] for i in chunk]
                sizes = [img.shape[:2] for img in group]
                canvas = pack(group, self._canvas_buffer((len(group), height, width, 3)))
                raw = self._infer(canvas)
                for i, faces in zip(chunk, postprocess(*raw, sizes, self.options), strict=True):
                    results[i] = faces
        return results


class RetinaFaceDetector(BatchedDetector):
    """RetinaFace on torch, CPU or CUDA (fp32, or fp16 on CUDA)."""

    def __init__(
        self,
        net: RetinaFace,
        *,
        device: str = "auto",
        options: DetectionOptions | None = None,
        max_batch: int = 32,
        half: bool = False,
        channels_last: bool = True,
        weights: WeightsInfo | None = None,
    ) -> None:
        super().__init__(options or DetectionOptions(), max_batch)
        self._device = resolve_device(device)
        if half and self._device.type != "cuda":
            raise ValueError("half precision is only offered on CUDA")
        self.device = str(self._device)
        self.name = f"retinaface-{net.arch}" + ("-fp16" if half else "")
        self.weights = weights
        # A copy: moving to a device or a memory format is in place, and the caller may build
        # other detectors (another device, the ONNX export) from the same network.
        model = Uint8RetinaFace(copy.deepcopy(net)).to(self._device)
        if half:
            model = model.half()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self._model = model.eval()
        self._staging: dict[tuple[int, ...], torch.Tensor] = {}

    @classmethod
    def load(
        cls,
        arch: str = "mobilenet0.25",
        *,
        weights: Path | None = None,
        sha256: str | None = None,
        **kwargs: object,
    ) -> RetinaFaceDetector:
        """A detector with published weights (model store, or an explicit verified file)."""
        net, info = load_network(arch, weights, sha256)
        return cls(net, weights=info, **kwargs)  # type: ignore[arg-type]

    def _canvas_buffer(self, shape: tuple[int, ...]) -> np.ndarray | None:
        if self._device.type != "cuda":
            return None
        # Pinned staging memory makes the host-to-device copy asynchronous and faster; the
        # buffer is reused only after the previous call has synchronised on its results.
        buffer = self._staging.get(shape)
        if buffer is None:
            if len(self._staging) >= 8:
                self._staging.clear()
            buffer = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            self._staging[shape] = buffer
        return buffer.numpy()

    def _infer(self, canvas: np.ndarray) -> RawOutputs:
        with torch.inference_mode():
            staged = self._staging.get(canvas.shape)
            host = (
                staged if staged is not None and staged.data_ptr() == canvas.ctypes.data
                else torch.from_numpy(canvas)
            )
            images = host.to(self._device, non_blocking=True)
            return self._model(images)

    def detect(self, images: Sequence[np.ndarray]) -> list[list[FaceDetection]]:
        with torch.inference_mode():
            return super().detect(images)


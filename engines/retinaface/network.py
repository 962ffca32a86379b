"""The RetinaFace network (biubug6's architecture): MobileNet-0.25 or ResNet-50 body, FPN, SSH
context modules and per-level heads. Module and parameter names follow the published state dicts,
so their checkpoints load as they are (engines.retinaface.weights).

``Uint8RetinaFace`` takes uint8 NHWC pixels and normalises them on the device: 4x fewer bytes
to copy than float32, and the ONNX export takes the same input as the torch path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

MEAN_BGR = (104, 117, 123)
"""The training input mean; the network saw BGR minus this."""
MEAN_RGB = MEAN_BGR[::-1]

ARCHS = ("mobilenet0.25", "resnet50")


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

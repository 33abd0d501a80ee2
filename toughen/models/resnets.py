"""Residual networks used for CIFAR-10 adversarial training: PreAct ResNet-18 (He et al. 2016,
as in Wong et al. 2020) and Wide ResNet (Zagoruyko and Komodakis 2016, WRN-34-10 in Madry et al.
and Zhang et al.)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from toughen.errors import ToughenUsageError
from toughen.models._registry import MODELS


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice, with the shortcut taken after the first BN-ReLU when it projects."""

    def __init__(self, in_planes: int, planes: int, stride: int, drop: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.drop = drop
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = F.relu(self.bn2(out))
        if self.drop:
            out = F.dropout(out, self.drop, self.training)
        return self.conv2(out) + shortcut


class _PreActNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths: list[int], blocks: list[int], drop: float = 0.0):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers, planes = [], widths[0]
        for i, (w, n) in enumerate(zip(widths[1:], blocks)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(PreActBlock(planes, w, stride, drop))
                planes = w
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(planes)
        self.fc = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(x))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


@MODELS.register("preact_resnet18")
def preact_resnet18(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """PreAct ResNet-18: four stages of two pre-activation blocks, 64-128-256-512 channels."""
    return _PreActNet(input_shape[0], num_classes, [64, 64, 128, 256, 512], [2, 2, 2, 2])


@MODELS.register("wide_resnet")
def wide_resnet(
    input_shape: tuple[int, int, int], num_classes: int, depth: int = 34, width: int = 10, dropout: float = 0.0
) -> nn.Module:
    """WRN-depth-width: three stages of (depth - 4) / 6 pre-activation blocks with
    16*width, 32*width, 64*width channels. WRN-34-10 is the usual CIFAR-10 robust baseline."""
    if (depth - 4) % 6 != 0 or depth < 10:
        raise ToughenUsageError(f"wide_resnet depth must be 6n + 4 (e.g. 16, 28, 34), got {depth}")
    n = (depth - 4) // 6
    return _PreActNet(input_shape[0], num_classes, [16, 16 * width, 32 * width, 64 * width], [n, n, n], dropout)

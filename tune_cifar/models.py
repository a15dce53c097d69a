"""CIFAR-sized networks, registered by name. Input: (B, 3, 32, 32) normalised images."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

# (out_channels, stride) of MobileNet v1's 13 depthwise-separable blocks, CIFAR variant.
MOBILENET_BLOCKS = [64, (128, 2), 128, (256, 2), 256, (512, 2), 512, 512, 512, 512, 512, (1024, 2), 1024]


class DepthwiseSeparable(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.depthwise(x)))
        return F.relu(self.bn2(self.pointwise(x)))


class MobileNet(nn.Module):
    """MobileNet v1 for 32x32 inputs: stride-1 stem, 4 stride-2 blocks -> (B, 1024, 2, 2)."""

    def __init__(self, num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        layers, in_channels = [], 32
        for spec in MOBILENET_BLOCKS:
            out_channels, stride = spec if isinstance(spec, tuple) else (spec, 1)
            layers.append(DepthwiseSeparable(in_channels, out_channels, stride))
            in_channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))  # (B, 1024, 2, 2)
        x = F.avg_pool2d(x, 2).flatten(1)  # (B, 1024)
        return self.linear(x)


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18, CIFAR variant: 3x3 stride-1 stem and no max-pool, so stage 1 runs at 32x32."""

    def __init__(self, num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages, in_channels = [], 64
        for channels, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            stages.append(nn.Sequential(BasicBlock(in_channels, channels, stride), BasicBlock(channels, channels, 1)))
            in_channels = channels
        self.stages = nn.Sequential(*stages)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(F.relu(self.bn1(self.conv1(x))))  # (B, 512, 4, 4)
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


MODELS: dict[str, Callable[[int], nn.Module]] = {
    "mobilenet": MobileNet,
    "resnet18": ResNet18,
}


def build_model(name: str, num_classes: int = 100) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes)

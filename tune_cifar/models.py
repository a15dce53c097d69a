"""CIFAR-sized networks, registered by name. Input: (B, 3, 32, 32) normalised images."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tune_cifar.data import normalise
from tune_cifar.schema import DATASET_CLASSES, RESIDUAL_MODELS
from tune_cifar.storage import is_uri, read_bytes

if TYPE_CHECKING:
    from tune_cifar.config import TrainConfig

EXPORT_FORMAT = "tune_cifar.export/1"  # what python -m tune_cifar.export writes

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


def classifier_dropout(rate: float) -> nn.Module:
    """Dropout on the pooled features before the classifier; Identity at 0, so no RNG draw is made."""
    return nn.Dropout(rate) if rate > 0 else nn.Identity()


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth on a residual branch x (B, ...): zero whole samples with probability `rate`.

    Kept samples are scaled by 1 / (1 - rate) so the branch's expectation is unchanged, and eval is
    the identity (Huang et al. 2016 scale at test time instead; timm's DropPath does this).
    """
    if rate == 0 or not training:
        return x
    keep = 1 - rate
    mask = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device) < keep  # (B, 1, 1, 1)
    return x * mask.to(x.dtype) / keep


class MobileNet(nn.Module):
    """MobileNet v1 for 32x32 inputs: stride-1 stem, 4 stride-2 blocks -> (B, 1024, 2, 2)."""

    def __init__(self, num_classes: int = 100, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        layers, in_channels = [], 32
        for spec in MOBILENET_BLOCKS:
            out_channels, stride = spec if isinstance(spec, tuple) else (spec, 1)
            layers.append(DepthwiseSeparable(in_channels, out_channels, stride))
            in_channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.dropout = classifier_dropout(dropout)
        self.linear = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))  # (B, 1024, 2, 2)
        x = F.avg_pool2d(x, 2).flatten(1)  # (B, 1024)
        return self.linear(self.dropout(x))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int, drop_path: float = 0.0):
        super().__init__()
        self.drop_path = drop_path  # this block's stochastic-depth rate
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
        out = drop_path(self.bn2(self.conv2(out)), self.drop_path, self.training)
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18, CIFAR variant: 3x3 stride-1 stem and no max-pool, so stage 1 runs at 32x32.

    drop_path: the last block's stochastic-depth rate; block i of the 8 drops with drop_path * i / 7.
    """

    def __init__(self, num_classes: int = 100, dropout: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        plan = [(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)]  # (channels, stride)
        rates = [drop_path * i / (len(plan) - 1) for i in range(len(plan))]
        blocks, in_channels = [], 64
        for (channels, stride), rate in zip(plan, rates):
            blocks.append(BasicBlock(in_channels, channels, stride, rate))
            in_channels = channels
        # Two blocks per stage, as before, so parameter names (stages.1.0.conv1...) stay those of saved checkpoints.
        self.stages = nn.Sequential(*(nn.Sequential(*blocks[i : i + 2]) for i in range(0, len(blocks), 2)))
        self.dropout = classifier_dropout(dropout)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(F.relu(self.bn1(self.conv1(x))))  # (B, 512, 4, 4)
        return self.linear(self.dropout(F.adaptive_avg_pool2d(x, 1).flatten(1)))


# (expansion t, out_channels c, repeats n, first stride s) of MobileNetV2's inverted-residual stages,
# CIFAR variant of the pytorch-cifar100 collection: the ImageNet strides 2 of the stem and of the
# 160-channel stage are 1 here, so 32x32 inputs end at 5x5 (the 1x1 stem pads to 34x34).
MOBILENETV2_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 1),
                      (6, 320, 1, 1)]


class InvertedResidual(nn.Module):
    """Expand 1x1 (x t) + BN + ReLU6, depthwise 3x3 + BN + ReLU6, project 1x1 + BN (linear), skip when shapes allow.

    Every conv keeps its bias, as in the reference (redundant before BN, but part of its parameter count),
    and the expansion conv is there even at t = 1.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.expand = nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden), nn.BatchNorm2d(hidden),
                                       nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(hidden, out_channels, 1), nn.BatchNorm2d(out_channels))
        self.skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return out + x if self.skip else out


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) as in pytorch-cifar100: 1x1 stem (padding 1), stages above, 1x1 to 1280."""

    def __init__(self, num_classes: int = 100, dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 1, padding=1), nn.BatchNorm2d(32), nn.ReLU6())  # (B, 32, 34, 34)
        blocks, in_channels = [], 32
        for expansion, channels, repeats, stride in MOBILENETV2_STAGES:
            for i in range(repeats):
                blocks.append(InvertedResidual(in_channels, channels, stride if i == 0 else 1, expansion))
                in_channels = channels
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(in_channels, 1280, 1), nn.BatchNorm2d(1280), nn.ReLU6())
        self.dropout = classifier_dropout(dropout)
        self.linear = nn.Linear(1280, num_classes)  # the reference's 1x1 conv on the pooled (B, 1280, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))  # (B, 1280, 5, 5)
        return self.linear(self.dropout(F.adaptive_avg_pool2d(x, 1).flatten(1)))


# name -> constructor(num_classes, dropout=, [drop_path= for the RESIDUAL_MODELS])
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mobilenet": MobileNet,
    "mobilenetv2": MobileNetV2,
    "resnet18": ResNet18,
}


def build_for(cfg: "TrainConfig") -> nn.Module:
    """The network `cfg` trains: its model, with a classifier of its dataset's classes (100 or 10)."""
    return build_model(cfg.model, DATASET_CLASSES[cfg.dataset], dropout=cfg.dropout, drop_path=cfg.drop_path)


def build_model(name: str, num_classes: int = 100, dropout: float = 0.0, drop_path: float = 0.0) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))}")
    if name in RESIDUAL_MODELS:
        return MODELS[name](num_classes, dropout=dropout, drop_path=drop_path)
    if drop_path:
        raise ValueError(f"{name} has no stochastic depth; drop_path works on {', '.join(RESIDUAL_MODELS)}")
    return MODELS[name](num_classes, dropout=dropout)


@dataclass
class ExportedModel:
    """A trial's final model as tune_cifar.export wrote it, ready to classify uint8 images."""

    model: nn.Module  # eval mode, in the memory format it trained in
    config: dict[str, Any]  # the trial's resolved TrainConfig fields (precision: the arithmetic it evaluated in)
    metrics: dict[str, Any]  # its final epoch's: val_acc, test_acc, ...
    mean: torch.Tensor  # (3,) per-channel mean of its training split, [0, 1] units
    std: torch.Tensor  # (3,)
    info: dict[str, Any]  # the rest of the file: provenance, source trial, data

    @torch.no_grad()
    def logits(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """float32 logits (N, classes) of uint8 images (N, 3, 32, 32), computed as the trial evaluated its test
        split (train.evaluate: same normalisation, batches, memory format and precision)."""
        x = torch.as_tensor(images)
        device = next(self.model.parameters()).device
        bf16, size = self.config.get("precision") == "bf16", int(self.config.get("eval_batch_size", 1000))
        out = []
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for start in range(0, len(x), size):
                batch = normalise(x[start : start + size].to(device), self.mean, self.std)
                if self.config.get("channels_last"):
                    batch = batch.contiguous(memory_format=torch.channels_last)
                out.append(self.model(batch).float())
        return torch.cat(out) if out else torch.empty(0, self.info["num_classes"])

    def accuracy(self, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
        """Share of `images` whose top logit is their label (labels (N,) ints)."""
        return (self.logits(images).argmax(1).cpu() == torch.as_tensor(labels)).double().mean().item()


def load_exported(path: str | os.PathLike, device: str = "cpu") -> ExportedModel:
    """Read what `python -m tune_cifar.export` wrote (a path or an s3:// / gs:// URI). weights_only: the file
    is tensors and plain values, so loading it runs no code whoever wrote it."""
    source = io.BytesIO(read_bytes(path) or b"") if is_uri(path) else path
    saved = torch.load(source, map_location=device, weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path} is not a tune_cifar export (format {EXPORT_FORMAT!r})")
    cfg = saved["config"]
    model = build_model(cfg["model"], saved["num_classes"], dropout=cfg.get("dropout", 0.0),
                        drop_path=cfg.get("drop_path", 0.0))
    model.load_state_dict(saved["model"])
    model = model.to(device).eval()
    if cfg.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    stats = saved["normalisation"]
    mean, std = (torch.tensor(stats[k], dtype=torch.float32, device=device) for k in ("mean", "std"))
    info = {k: v for k, v in saved.items() if k not in ("model", "config", "metrics", "normalisation")}
    return ExportedModel(model, cfg, saved["metrics"], mean, std, info)

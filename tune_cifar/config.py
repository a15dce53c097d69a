"""The one description of a training run: a frozen dataclass, validated once at the edge."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Mapping

from tune_cifar.schema import DEVICES, MODEL_NAMES, PRECISIONS, SCHEDULES


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the field."""


@dataclass(frozen=True)
class TrainConfig:
    model: str = "mobilenet"  # a name registered in tune_cifar.models
    lr: float = 0.05  # initial SGD learning rate (per batch of `batch_size`)
    schedule: str = "constant"  # "constant" or "cosine" (CosineAnnealingLR, T_max=epochs, eta_min=0), stepped per epoch
    weight_decay: float = 0.0  # SGD's coupled L2 coefficient
    momentum: float = 0.9  # SGD momentum, no Nesterov
    epochs: int = 15  # full passes over the training split
    batch_size: int = 128  # images per optimiser step; the last partial batch is kept
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) for mixup; 0 = off
    seed: int = 0  # model init, shuffling, augmentation and mixup draws
    split_seed: int = 0  # train/val split, as random_split with Generator().manual_seed(split_seed)
    val_fraction: float = 0.2  # share of the 50,000 training images held out for validation
    data_dir: str = "./data"  # folder holding cifar-100-python/
    download: bool = True  # download the real CIFAR-100 into data_dir when it is missing
    device: str = "auto"  # "auto" (cuda when available), "cpu" or "cuda"
    precision: str = "auto"  # "auto" (bf16 autocast on cuda, fp32 on cpu), "fp32" or "bf16"
    channels_last: bool = True  # NHWC memory format for model and batches (faster on cuda and cpu)
    compile: bool = False  # torch.compile the model (cuda only)
    eval_batch_size: int = 1000  # images per forward pass when evaluating

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown config key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
            )
        typed = {name: _coerce(name, value) for name, value in values.items()}
        return cls(**typed)

    def replace(self, **changes: Any) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __post_init__(self) -> None:
        checks = [
            ("model", self.model in MODEL_NAMES, f"must be one of {', '.join(MODEL_NAMES)}"),
            ("lr", self.lr > 0, "must be > 0"),
            ("schedule", self.schedule in SCHEDULES, f"must be one of {', '.join(SCHEDULES)}"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("momentum", 0 <= self.momentum < 1, "must be in [0, 1)"),
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("mixup_alpha", self.mixup_alpha >= 0, "must be >= 0 (0 turns mixup off)"),
            ("val_fraction", 0 < self.val_fraction < 1, "must be between 0 and 1"),
            ("device", self.device in DEVICES, f"must be one of {', '.join(DEVICES)}"),
            ("precision", self.precision in PRECISIONS, f"must be one of {', '.join(PRECISIONS)}"),
            ("eval_batch_size", self.eval_batch_size >= 1, "must be >= 1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"invalid {name}={getattr(self, name)!r}: {rule}")


_TYPES = {f.name: f.type for f in fields(TrainConfig)}


def _coerce(name: str, value: Any) -> Any:
    kind = _TYPES[name]
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid {name}={value!r}: expected {kind}") from None


def add_config_flags(parser: argparse.ArgumentParser, defaults: TrainConfig | None = None) -> None:
    """One flag per config field, named after it (`weight_decay` -> `--weight-decay`)."""
    defaults = defaults or TrainConfig()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, default=default, action=argparse.BooleanOptionalAction)
        else:
            parser.add_argument(flag, dest=f.name, default=default, metavar=f.type.upper())


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig.from_dict({f.name: getattr(args, f.name) for f in fields(TrainConfig)})

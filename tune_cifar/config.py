"""The one description of a training run: a frozen dataclass, validated once at the edge."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import math
import numbers
import re
import tokenize
from dataclasses import dataclass, fields
from typing import Any, Mapping

from tune_cifar.schedules import milestone_epochs
from tune_cifar.schema import DATASETS, DEVICES, MIXES, MODEL_NAMES, PRECISIONS, RESIDUAL_MODELS, SCHEDULES


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the field."""


@dataclass(frozen=True)
class TrainConfig:
    # "cifar100" (the report's) or "cifar10": which release is read, and the classifier's outputs (100 or 10);
    # the published figures are CIFAR-100's, so the report compares CIFAR-10 results with none.
    dataset: str = "cifar100"
    model: str = "mobilenet"  # a name registered in tune_cifar.models
    dropout: float = 0.0  # P(zero) of each pooled feature before the classifier, every model; 0 = off
    # Stochastic depth, resnet18 only: block i of n drops its residual branch per sample with rate
    # drop_path * i / (n - 1), from 0 at the first block to drop_path at the last; 0 = off.
    drop_path: float = 0.0
    lr: float = 0.05  # initial SGD learning rate (per batch of `batch_size`); the peak under warm-up and onecycle
    # "constant", "cosine" (the report's two, per epoch), "step", "warmup_cosine" (per epoch) or
    # "onecycle" (per optimiser step); each defined in tune_cifar/schedules.py.
    schedule: str = "constant"
    step_milestones: str = "30%,60%,80%"  # "step": epochs (0-based, decay from there on) or % of `epochs`
    step_gamma: float = 0.2  # "step": lr factor at each milestone (pytorch-cifar100: x0.2 at 30/60/80%)
    warmup_epochs: int = 5  # "warmup_cosine": epoch e < warmup_epochs uses lr * (e + 1) / (warmup_epochs + 1)
    weight_decay: float = 0.0  # SGD's coupled L2 coefficient
    momentum: float = 0.9  # SGD momentum, fixed under every schedule (onecycle does not cycle it)
    nesterov: bool = False  # SGD's Nesterov momentum (needs momentum > 0); the report used plain momentum
    epochs: int = 15  # full passes over the training split
    batch_size: int = 128  # images per optimiser step; the last partial batch is kept
    label_smoothing: float = 0.0  # training loss only, F.cross_entropy(label_smoothing=); val/test stay plain CE
    # Batch mixing, one kind at a time: "mixup" (on when mixup_alpha > 0: the report's), "cutmix" or
    # "none". One field picks, so a study can compare off / mixup / cutmix as a grid over `mix`.
    mix: str = "mixup"
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) for mixup's weight; 0 = off; used when mix = "mixup"
    cutmix_alpha: float = 1.0  # Beta(alpha, alpha) for cutmix's kept share (Yun et al.: 1.0); mix = "cutmix"
    cutmix_prob: float = 1.0  # mix = "cutmix": P(a batch is cut-mixed); the other batches train clean
    seed: int = 0  # model init, shuffling, augmentation, mixing, dropout and drop-path draws
    split_seed: int = 0  # train/val split, as random_split with Generator().manual_seed(split_seed)
    val_fraction: float = 0.2  # share of the 50,000 training images held out for validation
    data_dir: str = "./data"  # folder holding cifar-100-python/ (cifar100) or cifar-10-batches-py/ (cifar10)
    download: bool = True  # download the real release of `dataset` into data_dir when it is missing (md5-checked)
    device: str = "auto"  # "auto" (cuda when available), "cpu" or "cuda"
    precision: str = "auto"  # "auto" (bf16 autocast on cuda, fp32 on cpu), "fp32" or "bf16"
    channels_last: bool = True  # NHWC memory format for model and batches (faster on cuda and cpu)
    compile: bool = False  # torch.compile the model (cuda only)
    # cuDNN deterministic kernels + torch.use_deterministic_algorithms(warn_only=True): bit-exact reruns and
    # resumes on CUDA for models without adaptive pooling (README, Performance); off: faster, not bit-exact.
    deterministic: bool = False
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
        for f in fields(self):  # inf passes "> 0" and would train on nothing but inf and NaN
            if f.type == "float" and not math.isfinite(getattr(self, f.name)):
                raise ConfigError(f"invalid {f.name}={getattr(self, f.name)!r}: must be a finite number")
        milestones_error = _milestones_error(self.step_milestones)
        checks = [
            ("dataset", self.dataset in DATASETS, f"must be one of {', '.join(DATASETS)}"),
            ("model", self.model in MODEL_NAMES, f"must be one of {', '.join(MODEL_NAMES)}"),
            ("lr", self.lr > 0, "must be > 0"),
            ("dropout", 0 <= self.dropout < 1, "must be in [0, 1)"),
            ("drop_path", 0 <= self.drop_path < 1, "must be in [0, 1)"),
            ("drop_path", self.drop_path == 0 or self.model in RESIDUAL_MODELS,
             f"needs residual blocks: only {', '.join(RESIDUAL_MODELS)} implements stochastic depth, not {self.model}"),
            ("schedule", self.schedule in SCHEDULES, f"must be one of {', '.join(SCHEDULES)}"),
            ("step_milestones", milestones_error is None, milestones_error),
            ("step_gamma", self.step_gamma > 0, "must be > 0"),
            ("warmup_epochs", self.warmup_epochs >= 0, "must be >= 0"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("momentum", 0 <= self.momentum < 1, "must be in [0, 1)"),
            ("nesterov", not self.nesterov or self.momentum > 0, "needs momentum > 0"),
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "must be in [0, 1)"),
            ("mix", self.mix in MIXES, f"must be one of {', '.join(MIXES)}"),
            ("mixup_alpha", self.mixup_alpha >= 0, "must be >= 0 (0 turns mixup off)"),
            ("cutmix_alpha", self.cutmix_alpha >= 0, "must be >= 0"),
            ("cutmix_alpha", self.cutmix_alpha > 0 or self.mix != "cutmix",
             "must be > 0 when mix = 'cutmix' (mix = 'none' turns mixing off)"),
            ("cutmix_prob", 0 <= self.cutmix_prob <= 1, "must be in [0, 1]"),
            ("val_fraction", 0 < self.val_fraction < 1, "must be between 0 and 1"),
            ("device", self.device in DEVICES, f"must be one of {', '.join(DEVICES)}"),
            ("precision", self.precision in PRECISIONS, f"must be one of {', '.join(PRECISIONS)}"),
            ("eval_batch_size", self.eval_batch_size >= 1, "must be >= 1"),
            ("seed", is_seed(self.seed), SEED_RULE),
            ("split_seed", is_seed(self.split_seed), SEED_RULE),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"invalid {name}={getattr(self, name)!r}: {rule}")


# numpy's, torch's and the samplers' generators take seeds in [0, 2**32 - 1] (Optuna: "Seed must be between
# 0 and 2**32 - 1"); a seed outside fails at run time, so it is refused when the configuration is made.
MAX_SEED = 2**32 - 1
SEED_RULE = "must be an integer in [0, 2**32-1]"


def is_seed(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and 0 <= value <= MAX_SEED


def _milestones_error(text: str) -> str | None:
    try:
        milestone_epochs(text, epochs=100)  # the syntax does not depend on the number of epochs
    except ValueError as e:
        return f"{e}; e.g. '30%,60%,80%' or '60,120,160'"
    return None


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


# The fields that take one of a few names: --help lists them, and argparse refuses any other.
CHOICES = {"dataset": DATASETS, "model": MODEL_NAMES, "schedule": SCHEDULES, "mix": MIXES, "device": DEVICES,
           "precision": PRECISIONS}


def field_comments() -> dict[str, str]:
    """Each TrainConfig field's comment as written above (whole lines) and beside it: its --help text.

    Read from the class's source, so the one place a field is explained is the line that defines it.
    """
    comments: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsourcelines(TrainConfig)[0]:
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("#").strip())
            continue
        match = re.match(r"(\w+): \w+ = ", text)
        if match is None:
            above = []
            continue
        beside = [t.string.lstrip("#").strip() for t in tokenize.generate_tokens(io.StringIO(text).readline)
                  if t.type == tokenize.COMMENT]
        comments[match.group(1)] = " ".join(above + beside)
        above = []
    return comments


def add_config_flags(parser: argparse.ArgumentParser, defaults: TrainConfig | None = None) -> None:
    """One flag per config field, named after it (`weight_decay` -> `--weight-decay`), whose help is the
    field's comment, its default and its choices."""
    defaults = defaults or TrainConfig()
    comments = field_comments()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        said = ("--" if default else "--no-") + flag[2:] if f.type == "bool" else default
        help_text = f"{comments.get(f.name, f.name)} (default: {said})".replace("%", "%%")  # argparse formats help
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, default=default, action=argparse.BooleanOptionalAction,
                                help=help_text)
        elif f.name in CHOICES:
            parser.add_argument(flag, dest=f.name, default=default, choices=CHOICES[f.name], help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=default, metavar=f.type.upper(), help=help_text)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig.from_dict({f.name: getattr(args, f.name) for f in fields(TrainConfig)})

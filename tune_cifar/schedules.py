"""Learning-rate schedules as pure functions of the epoch (or the optimiser step), torch-free.

Each one equals, value for value, the PyTorch scheduler named in its docstring (tests/test_schedules.py
steps that scheduler beside it). The loop sets the lr itself from these functions, so a resumed run
needs no scheduler state: the lr at (epoch, step) is known from the config alone.

    constant       lr throughout
    cosine         CosineAnnealingLR(T_max=epochs, eta_min=0), per epoch (the report's)
    step           MultiStepLR(milestones, gamma), per epoch; default x0.2 at 30%, 60%, 80% of training
    warmup_cosine  linear warm-up for warmup_epochs epochs, then cosine to 0 over the rest, per epoch
    onecycle       OneCycleLR(max_lr=lr, total_steps=epochs * steps_per_epoch) with its defaults, per step
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tune_cifar.config import TrainConfig

PER_STEP = ("onecycle",)  # schedules that change the lr every optimiser step; the rest change it per epoch

# OneCycleLR's defaults, which "onecycle" keeps.
ONECYCLE_PCT_START = 0.3  # share of the steps spent rising from lr / DIV to lr
ONECYCLE_DIV = 25.0  # initial lr = lr / 25
ONECYCLE_FINAL_DIV = 1e4  # final lr = initial lr / 1e4


def schedule_lr(cfg: TrainConfig, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
    """The lr of optimiser step `step` (0-based, within 0-based `epoch`) under `cfg.schedule`."""
    name = cfg.schedule
    if name == "constant":
        return cfg.lr
    if name == "cosine":
        return cosine_lr(cfg.lr, epoch, cfg.epochs)
    if name == "step":
        return step_lr(cfg.lr, epoch, milestone_epochs(cfg.step_milestones, cfg.epochs), cfg.step_gamma)
    if name == "warmup_cosine":
        return warmup_cosine_lr(cfg.lr, epoch, cfg.epochs, cfg.warmup_epochs)
    if name == "onecycle":
        return onecycle_lr(cfg.lr, epoch * steps_per_epoch + step, cfg.epochs * steps_per_epoch)
    raise ValueError(f"unknown schedule {name!r}")


def lr_at(base_lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """lr during 0-based `epoch` (its first step) under `schedule` with that schedule's default parameters."""
    # imported here: config imports this module to validate milestones
    from tune_cifar.config import TrainConfig

    return schedule_lr(TrainConfig(lr=base_lr, schedule=schedule, epochs=epochs), epoch)


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """CosineAnnealingLR(T_max=epochs, eta_min=0) during 0-based `epoch`."""
    return base_lr * (1 + math.cos(math.pi * epoch / epochs)) / 2


def step_lr(base_lr: float, epoch: int, milestones: tuple[int, ...], gamma: float) -> float:
    """MultiStepLR: lr times gamma once for every milestone <= epoch (a repeated milestone counts twice)."""
    return base_lr * gamma ** sum(1 for m in milestones if m <= epoch)


def milestone_epochs(text: str, epochs: int) -> tuple[int, ...]:
    """Parse "30%,60%,80%" or "60,120,160" (mixed is fine) into 0-based epochs from which the decay applies.

    A percentage p means round(p / 100 * epochs), halves rounded up, in exact arithmetic: for 200 epochs
    "30%,60%,80%" is 60, 120, 160 (pytorch-cifar100's MultiStepLR), for 300 it is 90, 180, 240.
    Raises ValueError naming the bad entry.
    """
    out = []
    for raw in (t.strip() for t in text.split(",")):
        try:
            if raw.endswith("%"):
                pct = Fraction(raw[:-1].strip())
                if not 0 < pct <= 100:
                    raise ValueError
                out.append(math.floor(pct * epochs / 100 + Fraction(1, 2)))
            else:
                epoch = int(raw)
                if epoch < 1:
                    raise ValueError
                out.append(epoch)
        except ValueError:
            raise ValueError(f"{raw!r} is neither an epoch >= 1 nor a percentage p% with 0 < p <= 100") from None
    return tuple(out)


def warmup_cosine_lr(base_lr: float, epoch: int, epochs: int, warmup_epochs: int) -> float:
    """Epochs 0..w-1 use lr * (epoch + 1) / (w + 1), then cosine from lr to 0 over the remaining epochs - w.

    Equals SequentialLR([LinearLR(start_factor=1 / (w + 1), total_iters=w),
    CosineAnnealingLR(T_max=epochs - w)], milestones=[w]): the ramp ends one step below lr, and the
    cosine phase starts at lr. w = 0 is plain cosine; w >= epochs is a run that never leaves the ramp
    (so an --epochs override below w still runs).
    """
    w = warmup_epochs
    if epoch < w:
        return base_lr * (epoch + 1) / (w + 1)
    return cosine_lr(base_lr, epoch - w, epochs - w)


def onecycle_lr(max_lr: float, step: int, total_steps: int) -> float:
    """OneCycleLR(max_lr, total_steps) with its defaults (cosine annealing, two phases) at 0-based `step`.

    Rises from max_lr / 25 to max_lr over the first 30% of the steps, then falls to max_lr / 25 / 1e4.
    Only the lr: OneCycleLR also cycles SGD's momentum (0.95 -> 0.85 -> 0.95) unless cycle_momentum=False;
    we keep momentum at TrainConfig.momentum, as OneCycleLR(cycle_momentum=False) does, so that the
    schedule study varies the lr alone.
    """
    initial = max_lr / ONECYCLE_DIV
    final = initial / ONECYCLE_FINAL_DIV
    peak_step = float(ONECYCLE_PCT_START * total_steps) - 1  # fractional, exactly as OneCycleLR computes it
    if step <= peak_step:
        start, end, pct = initial, max_lr, step / peak_step
    else:
        start, end, pct = max_lr, final, (step - peak_step) / (total_steps - 1 - peak_step)
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

"""Studies by name: each is a module in `search_spaces/` (see its __init__ for the fields)."""

from __future__ import annotations

import importlib
import itertools
import math
import pkgutil
from dataclasses import dataclass, field
from typing import Any

import search_spaces
from tune_cifar.config import ConfigError, TrainConfig


class StudyError(ValueError):
    """An unknown study, or a study module that does not define what a study needs."""


@dataclass(frozen=True)
class Study:
    name: str
    description: str
    title: str = ""  # a few words for headings (the module's TITLE; default: the name)
    base: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields fixed by the study
    space: dict[str, list[Any]] = field(default_factory=dict)  # field -> values, crossed as a grid
    metric: str = "val_acc"
    mode: str = "max"
    chain: tuple[str, ...] = ()  # non-empty: run these studies in order, carrying winners

    def configs(self, carried: dict[str, Any] | None = None) -> list[TrainConfig]:
        """Every grid point as a validated TrainConfig (one seed), with carried values over the base."""
        base = self.base_config(carried)
        keys = list(self.space)
        return [base.replace(**dict(zip(keys, values))) for values in itertools.product(*self.space.values())]

    def base_config(self, carried: dict[str, Any] | None = None) -> TrainConfig:
        carried = {k: v for k, v in (carried or {}).items() if k not in self.space}
        return TrainConfig.from_dict({**self.base, **carried})

    def num_trials(self, seeds: int = 1) -> int:
        if self.chain:
            return sum(load_study(name).num_trials(seeds) for name in self.chain)
        return math.prod(len(v) for v in self.space.values()) * seeds

    def trial_epochs(self, seeds: int = 1, epochs: int | None = None) -> int:
        """Epochs summed over every trial when each runs to its end (the study's size)."""
        if self.chain:
            return sum(load_study(name).trial_epochs(seeds, epochs) for name in self.chain)
        return self.num_trials(seeds) * (epochs or self.base_config().epochs)


def available_studies() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(search_spaces.__path__) if not m.name.startswith("_"))


def study_order() -> list[str]:
    """The order studies are listed and reported in: each chain's studies in chain order, then the
    chain itself, then every other study by name."""
    order: list[str] = []
    studies = [load_study(name) for name in available_studies()]
    for chain in (s for s in studies if s.chain):
        order += [name for name in (*chain.chain, chain.name) if name not in order]
    return order + [s.name for s in studies if s.name not in order]


def load_study(name: str) -> Study:
    if name not in available_studies():
        raise StudyError(f"unknown study {name!r}; available: {', '.join(available_studies())}")
    module = importlib.import_module(f"search_spaces.{name}")
    description = getattr(module, "DESCRIPTION", (module.__doc__ or "").strip())
    if hasattr(module, "CHAIN"):
        for sub in module.CHAIN:
            load_study(sub)
        return Study(name, description, getattr(module, "TITLE", name), chain=tuple(module.CHAIN))
    if not hasattr(module, "SPACE"):
        raise StudyError(f"search_spaces/{name}.py defines neither SPACE nor CHAIN")
    study = Study(name, description, getattr(module, "TITLE", name), dict(getattr(module, "BASE", {})), {k: list(v) for k, v in module.SPACE.items()},
                  getattr(module, "METRIC", "val_acc"), getattr(module, "MODE", "max"))
    if study.mode not in ("max", "min"):
        raise StudyError(f"search_spaces/{name}.py: MODE must be 'max' or 'min', not {study.mode!r}")
    try:
        study.configs()
    except ConfigError as e:
        raise StudyError(f"search_spaces/{name}.py: {e}") from None
    return study

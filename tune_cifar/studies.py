"""Studies by name: each is a module in `search_spaces/` (see its __init__ for the fields), or a file of the
user's own with the same contract (`python -m tune_cifar.run path/to/my_study.py`)."""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import math
import os
import pkgutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import search_spaces
from tune_cifar.config import ConfigError, TrainConfig
from tune_cifar.search import SearchPlan, describe, is_domain, num_trials, sampled_fields, validate_space
from tune_cifar.warmstart import typed

# Module attributes that set a study's default search plan -> SearchPlan's fields.
PLAN_ATTRIBUTES = {"NUM_SAMPLES": "num_samples", "SCHEDULER": "scheduler", "GRACE_PERIOD": "grace_period",
                   "REDUCTION_FACTOR": "reduction_factor", "PERTURBATION_INTERVAL": "perturbation_interval",
                   "SAMPLER": "sampler", "STARTUP_TRIALS": "startup_trials", "BRACKETS": "brackets"}


class StudyError(ValueError):
    """An unknown study, or a study module that does not define what a study needs."""


@dataclass(frozen=True)
class Study:
    name: str
    description: str
    title: str = ""  # a few words for headings (the module's TITLE; default: the name)
    base: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields fixed by the study
    space: dict[str, Any] = field(default_factory=dict)  # field -> list of values (a grid axis) or a Tune domain
    metric: str = "val_acc"
    mode: str = "max"
    chain: tuple[str, ...] = ()  # non-empty: run these studies in order, carrying winners
    plan: SearchPlan = SearchPlan()  # how the space is searched by default (the module's SEARCH, SCHEDULER, ...)
    start: tuple[dict[str, Any], ...] = ()  # configurations a model-based search tries first (the module's START)

    @property
    def is_grid(self) -> bool:
        return not sampled_fields(self.space)

    def configs(self, carried: dict[str, Any] | None = None) -> list[TrainConfig]:
        """Every grid point as a validated TrainConfig (one seed), with carried values over the base.

        Sampled fields are checked at their domains' edges and left at the base value here.
        """
        base = self.base_config(carried)
        validate_space(self.space, base)
        grid = {k: v for k, v in self.space.items() if not is_domain(v)}
        keys = list(grid)
        return [base.replace(**dict(zip(keys, values))) for values in itertools.product(*grid.values())]

    def described(self, carried: dict[str, Any] | None = None) -> str:
        """The description of what runs: the module's own, or, in a chain, what varies and the values
        actually carried (the module's text names its own base values, which a chain may replace)."""
        carried = {k: v for k, v in (carried or {}).items() if k not in self.space}
        if not carried:
            return self.description
        own = self.base_config().to_dict()
        varied = "; ".join(f"{k} in {describe(v)}" for k, v in self.space.items())
        text = (f"{self.title}: {varied}, with the earlier winners carried: "
                + ", ".join(f"{k}={v}" for k, v in carried.items()))
        replaced = {k: own.get(k) for k, v in carried.items() if own.get(k) != v}
        if replaced:
            text += " (instead of the study's own " + ", ".join(f"{k}={v}" for k, v in replaced.items()) + ")"
        return text + "."  # (the epochs are the run's: the runner's lines and the report's Fixed line say them)

    def base_config(self, carried: dict[str, Any] | None = None) -> TrainConfig:
        carried = {k: v for k, v in (carried or {}).items() if k not in self.space}
        return TrainConfig.from_dict({**self.base, **carried})

    def at_epochs(self, epochs: int) -> "Study":
        """The study as it means itself at another length: its settings counted in epochs scaled."""
        scaled = scaled_settings(self, epochs)
        if not scaled:
            return self
        new = {name: value for name, (_, value) in scaled.items()}
        plan = replace(self.plan, **{k: new.pop(k) for k in ("grace_period", "perturbation_interval") if k in new})
        return replace(self, base={**self.base, **new, "epochs": epochs}, plan=plan)

    def num_trials(self, seeds: int = 1, plan: SearchPlan | None = None) -> int:
        if self.chain:
            return sum(load_study(name).num_trials(seeds) for name in self.chain)
        return num_trials(self.space, plan or self.plan, seeds)

    def trial_epochs(self, seeds: int = 1, epochs: int | None = None, plan: SearchPlan | None = None) -> int:
        """Epochs summed over every trial when each runs to its end (the study's size; a scheduler that
        stops trials early spends less)."""
        if self.chain:
            return sum(load_study(name).trial_epochs(seeds, epochs) for name in self.chain)
        return self.num_trials(seeds, plan) * (epochs or self.base_config().epochs)


def scaled_settings(study: Study, epochs: int) -> dict[str, tuple[Any, Any]]:
    """The study's own settings counted in epochs (its BASE's warm-up and step milestones, its module's
    GRACE_PERIOD and PERTURBATION_INTERVAL), each as (the study's value, the value at `epochs`).

    A study's 15-epoch grace period is meant for its 300 epochs: at 5 it is 1 (proportional, halves
    up, at least 1, and below the run's epochs where a scheduler needs an epoch after it). Settings the
    command line gives are the user's and are not scaled; percentages of `epochs` scale by themselves.
    """
    own = study.base_config().epochs
    if study.chain or epochs == own:
        return {}

    def scaled(n: int, below: bool) -> int:
        value = max(1, math.floor(n * epochs / own + 0.5))
        return max(1, min(value, epochs - 1)) if below else value

    out: dict[str, tuple[Any, Any]] = {}
    for name in ("grace_period", "perturbation_interval"):
        value = getattr(study.plan, name)
        if value is not None:
            out[name] = (value, scaled(value, below=True))
    warmup = study.base.get("warmup_epochs")
    if warmup:  # warm-up, then the schedule proper: at least one epoch after it
        out["warmup_epochs"] = (warmup, min(scaled(warmup, below=False), epochs - 1))
    milestones = study.base.get("step_milestones")
    if milestones:
        entries = [t.strip() for t in str(milestones).split(",")]
        new = ",".join(t if t.endswith("%") else str(scaled(int(t), below=True)) for t in entries)
        if new != milestones:
            out["step_milestones"] = (milestones, new)
    return {k: v for k, v in out.items() if v[0] != v[1]}


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


# What ranks a study's configurations: a metric every epoch reports (schedulers compare trials mid-run).
RANKING_METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")


def is_study_file(name: str) -> bool:
    """A study named by a path (`my_study.py`, `studies/mine`) rather than by a search_spaces/ name."""
    return name.endswith(".py") or "/" in name or os.sep in name


def load_study(name: str) -> Study:
    """The study `name`: a module of search_spaces/, or a file path (`path/to/my_study.py`, the same contract)."""
    if is_study_file(name):
        return load_study_file(name)
    if name not in available_studies():
        raise StudyError(f"unknown study {name!r}; available: {', '.join(available_studies())}")
    try:
        module = importlib.import_module(f"search_spaces.{name}")
    except Exception as e:  # a sampling domain with impossible bounds raises at import, as any bug would
        raise StudyError(f"search_spaces/{name}.py cannot be loaded: {type(e).__name__}: {e}") from None
    return study_from_module(module, name, f"search_spaces/{name}.py")


def load_study_file(path: str | os.PathLike) -> Study:
    """A study module outside the package, named after its file (`my_study.py` -> `my_study`, which names
    its experiment folder). Not added to sys.modules: Ray pickles what it defines by value."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: no such study file; a study file is a Python module defining SPACE and "
                         f"DESCRIPTION (see search_spaces/__init__.py)")
    name = path.stem
    if name in available_studies():  # its folder, tables and published columns would be the built-in study's
        raise StudyError(f"{path} has the name of the built-in study {name!r}; rename the file (its results "
                         f"would be read as that study's)")
    spec = importlib.util.spec_from_file_location(f"tune_cifar_study_file.{name}", path)
    if spec is None or spec.loader is None:
        raise StudyError(f"{path} is not a Python module; a study file ends in .py")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # a module calling sys.exit() is a broken study, not the runner's exit
        raise StudyError(f"{path} cannot be loaded: {type(e).__name__}: {e}") from None
    return study_from_module(module, name, str(path))


def missing_parts(module: ModuleType) -> list[str]:
    """What `module` lacks of a study's contract (search_spaces/__init__.py), each with what it should be."""
    missing = []
    if not hasattr(module, "CHAIN"):
        if not isinstance(getattr(module, "SPACE", None), dict):
            missing.append("SPACE (a dict: TrainConfig field -> list of values or a Tune domain; or CHAIN, "
                           "a list of studies run in order)")
        if not isinstance(getattr(module, "BASE", {}), dict):
            missing.append("BASE as a dict (TrainConfig field -> value)")
    if not str(getattr(module, "DESCRIPTION", None) or module.__doc__ or "").strip():
        missing.append("DESCRIPTION (one sentence: what varies and why; or a module docstring)")
    return missing


def study_from_module(module: ModuleType, name: str, where: str) -> Study:
    missing = missing_parts(module)
    if missing:
        raise StudyError(f"{where} is not a study: it defines no {'; no '.join(missing)}; "
                         f"search_spaces/__init__.py lists what a study module defines")
    description = str(getattr(module, "DESCRIPTION", None) or module.__doc__).strip()
    if hasattr(module, "CHAIN"):
        chain = module.CHAIN
        if not isinstance(chain, (list, tuple)) or not chain or not all(isinstance(s, str) for s in chain):
            raise StudyError(f"{where}: CHAIN must be a non-empty list of study names, not {chain!r}")
        files = [s for s in chain if is_study_file(s)]
        if files:  # the chain's folders and chain.json are keyed by built-in names
            raise StudyError(f"{where}: CHAIN names built-in studies only, not the file(s) {', '.join(files)}")
        for sub in chain:
            load_study(sub)
        return Study(name, description, getattr(module, "TITLE", name), chain=tuple(chain))
    bad = [k for k, v in module.SPACE.items() if not (is_domain(v) or isinstance(v, (list, tuple)))]
    if bad:
        raise StudyError(f"{where}: SPACE[{bad[0]!r}] must be a list of values or a Tune domain, "
                         f"not {module.SPACE[bad[0]]!r}")
    space = {k: (v if is_domain(v) else list(v)) for k, v in module.SPACE.items()}
    start = getattr(module, "START", ())
    if not isinstance(start, (list, tuple)) or not all(isinstance(p, dict) for p in start):
        raise StudyError(f"{where}: START must be a list of dicts (field -> value), not {start!r}")
    try:
        start = tuple(typed(p, f"{where}: START") for p in start)
    except ConfigError as e:
        raise StudyError(str(e)) from None
    plan = SearchPlan(search=getattr(module, "SEARCH", "grid" if not sampled_fields(space) else "random"),
                      **{field: getattr(module, attr) for attr, field in PLAN_ATTRIBUTES.items() if hasattr(module, attr)})
    study = Study(name, description, getattr(module, "TITLE", name), dict(getattr(module, "BASE", {})), space,
                  getattr(module, "METRIC", "val_acc"), getattr(module, "MODE", "max"), plan=plan,
                  start=start)
    if study.mode not in ("max", "min"):
        raise StudyError(f"{where}: MODE must be 'max' or 'min', not {study.mode!r}")
    if study.metric not in RANKING_METRICS:
        raise StudyError(f"{where}: METRIC must be one of {', '.join(RANKING_METRICS)} (reported every epoch), "
                         f"not {study.metric!r}")
    try:
        study.configs()
    except ConfigError as e:
        raise StudyError(f"{where}: {e}") from None
    return study

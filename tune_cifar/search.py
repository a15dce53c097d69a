"""How a study's space is searched: the searcher (grid, random, Optuna's TPE, HyperOpt), how many
samples, and the scheduler (FIFO, ASHA, PBT). Checked here before Ray starts; built into Tune's
objects only when a study runs.

A study's SPACE maps fields to plain lists (grid axes) or Tune's sampling domains
(`tune.loguniform`, `tune.uniform`, `tune.choice`, ...). Grid and random search draw their points
here (lists crossed; domains sampled `num_samples` times per grid point with a generator seeded by
`search_seed`), and each point runs once per seed: Tune's BasicVariantGenerator gets them as
`points_to_evaluate`, since its own sampling would redraw the domains for every seed. Optuna and
HyperOpt see lists as categorical choices.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import random
from dataclasses import dataclass, replace
from typing import Any, Mapping

from tune_cifar.config import SEED_RULE, ConfigError, TrainConfig, is_seed
from tune_cifar.schema import MUTABLE_FIELDS

SEARCHES = ("grid", "random", "optuna", "hyperopt")
SCHEDULERS = ("fifo", "asha", "pbt")
STARTUP_SAMPLERS = ("tpe", "tpe-mv", "gp", "cmaes")  # the samplers that draw at random before their model
# Optuna's samplers (--sampler, with --search optuna) -> how a strategy is named, and the package each needs
SAMPLERS = {"tpe": ("TPE", "optuna"), "tpe-mv": ("multivariate TPE", "optuna"), "gp": ("GP", "optuna"),
            "cmaes": ("CMA-ES", "cmaes"), "qmc": ("QMC", "optuna"), "random": ("Optuna random", "optuna")}
# Where each searcher's package comes from: the extra that installs it.
SEARCH_PACKAGES = {"optuna": ("optuna", "tune-cifar[search]"), "hyperopt": ("hyperopt", "tune-cifar[search]")}
# Fields PBT may never differ in across its members: an exploit copies one member's weights into another.
NETWORK_FIELDS = ("model", "batch_size")


@dataclass(frozen=True)
class SearchPlan:
    search: str = "grid"  # one of SEARCHES
    num_samples: int = 1  # configurations drawn by a sampler (grid: repeats of the whole grid)
    scheduler: str = "fifo"  # one of SCHEDULERS: fifo runs every trial to its end
    grace_period: int | None = None  # ASHA: epochs every trial gets before the first cut (None: epochs // 16)
    reduction_factor: int = 4  # ASHA: a quarter of the trials at a rung go on to the next
    perturbation_interval: int | None = None  # PBT: epochs between exploit/explore steps (None: epochs // 10)
    search_seed: int = 0  # seeds the sampler and the scheduler's own draws, so a search can be repeated
    sampler: str = "tpe"  # Optuna's sampler (--search optuna): one of SAMPLERS
    startup_trials: int | None = None  # Optuna: random draws before the model (None: Optuna's default, 10)
    brackets: int = 1  # ASHA: Hyperband's brackets, bracket s starting its cuts at grace_period * reduction_factor**s

    def resolved(self, epochs: int) -> "SearchPlan":
        """Defaults that depend on the study's epochs filled in."""
        plan = self
        if plan.scheduler == "asha" and plan.grace_period is None:
            plan = replace(plan, grace_period=max(1, epochs // 16))
        if plan.scheduler == "pbt" and plan.perturbation_interval is None:
            plan = replace(plan, perturbation_interval=max(1, epochs // 10))
        return plan

    def label(self) -> str:
        """`TPE + ASHA`, `random`, `grid`: how the budget comparison names a strategy."""
        search = {"optuna": SAMPLERS.get(self.sampler, (self.sampler,))[0], "hyperopt": "HyperOpt TPE"}.get(
            self.search, self.search)
        if self.search == "optuna" and self.startup_trials is not None:
            search += f" ({self.startup_trials} random first)"
        scheduler = self.scheduler.upper() + (f" ({self.brackets} brackets)" if self.brackets > 1 else "")
        return search if self.scheduler == "fifo" else f"{search} + {scheduler}"


def is_domain(value: Any) -> bool:
    """A Tune sampling domain (tune.loguniform(...), tune.choice(...)), as opposed to a grid list."""
    return hasattr(value, "sample") and hasattr(value, "get_sampler")


def grid_size(space: Mapping[str, Any]) -> int:
    return math.prod(len(v) for v in space.values() if not is_domain(v))


def distinct_points(space: Mapping[str, Any]) -> float:
    """How many different configurations the space holds: finite for lists and categories, inf otherwise."""
    sizes = [len(v.categories) if hasattr(v, "categories") else math.inf if is_domain(v) else len(v)
             for v in space.values()]
    return math.prod(sizes)


def sampled_fields(space: Mapping[str, Any]) -> list[str]:
    return [k for k, v in space.items() if is_domain(v)]


def edge_values(domain: Any) -> list[Any]:
    """The values a domain can produce at its edges (categories, or lower and just-below-upper bounds)."""
    if hasattr(domain, "categories"):
        return list(domain.categories)
    lower, upper = domain.lower, domain.upper
    if type(domain).__name__ == "Integer":
        return [lower, upper - 1]  # tune.randint's upper bound is exclusive
    return [lower, math.nextafter(float(upper), float(lower))]  # floats are drawn from [lower, upper)


def describe(value: Any) -> str:
    """`loguniform(0.001, 1)`, `choice(constant, cosine)`, `[0.01, 0.05]`."""
    if not is_domain(value):
        return "[" + ", ".join(map(str, value)) + "]"
    if hasattr(value, "categories"):
        return "choice(" + ", ".join(map(str, value.categories)) + ")"
    sampler = type(value.get_sampler()).__name__.lstrip("_")
    quantum = getattr(value.get_sampler(), "q", None)
    if quantum is not None:  # tune.q*(): a Quantized wrapper around the real sampler
        sampler = type(value.get_sampler().sampler).__name__.lstrip("_")
    name = {"LogUniform": "loguniform", "Uniform": "uniform", "Normal": "normal"}.get(sampler, sampler.lower())
    if type(value).__name__ == "Integer" and name == "uniform":
        name = "randint"
    return f"{'q' if quantum else ''}{name}({value.lower:g}, {value.upper:g}{f', {quantum:g}' if quantum else ''})"


def validate_space(space: Mapping[str, Any], base: TrainConfig) -> None:
    """Every grid value and every domain's edges make a valid TrainConfig over `base` (ConfigError if not)."""
    for key, value in space.items():
        values = edge_values(value) if is_domain(value) else list(value)
        if not values:
            raise ConfigError(f"the space of {key!r} is empty")
        for v in values:
            try:
                base.replace(**{key: v})
            except ConfigError as e:
                where = f" (an edge of {describe(value)})" if is_domain(value) else ""
                raise ConfigError(f"{e}{where}") from None


def num_trials(space: Mapping[str, Any], plan: SearchPlan, seeds: int) -> int:
    """Trials Tune will create: every grid point `num_samples` times for grid/random (times seeds),
    `num_samples` (times seeds, as repeats) for the model-based searchers."""
    if plan.search in ("grid", "random"):
        return grid_size(space) * plan.num_samples * seeds
    return plan.num_samples * seeds


MAX_DRAWS = 100  # tries per sample to draw a configuration not drawn before


def points(space: Mapping[str, Any], plan: SearchPlan) -> list[dict[str, Any]]:
    """Grid and random search's configurations, each a {field: value} to run once per seed: every grid
    point, with `num_samples` draws of the sampled fields (random search) from a generator seeded by
    `search_seed`, so the same seed draws the same configurations. No configuration is drawn twice."""
    import numpy as np

    grid = {k: v for k, v in space.items() if not is_domain(v)}
    sampled = sampled_fields(space)
    rng = np.random.default_rng(plan.search_seed)
    out, seen = [], set()
    for values in itertools.product(*grid.values()):
        for _ in range(plan.num_samples if sampled else 1):
            for _ in range(MAX_DRAWS):
                point = {**dict(zip(grid, values)), **{k: _plain(space[k].sample(random_state=rng)) for k in sampled}}
                key = json.dumps(point, sort_keys=True, default=str)
                if key not in seen:
                    break
            else:
                raise ConfigError(f"--num-samples {plan.num_samples} cannot be drawn without repeating a "
                                  f"configuration of {', '.join(f'{k} in {describe(space[k])}' for k in sampled)}; "
                                  f"lower --num-samples, or widen the space")
            seen.add(key)
            out.append(point)
    return out


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def check(space: Mapping[str, Any], plan: SearchPlan, epochs: int, seeds: int) -> SearchPlan:
    """Refuse combinations that cannot work, with one line naming what to change; return the resolved plan."""
    if plan.search not in SEARCHES:
        raise ConfigError(f"--search must be one of {', '.join(SEARCHES)}, not {plan.search!r}")
    if plan.scheduler not in SCHEDULERS:
        raise ConfigError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, not {plan.scheduler!r}")
    if plan.num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, not {plan.num_samples}")
    if not is_seed(plan.search_seed):
        raise ConfigError(f"--search-seed {plan.search_seed!r}: {SEED_RULE}")
    if plan.sampler not in SAMPLERS:
        raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}, not {plan.sampler!r}")
    if plan.sampler != "tpe" and plan.search != "optuna":
        raise ConfigError(f"--sampler {plan.sampler} picks Optuna's sampler, and this search is {plan.search}: "
                          f"add --search optuna, or drop --sampler")
    if plan.search == "optuna" and importlib.util.find_spec(SAMPLERS[plan.sampler][1]) is None:
        raise ConfigError(f"--sampler {plan.sampler} needs the {SAMPLERS[plan.sampler][1]} package, which is not "
                          f"installed: pip install 'tune-cifar[search]'")
    if plan.startup_trials is not None and (plan.search != "optuna" or plan.sampler not in STARTUP_SAMPLERS):
        raise ConfigError(f"--startup-trials sets the random draws before a model-based Optuna sampler "
                          f"({', '.join(STARTUP_SAMPLERS)}), and this search is {plan.search}"
                          + (f" with --sampler {plan.sampler}" if plan.search == "optuna" else "")
                          + ": drop it, or add --search optuna --sampler tpe")
    if plan.startup_trials is not None and plan.startup_trials < 1:
        raise ConfigError(f"--startup-trials must be >= 1, not {plan.startup_trials}")
    if plan.brackets < 1:
        raise ConfigError(f"--brackets must be >= 1, not {plan.brackets}")
    sampled = sampled_fields(space)
    if plan.search == "grid" and sampled:
        raise ConfigError(f"--search grid needs lists, but this study samples {', '.join(sampled)}; "
                          f"use --search random, optuna or hyperopt")
    if plan.search == "grid" and plan.num_samples > 1:
        raise ConfigError("--search grid runs every grid point once; repeat it with --seeds, or sample with "
                          "--search random --num-samples N")
    # A configuration's repeats must be different seeds: the same configuration and seed twice is a copy.
    if plan.search == "random" and not sampled and plan.num_samples > 1:
        raise ConfigError(f"--search random --num-samples {plan.num_samples} over a space with nothing to sample "
                          f"({', '.join(space)} are lists) would run each grid point {plan.num_samples} times with "
                          f"the same seed; repeat with --seeds {plan.num_samples} instead")
    if plan.search in SEARCH_PACKAGES and plan.num_samples > distinct_points(space):
        raise ConfigError(f"--search {plan.search} --num-samples {plan.num_samples} over a space of only "
                          f"{distinct_points(space)} configurations would repeat some with the same seed; use "
                          f"--search grid (and --seeds N for repeats), or --num-samples {distinct_points(space)} "
                          f"or fewer")
    if plan.search == "random":
        points(space, plan)  # a space too small for num_samples distinct draws is refused here
    if plan.search in SEARCH_PACKAGES:
        module, extra = SEARCH_PACKAGES[plan.search]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"--search {plan.search} needs the {module} package, which is not installed: "
                              f"pip install '{extra}'")
        if seeds > 1 and plan.scheduler != "fifo":
            raise ConfigError(f"--seeds {seeds} with --search {plan.search} repeats each sampled configuration and "
                              f"reports the mean, which a {plan.scheduler.upper()} scheduler cannot judge per trial; "
                              f"use --scheduler fifo, or --seeds 1")
    if plan.scheduler != "fifo" and epochs < 2:  # (so the settings' own errors below are only ever the user's)
        raise ConfigError(f"the {plan.scheduler.upper()} scheduler acts between epochs, so it needs at least 2 and this "
                          f"run has {epochs}: give more --epochs, or --scheduler fifo")
    if seeds > 1 and plan.scheduler == "asha":
        raise ConfigError(f"--seeds {seeds} with --scheduler asha stops each seed's trial on its own, so a "
                          f"configuration's mean would cover only the seeds ASHA let live; use --scheduler fifo, "
                          f"or --seeds 1")
    plan = plan.resolved(epochs)
    if plan.scheduler == "asha":
        if not 1 <= plan.grace_period < epochs:
            raise ConfigError(f"--grace-period must be at least 1 and below the study's {epochs} epochs (ASHA "
                              f"cuts trials after it), not {plan.grace_period}")
        if plan.reduction_factor < 2:
            raise ConfigError(f"--reduction-factor must be >= 2, not {plan.reduction_factor}")
        most = cutting_brackets(epochs, plan.grace_period, plan.reduction_factor)
        if plan.brackets > most:
            raise ConfigError(f"--brackets {plan.brackets}: bracket s first cuts at grace period x reduction factor^s "
                              f"({plan.grace_period} x {plan.reduction_factor}^s), and only {most} of them cut before "
                              f"the study's {epochs} epochs (the rest would run every trial to the end); use "
                              f"--brackets {most} or fewer, or more --epochs")
    if plan.scheduler == "pbt":
        if plan.search not in ("grid", "random"):
            raise ConfigError(f"--scheduler pbt explores by itself and cannot be combined with --search "
                              f"{plan.search}; use --search random")
        mutable = [k for k in space if k in MUTABLE_FIELDS]
        if not mutable:
            raise ConfigError(f"--scheduler pbt mutates {', '.join(MUTABLE_FIELDS)}, and this study's space "
                              f"varies none of them ({', '.join(space)})")
        network = [k for k in space if k in NETWORK_FIELDS]
        if network:
            raise ConfigError(f"--scheduler pbt copies weights between trials, so they must share one network; "
                              f"this study varies {', '.join(network)}")
        if not 1 <= plan.perturbation_interval < epochs:
            raise ConfigError(f"--perturbation-interval must be at least 1 and below the study's {epochs} epochs, "
                              f"not {plan.perturbation_interval}")
    return plan


def cutting_brackets(epochs: int, grace_period: int, reduction_factor: int) -> int:
    """How many of ASHA's Hyperband brackets make a cut before `epochs` (bracket s first at grace * rf**s)."""
    n, cut = 0, grace_period
    while cut < epochs:
        n, cut = n + 1, cut * reduction_factor
    return n


def asha_expected_trial_epochs(epochs: int, grace_period: int, reduction_factor: int, brackets: int = 1) -> float:
    """Epochs one trial runs on average under synchronous successive halving: every trial reaches the
    first rung, 1/rf of them the next, and so on up to `epochs` (asynchronous ASHA promotes a little more).
    With brackets, Ray's ASHA puts a trial in bracket s (first cut at grace * rf**s) with a probability
    proportional to e**(its number of rungs), so the later-cutting brackets get fewer trials."""
    if brackets > 1:
        sizes = [max(0, int(math.log(epochs / grace_period) / math.log(reduction_factor) - s + 1))
                 for s in range(brackets)]  # ray.tune.schedulers.async_hyperband._Bracket's MAX_RUNGS
        weights = [math.e ** (n - max(sizes)) for n in sizes]
        costs = [asha_expected_trial_epochs(epochs, grace_period * reduction_factor ** s, reduction_factor)
                 for s in range(brackets)]
        return sum(w * c for w, c in zip(weights, costs)) / sum(weights)
    rungs = []
    milestone = grace_period
    while milestone < epochs:
        rungs.append(milestone)
        milestone *= reduction_factor
    total, start = 0.0, 0
    for i, stop in enumerate([*rungs, epochs]):
        total += (stop - start) / reduction_factor ** i
        start = stop
    return total


# ---------------------------------------------------------------------------------------------
# Tune objects (imported lazily: nothing above needs Ray)


def tune_space(space: Mapping[str, Any], plan: SearchPlan) -> dict[str, Any]:
    """The study's space in the form the searcher takes: grid axes for Tune's generator, choices for the rest."""
    from ray import tune

    out = {}
    for key, value in space.items():
        if is_domain(value):
            out[key] = value
        elif plan.search in ("grid", "random"):
            out[key] = tune.grid_search(list(value))
        else:
            out[key] = tune.choice(list(value))
    return out


def searcher(plan: SearchPlan, metric: str, mode: str, seeds: int, max_concurrent: int | None,
             trials: list[dict[str, Any]] | None = None, optuna_db: str | None = None, name: str = "optuna",
             start: list[dict[str, Any]] | None = None, warm: Any = None) -> Any:
    """A Tune search algorithm; grid and random search run exactly `trials` (each a config over the param
    space, seed included) through Tune's BasicVariantGenerator, or Tune's own generator when None (fused).
    Optuna keeps its study `name` in the SQLite file `optuna_db` when given (what optuna-dashboard reads).
    A model-based searcher tries `start` first; Optuna is told `warm` (warmstart.WarmStart) as done."""
    if plan.search in ("grid", "random"):
        if trials is None:
            return None
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(points_to_evaluate=trials, max_concurrent=max_concurrent or 0)
    if plan.search == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per trial ("Trial 3 finished ...")

        storage = None
        if optuna_db is not None:
            storage = optuna.storages.RDBStorage(f"sqlite:///{optuna_db}")
        sampler = optuna_sampler(plan.sampler, plan.search_seed, plan.startup_trials)
        points, rewards = (warm.points, warm.rewards) if warm is not None else (start, None)
        alg = OptunaSearch(metric=metric, mode=mode, seed=None if sampler else plan.search_seed, sampler=sampler,
                           storage=storage, study_name=name, points_to_evaluate=points, evaluated_rewards=rewards)
    else:
        from ray.tune.search.hyperopt import HyperOptSearch

        alg = HyperOptSearch(metric=metric, mode=mode, random_state_seed=plan.search_seed, points_to_evaluate=start)
    if seeds > 1:
        from ray.tune.search import Repeater

        alg = Repeater(alg, repeat=seeds)  # each sampled configuration once per seed; the searcher sees the mean
    if max_concurrent:
        from ray.tune.search import ConcurrencyLimiter

        alg = ConcurrencyLimiter(alg, max_concurrent=max_concurrent)
    return alg


def optuna_sampler(name: str, seed: int, startup: int | None = None) -> Any:
    """Optuna's sampler called `name`, seeded, with `startup` random draws before its model (None: Optuna's
    default, 10); None for plain "tpe", which OptunaSearch builds itself (TPESampler(seed=seed): what every
    Optuna search here ran before --sampler)."""
    if name == "tpe" and startup is None:
        return None
    import optuna

    samplers = optuna.samplers
    first = {} if startup is None else {"n_startup_trials": startup}
    if name in ("tpe", "tpe-mv"):  # tpe-mv: one joint density over the fields instead of one per field
        return samplers.TPESampler(seed=seed, multivariate=name == "tpe-mv", **first)
    if name == "gp":
        return samplers.GPSampler(seed=seed, **first)
    if name == "cmaes":  # categorical fields go to its independent sampler (random), as Optuna warns
        return samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False, **first)
    if name == "qmc":
        return samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    return samplers.RandomSampler(seed=seed)


def settle_optuna_db(db: str, name: str) -> int:
    """Once a run is over, trials the database still calls RUNNING were suggested after Tune last saved
    the searcher, by a driver killed before it saved again: the resumed searcher never heard of them and
    none of them ran. Each is marked FAIL with a note, so that the database's COMPLETE and PRUNED trials
    are exactly the experiment's. Returns how many there were."""
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    study = optuna.load_study(study_name=name, storage=storage)
    orphans = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in orphans:
        storage.set_trial_user_attr(t._trial_id, "tune_cifar", "suggested before the driver was killed; never ran")
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    return len(orphans)


def drop_optuna_study(db: str, name: str) -> None:
    """A fresh start's searcher must not learn from a study left by a start that Tune never saved."""
    import optuna

    try:
        optuna.delete_study(study_name=name, storage=f"sqlite:///{db}")
    except KeyError:
        pass


def scheduler(plan: SearchPlan, space: Mapping[str, Any], epochs: int) -> Any:
    """A Tune trial scheduler, or None for FIFO (every trial to its end)."""
    if plan.scheduler == "fifo":
        return None
    if plan.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=plan.grace_period,
                             reduction_factor=plan.reduction_factor, brackets=plan.brackets)
    from ray.tune.schedulers import PopulationBasedTraining

    mutations = {k: (v if is_domain(v) else list(v)) for k, v in space.items() if k in MUTABLE_FIELDS}
    random.seed(plan.search_seed)  # PBT draws its explore steps from Python's global generator
    return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=plan.perturbation_interval,
                                   hyperparam_mutations=mutations, quantile_fraction=0.25,
                                   resample_probability=0.25)

"""Running a study through Ray Tune: param space, resources, the experiment folder, resume.

Layout under the storage path (local, NFS, s3:// or gs://):
    <storage>/<study>/                 one Tune experiment per study
        study.json                     what ran: study, space, base config, carried values, options
        results.parquet                one row per trial and epoch (written when the study ends)
        <trial folders>/               Tune's params.json, result.json, checkpoints, our run_info.json
    <storage>/all/<study>/ ...         the chained study; <storage>/all/chain.json records what it carried
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from tune_cifar import results, search, warmstart
from tune_cifar.config import ConfigError, TrainConfig
from tune_cifar.data import CifarData, data_summary
from tune_cifar.storage import is_nonempty_folder, is_uri, join, read_text, trial_path, write_atomic
from tune_cifar.search import SearchPlan
from tune_cifar.studies import Study, StudyError, load_study, scaled_settings
from tune_cifar.warmstart import WarmStart


class ExperimentError(RuntimeError):
    """The experiment folder cannot be used as asked (exists without --resume, nothing to resume...)."""


class Interrupted(RuntimeError):
    """Tune stopped before every trial ended (Ctrl-C, SIGTERM); the experiment can be resumed."""


@dataclass(frozen=True)
class RunOptions:
    storage_path: str = "./results"  # experiments go under <storage_path>/<study>
    data_dir: str = "./data"
    download: bool = True
    epochs: int | None = None  # overrides every study's epochs
    seeds: int = 1  # each configuration repeated with seeds 0..seeds-1
    gpus_per_trial: float | None = None  # None: 0.25 on a cluster with GPUs unless device is cpu, else 0
    cpus_per_trial: float = 1.0
    max_concurrent: int | None = None
    max_failures: int = 2  # retries of a crashed trial, from its last checkpoint
    # epochs between checkpoints, exactly; None: trainable.checkpoint_due's default (<= 30 per trial, >= 5 min apart)
    checkpoint_every: int | None = None
    resume: bool = False
    device: str = "auto"
    extra: tuple[tuple[str, Any], ...] = ()  # further TrainConfig overrides (--set, smoke's sizes)
    plan: tuple[tuple[str, Any], ...] = ()  # SearchPlan fields given on the command line (--search, --scheduler...)
    verbose: bool = False  # Tune's own trial tables instead of our progress lines
    fuse: int | None = None  # train up to this many compatible configurations as one fused model per trial
    start: tuple[str, ...] = ()  # --start FIELD=VALUE,...: configurations a model-based search tries first
    warm_start: str | None = None  # --warm-start: an earlier experiment's results, told to the searcher as done


# Options a resumed experiment takes anew (the trainable and Tune's failure handling are rebuilt);
# every other run option is part of the saved experiment, and a different value is refused.
APPLIED_ON_RESUME = ("checkpoint_every", "max_failures")
IDENTITY_OPTIONS = ("seeds", "epochs")  # they make another experiment, not another run of this one
TABLE_ROWS = 15  # configurations printed at the end of a study (a search may have dozens), best first
RECORDED_OPTIONS = ("seeds", "epochs", "gpus_per_trial", "cpus_per_trial", "max_concurrent", "max_failures",
                    "checkpoint_every", "device", "fuse")


# Search settings that belong to one scheduler: given under another, they would silently do nothing.
OPTUNA_DB = "optuna.db"  # an Optuna search's study, in the experiment folder (optuna-dashboard sqlite:///...)
PBT_CHECKPOINTS = 4  # per PBT member (pruning.py): a clone restores from a donor's latest while the donor saves on
SCHEDULER_SETTINGS = {"grace_period": "asha", "reduction_factor": "asha", "brackets": "asha",
                      "perturbation_interval": "pbt"}


@dataclass(frozen=True)
class Step:
    """One study as a run would run it: checked, with every setting in force."""
    study: Study  # at the run's epochs (Study.at_epochs: its epoch-counted settings scaled)
    search: SearchPlan  # resolved: the study's plan, the command line's over it, defaults filled in
    epochs: int  # every trial's epochs
    base: TrainConfig  # the study's base with the run's settings over it (a chain's carried values come later)
    own_epochs: int  # the study's own epochs, which `scaled` is relative to
    scaled: dict[str, tuple[Any, Any]]  # study setting -> (its own value, the value at `epochs`)
    start: tuple[dict[str, Any], ...] = ()  # configurations the searcher tries first (--start, or the study's START)
    warm: WarmStart | None = None  # an earlier experiment's results, told to the searcher before it starts


@dataclass(frozen=True)
class Plan:
    """What a command would run: the study itself, or a chain's studies in order."""
    study: Study
    steps: tuple[Step, ...]
    seeds: tuple[int, ...]  # every configuration runs once with each
    overrides: dict[str, Any]  # the run's TrainConfig settings over every study's base (--set, --epochs, ...)

    @property
    def dataset(self) -> str:
        """What every trial trains on (plan_run refuses a plan of two): the runner loads it before Ray starts."""
        return self.steps[0].base.dataset


def plan_run(study: Study, opts: RunOptions) -> Plan:
    """Every refusal a run makes before Ray starts, and what it would run: the one path that both
    `--dry-run` and a real start take (a new refusal goes here, or in plan_step, and applies to both)."""
    if study.chain and (opts.plan or opts.start or opts.warm_start):
        raise ConfigError(f"the {study.name!r} chain runs its studies as their own grids; search one study instead "
                          f"(e.g. python -m tune_cifar.run joint)")
    studies = [load_study(name) for name in study.chain] or [study]
    extra = dict(opts.extra)
    for sub in studies:
        varied = [k for k in extra if k in sub.space]
        if varied:
            where = f"the {study.name!r} chain's {sub.name!r} step" if study.chain else f"the {sub.name!r} study"
            raise ConfigError(f"--set {varied[0]}={extra[varied[0]]} fixes {varied[0]}, which {where} varies "
                              f"({search.describe(sub.space[varied[0]])}); drop it, or run a study that does not "
                              f"vary {varied[0]}")
        if "dataset" in sub.space:
            raise ConfigError(f"the {sub.name!r} study varies dataset ({search.describe(sub.space['dataset'])}): a run "
                              f"loads one dataset before its trials start; run the study once per dataset instead "
                              f"(--set dataset=NAME over a study that fixes the rest)")
    if "seed" in extra and opts.seeds > 1:
        raise ConfigError(f"--set seed={extra['seed']} with --seeds {opts.seeds}: --seeds runs every configuration "
                          f"with seeds 0..{opts.seeds - 1}; pass one of the two")
    steps = tuple(plan_step(sub, opts) for sub in studies)
    datasets = {step.study.name: step.base.dataset for step in steps}
    if len(set(datasets.values())) > 1:
        raise ConfigError(f"the {study.name!r} chain's studies train on different datasets ("
                          + ", ".join(f"{k}: {v}" for k, v in datasets.items()) + "); a chain carries winners on one "
                          "dataset: pass --set dataset=NAME for all of them")
    return Plan(study, steps, run_seeds(opts), _overrides(opts))


def plan_step(study: Study, opts: RunOptions) -> Step:
    """One (non-chain) study checked as plan_run checks it; run_study calls it again after a resume
    has taken the saved experiment's options."""
    own = study.base_config().epochs
    epochs = opts.epochs or own
    at_length = study.at_epochs(epochs)
    given = dict(opts.plan)
    plan = replace(at_length.plan, **given)
    for name, scheduler in SCHEDULER_SETTINGS.items():
        # (on --resume the saved plan fills every field; the experiment's own identity check compares them)
        if name in given and plan.scheduler != scheduler and not opts.resume:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} is a setting of {scheduler.upper()}, and this run's scheduler is "
                              f"{plan.scheduler}: add --scheduler {scheduler}, or drop {flag}")
    if "sampler" not in given and plan.search != "optuna" and not opts.resume:
        plan = replace(plan, sampler="tpe")  # the study's Optuna sampler, for a run that searches otherwise
    if "startup_trials" not in given and plan.startup_trials is not None and not opts.resume and (
            plan.search != "optuna" or plan.sampler not in search.STARTUP_SAMPLERS):
        plan = replace(plan, startup_trials=None)  # the study's setting, for a sampler this run does not use
    if "brackets" not in given and plan.scheduler != "asha" and not opts.resume:
        plan = replace(plan, brackets=1)
    if "brackets" not in given and plan.scheduler == "asha" and plan.brackets > 1 and not opts.resume:
        r = plan.resolved(epochs)  # the study's brackets at a shorter run: those that still cut before its end
        most = search.cutting_brackets(epochs, r.grace_period, r.reduction_factor) if r.reduction_factor >= 2 else 1
        plan = replace(plan, brackets=max(1, min(plan.brackets, most)))
    plan = search.check(study.space, plan, epochs, opts.seeds)
    if opts.fuse is not None:
        if opts.fuse < 1:
            raise ConfigError(f"--fuse must be >= 1, not {opts.fuse}")
        if plan.search != "grid" or plan.scheduler != "fifo":
            raise ConfigError(f"--fuse trains a grid's configurations together from start to end; it cannot be combined "
                              f"with --search {plan.search} --scheduler {plan.scheduler}, which pick or stop trials "
                              f"one by one (use --search grid --scheduler fifo, or drop --fuse)")
    base = at_length.base_config().replace(**_overrides(opts))
    search.validate_space(study.space, base)  # every grid point and domain edge under the run's settings
    scaled = {k: v for k, v in scaled_settings(study, epochs).items() if k not in given and k not in dict(opts.extra)}
    start, warm = start_points(at_length, plan, opts)
    return Step(at_length, plan, epochs, base, own, scaled, start, warm)  # (the user's values are not scaled)


def start_points(study: Study, plan: SearchPlan, opts: RunOptions) -> tuple[tuple[dict[str, Any], ...], WarmStart | None]:
    """The configurations a model-based search starts from (--start over the study's START) and the warm
    start (--warm-start), checked against the study's space; refused for searches that draw their own points."""
    if opts.warm_start is not None and not str(opts.warm_start).strip():
        raise ConfigError("--warm-start needs an experiment folder (<storage-path>/<study>), not an empty string")
    if opts.start and opts.warm_start:
        raise ConfigError("--start and --warm-start together: Tune's searchers take either points to run first or "
                          "points already evaluated, not both; pass one")
    asked = "--start" if opts.start else "--warm-start" if opts.warm_start else None
    if asked and plan.search not in search.SEARCH_PACKAGES:
        raise ConfigError(f"{asked} feeds a model-based searcher, and this search is {plan.search} (it runs the points "
                          f"it draws); add --search optuna")
    if opts.warm_start and plan.search != "optuna":
        raise ConfigError(f"--warm-start needs --search optuna: Ray 2.60's HyperOptSearch takes no evaluated points")
    if opts.resume:  # Tune restores the searcher as it was: what it started from is part of that
        return (), None
    if opts.warm_start:
        return (), warmstart.warm_start(opts.warm_start, study.space, study.metric, study.mode)
    if opts.start:
        return tuple(warmstart.parse_start(opts.start, study.space, plan.num_samples)), None
    if study.start and plan.search in search.SEARCH_PACKAGES:
        try:
            warmstart.check_points(study.start, study.space, f"the {study.name!r} study's START", plan.num_samples)
        except ConfigError as e:
            raise StudyError(str(e)) from None
        return study.start, None
    return (), None


def search_plan(study: Study, opts: RunOptions) -> SearchPlan:
    """The search in force for one study (plan_step's, checked)."""
    return plan_step(study, opts).search


def run_seeds(opts: RunOptions) -> tuple[int, ...]:
    """The seeds every configuration runs with: --set seed=K alone, else 0..seeds-1."""
    extra = dict(opts.extra)
    return (extra["seed"],) if "seed" in extra else tuple(range(opts.seeds))


def fused_groups(study: Study, opts: RunOptions, carried: dict[str, Any],
                 trials: list[TrainConfig] | None = None) -> list[list[dict[str, Any]]]:
    """The grid's configurations (times seeds; or `trials`) as fusable groups of at most opts.fuse, each a list
    of config dicts."""
    from tune_cifar.fused import group_configs

    cfgs = trials if trials is not None else planned_trials(study, opts, carried, study.plan)
    return [[cfgs[i].to_dict() for i in group] for group in group_configs(cfgs, opts.fuse)]


def planned_trials(study: Study, opts: RunOptions, carried: dict[str, Any], plan: SearchPlan) -> list[TrainConfig]:
    """Every trial grid or random search runs, in order: each of search.points (grid points, with their
    draws of the sampled fields) once per seed, so a configuration's trials differ in their seed alone."""
    base = study.base_config(carried).replace(**_overrides(opts))
    study.configs(carried)  # validates every grid point and domain edge before anything runs
    return [base.replace(**point, seed=seed) for point in search.points(study.space, plan) for seed in run_seeds(opts)]


def param_space(study: Study, opts: RunOptions, carried: dict[str, Any], plan: SearchPlan,
                trials: list[TrainConfig] | None = None) -> dict[str, Any]:
    """A full TrainConfig dict with the study's space over it (grid axes, domains or choices) and seeds.

    Grid and random search run exactly their planned trials, given to Tune's generator as points over
    this space (searcher_points): the space then only checks them.
    """
    from ray import tune

    base = study.base_config(carried).replace(**_overrides(opts))
    study.configs(carried)  # validates every grid point and domain edge before anything runs
    space: dict[str, Any] = base.to_dict()
    space.update(search.tune_space(study.space, plan))
    if opts.seeds > 1 and plan.search in ("grid", "random"):
        space["seed"] = tune.grid_search(list(range(opts.seeds)))  # (a Repeater gives other searchers their seeds)
    if opts.fuse:  # one trial per fused group, each holding its members' whole configurations
        space = {"members": tune.grid_search(fused_groups(study, opts, carried, trials))}
    return space


def searcher_points(study: Study, opts: RunOptions, carried: dict[str, Any], plan: SearchPlan,
                    trials: list[TrainConfig] | None = None) -> list[dict] | None:
    """What grid and random search hand Tune's generator: each planned trial's (or each of `trials`')
    varied fields and seed."""
    if opts.fuse or plan.search not in ("grid", "random"):
        return None
    keys = [*study.space, "seed"]
    trials = trials if trials is not None else planned_trials(study, opts, carried, plan)
    return [{k: getattr(cfg, k) for k in keys} for cfg in trials]


def reuse(study: Study, opts: RunOptions, carried: dict[str, Any], plan: SearchPlan,
          earlier: dict[str, pd.DataFrame]) -> tuple[list[TrainConfig] | None, list[tuple[str, str]]]:
    """(the trials to train, the earlier (study, trial id) each of the others repeats): a chained study's
    planned trial that is the same run (results.run_key) as one an earlier study ran to its end is reused,
    not trained again. None to train: the searcher decides (Optuna, HyperOpt)."""
    if plan.search not in ("grid", "random"):
        return None, []
    planned = planned_trials(study, opts, carried, plan)
    sources = results.reusable([c.to_dict() for c in planned], earlier) if earlier else [None] * len(planned)
    return [c for c, s in zip(planned, sources) if s is None], [s for s in sources if s is not None]


def _overrides(opts: RunOptions) -> dict[str, Any]:
    overrides = {"data_dir": opts.data_dir, "download": opts.download, "device": opts.device, **dict(opts.extra)}
    if opts.epochs is not None:
        overrides["epochs"] = opts.epochs
    return overrides


def resources(opts: RunOptions, cluster_gpus: float) -> dict[str, float]:
    """What each trial asks Ray for. CPU trials ask for no GPU, so they are not capped by GPU shares."""
    gpus = opts.gpus_per_trial
    if gpus is None:
        gpus = 0.25 if cluster_gpus > 0 and opts.device != "cpu" else 0.0
    return {"cpu": opts.cpus_per_trial, "gpu": gpus}


def study_record(study: Study, opts: RunOptions, carried: dict[str, Any], res: dict[str, float],
                 chain: str | None, plan: SearchPlan, data: CifarData | None = None) -> dict[str, Any]:
    """study.json's record. With `data`, also what the trials train on (`data`: data_summary, as each trial's
    run_info.json has it), so that the results still say so once the trial folders are gone."""
    base = study.base_config(carried).replace(**_overrides(opts)).to_dict()
    for key in study.space:
        base[key] = None
    space = {k: (search.describe(v) if search.is_domain(v) else v) for k, v in study.space.items()}
    return {"study": study.name, "title": study.title, "description": study.described(carried), "metric": study.metric,
            "mode": study.mode, "space": space, "base": base, "carried": carried, "seeds": opts.seeds,
            "search": asdict(plan), "strategy": plan.label(), "fuse": opts.fuse, "resources": res, "chain": chain,
            "options": {k: getattr(opts, k) for k in RECORDED_OPTIONS}} | (
                {"data": data_summary(data)} if data is not None else {})


def check_experiment_folder(path: str, record: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """Refuse to overwrite an experiment, or to resume one that is not there; return the saved record."""
    existing = read_text(join(path, "study.json"))
    saved = _parse_record(existing, path) if existing is not None else None
    if resume:
        if saved is None:
            raise ExperimentError(f"nothing to resume at {path}: no experiment there; drop --resume to start one")
        if _identity(saved) != _identity(record):
            raise ExperimentError(f"{path} holds a different experiment ({_differences(saved, record)}), so it "
                                  f"cannot be resumed with these options: pass the experiment's own, or another "
                                  f"--storage-path")
        return saved
    if saved is not None:
        what = ("the same study" if _identity(saved) == _identity(record)
                else f"another experiment ({_differences(saved, record)})")
        raise ExperimentError(f"{path} already holds {what}; pass --resume to continue it, or choose another "
                              f"--storage-path (nothing was overwritten)")
    if is_nonempty_folder(path):
        raise ExperimentError(f"{path} exists and is not an experiment of ours; choose another --storage-path")
    return None


def open_folder(study: Study, opts: RunOptions, path: str, carried: dict[str, Any], chain: str | None,
                given: set[str]) -> tuple[RunOptions, Step, dict[str, Any] | None]:
    """The experiment folder's refusals, and the options (a resume takes the saved ones) and the step a
    run there takes; the saved record when resuming. Resources are no part of an experiment's identity,
    so this needs no Ray."""
    if opts.resume:
        existing = read_text(join(path, "study.json"))
        if existing is not None:
            opts = resume_options(_parse_record(existing, path), opts, given)
    step = plan_step(study, opts)
    record = study_record(step.study, opts, carried, {}, chain, step.search)
    return opts, step, check_experiment_folder(path, record, opts.resume)


def check_storage(plan: Plan, opts: RunOptions, given: set[str] = frozenset()) -> Plan:
    """run_study's folder refusals (already there without --resume, nothing to resume, another experiment)
    made before Ray starts, for the dry run too: a study's folder, or a chain's first step's (the later
    steps' configurations depend on the earlier winners).

    Returns the plan the run takes there: `plan` itself, or on --resume each study with the options
    run_study's open_folder takes for it (the saved experiment's, for the options left out); a chain's
    step whose folder holds no study.json yet runs with this command's, as run() does."""
    study, storage, chain = plan.study, opts.storage_path, None
    first_opts = opts
    if study.chain:
        study, storage, chain = load_study(study.chain[0]), join(storage, study.name), study.name
        if opts.resume and read_text(join(storage, study.name, "study.json")) is None:
            first_opts = replace(opts, resume=False)  # as run() does: the chain stopped before this study began
    resumed, step, _ = open_folder(study, first_opts, join(storage, study.name), {}, chain, given)
    if not opts.resume:
        return plan
    steps = [step]
    for later in plan.steps[1:]:  # a chain's later steps, each as run() -> run_study -> open_folder plans it
        path = join(storage, later.study.name)
        existing = read_text(join(path, "study.json"))
        if existing is not None:
            later = plan_step(load_study(later.study.name), resume_options(_parse_record(existing, path), opts, given))
        steps.append(later)
    return replace(plan, steps=tuple(steps), seeds=run_seeds(resumed), overrides=_overrides(resumed))


def resume_options(saved: dict[str, Any], opts: RunOptions, given: set[str]) -> RunOptions:
    """The saved experiment's options, with the ones given on this command line applied where Tune can.

    An option given with another value than the saved one is applied if it is in APPLIED_ON_RESUME;
    otherwise it is refused by name (Tune restores its trials' resources, concurrency and search state
    from its own saved state, so it would silently be ignored).
    """
    recorded = saved.get("options") or {}
    for name in RECORDED_OPTIONS:
        if name not in recorded:
            continue
        if name in given and getattr(opts, name) != recorded[name]:
            if name in IDENTITY_OPTIONS:
                continue  # another experiment: check_experiment_folder says so
            if name not in APPLIED_ON_RESUME:
                flag = "--" + name.replace("_", "-")
                raise ExperimentError(
                    f"{flag} {getattr(opts, name)} differs from the experiment's {recorded[name]} and cannot change "
                    f"on --resume (Tune restores it from the saved experiment); drop {flag}, or start a new "
                    f"experiment under another --storage-path")
            continue
        opts = replace(opts, **{name: recorded[name]})
    saved_plan = saved.get("search") or {}
    return replace(opts, plan=tuple({**saved_plan, **dict(opts.plan)}.items()))  # the search too, unless given


def _parse_record(text: str, folder: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise ExperimentError(f"{folder}/study.json is unreadable; this folder cannot be checked, so nothing was "
                              f"written: repair or move it, or choose another --storage-path")
    return record


def _identity(record: dict[str, Any]) -> dict[str, str]:
    """What makes an experiment this one, setting by setting: a resume must match every one."""
    base = {k: v for k, v in record.get("base", {}).items() if k not in ("data_dir", "download", "device")}
    plan = {**asdict(SearchPlan()), **(record.get("search") or {})}  # (fields added since take their defaults)
    settings = {"study": record.get("study"), "space": record.get("space"), "seeds": record.get("seeds"),
                "fuse": record.get("fuse"), **base, **{f"search {k}": v for k, v in plan.items()}}
    return {k: json.dumps(v, sort_keys=True, default=str) for k, v in settings.items()}


def _differences(saved: dict[str, Any], record: dict[str, Any]) -> str:
    """`epochs 5 there, 3 here; seeds 1 there, 2 here`: each setting in which two experiments differ."""
    there, here = _identity(saved), _identity(record)
    names = [*there, *(k for k in here if k not in there)]
    return "; ".join(f"{k} {there.get(k, 'unset')} there, {here.get(k, 'unset')} here"
                     for k in names if there.get(k) != here.get(k))


def results_frame(result_grid: Any, study: Study, res: dict[str, float], path: str | None = None) -> pd.DataFrame:
    """Every trial Tune knows, one row per epoch; a trial with no readable epoch keeps one empty row.

    Each trial's epochs come from our own record (epochs.json, see progress.EpochRecorder) and from
    result.json read line by line, not from Tune's dataframe, which turns a file with one damaged line
    into no rows at all, and misses the lines Tune's logger drops when a trial restarts.
    """
    frames = []
    for result in result_grid:
        tune_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        # a fused group's trial is one row set per member, as if each had been a trial of its own
        for trial_id, member, config in results.member_trials(tune_id, dict(result.config)):
            folder = trial_path(path, result.path) if path else result.path  # (path: the experiment's, as given)
            records = results.read_trial_records(folder, read_text, member)
            frames.append(results.trial_frame(study.name, trial_id, config, records,
                                              errored=result.error is not None, ended=True, resources=res))
    return results.combine(frames)


def run_study(study: Study, data: CifarData, opts: RunOptions, storage: str, carried: dict[str, Any] | None = None,
              chain: str | None = None, given: set[str] = frozenset(),
              earlier: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """Run (or resume) one study under `<storage>/<study.name>`; return its results frame. A chained study
    reuses the trials of the `earlier` studies' frames that it would repeat (see reuse)."""
    import ray
    from ray import tune

    from tune_cifar.progress import EpochRecorder, StudyProgress
    from tune_cifar.pruning import CheckpointPruner
    from tune_cifar.trainable import TrialOptions, train_group, train_trial

    carried = carried or {}
    path = join(storage, study.name)
    opts, step, saved = open_folder(study, opts, path, carried, chain, given)
    study, plan, epochs = step.study, step.search, step.epochs  # the study at the run's length
    res = resources(opts, ray.cluster_resources().get("GPU", 0))
    to_train, sources = reuse(study, opts, carried, plan, earlier or {})
    copies = [results.reused_rows(study.name, s, earlier) for s in sources]
    record = {**study_record(study, opts, carried, res, chain, plan, data),
              "reused": {c["trial_id"].iloc[0]: c[results.REUSED_FROM].iloc[0] for c in copies}}
    if step.start:
        record["start"] = [dict(p) for p in step.start]
    if step.warm is not None:  # the budget comparison counts its cost, and names the strategy by it
        record["warm_start"] = step.warm.record()
        record["strategy"] = f"{plan.label()}, warm-started from {step.warm.source.rstrip('/').rsplit('/', 1)[-1]}"
    elif step.start:  # given points are prior knowledge too: not pooled with the runs that started blind
        n = len(step.start)
        record["strategy"] = f"{plan.label()}, started at {n} given point{'s' if n > 1 else ''}"
    if saved is not None:
        res = saved.get("resources") or res
        record = {**saved, "options": {k: getattr(opts, k) for k in RECORDED_OPTIONS}, "reused": record["reused"],
                  "data": record["data"]}

    options = TrialOptions(study=study.name, checkpoint_every=opts.checkpoint_every,
                           also_every=plan.perturbation_interval if plan.scheduler == "pbt" else None,
                           experiment_path=path)
    trainable = tune.with_resources(
        tune.with_parameters(train_group if opts.fuse else train_trial, data=data, options=options), res)
    n_configs = len(to_train) if to_train is not None else search.num_trials(study.space, plan, opts.seeds)
    n_trials = len(fused_groups(study, opts, carried, to_train)) if opts.fuse else n_configs
    progress = StudyProgress(study.name, study.metric, study.mode, list(study.space), n_trials, n_configs * epochs,
                             unit="groups" if opts.fuse else "trials")
    reused_note = f", {len(copies)} more reused from earlier studies (not trained again)" if copies else ""
    if n_trials == 0:  # every trial repeats one an earlier study ran: nothing to train
        write_atomic(join(path, "study.json"), json.dumps(record, indent=2, default=str))
        print(f"[{study.name}] {study.described(carried)}\n[{study.name}] no trial to train{reused_note}; results in "
              f"{path}", file=sys.stderr)
        return _write_results(path, results.combine(copies))
    # Optuna's study in SQLite beside the results (optuna-dashboard reads it live); SQLite needs a local folder
    optuna_db = str(Path(path).absolute() / OPTUNA_DB) if plan.search == "optuna" and not is_uri(path) else None
    callbacks = ([EpochRecorder(path)] + ([] if opts.verbose else [progress])
                 + ([CheckpointPruner(PBT_CHECKPOINTS)] if plan.scheduler == "pbt" else []))
    resume = opts.resume
    if resume and not tune.Tuner.can_restore(path):
        if is_uri(path) or any(p.is_dir() for p in Path(path).iterdir()):
            raise ExperimentError(f"nothing to resume at {path}: Tune saved no experiment state there")
        resume = False  # stopped between writing study.json and Tune's first save
    write_atomic(join(path, "study.json"), json.dumps(record, indent=2, default=str))
    if resume:
        print(f"[{study.name}] resuming {path}", file=sys.stderr)
        # Tune restores the searcher's and the scheduler's state with the experiment (ray issue 30861 was
        # the searcher silently replaced; tests/test_search.py checks the trial count after a resume).
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
        # Tune pickled the run config with the experiment; the failure budget and the progress lines are
        # the parts a resumed run may change, and Tune reads them from this object when fit() starts.
        run_config = tuner._local_tuner.get_run_config()
        run_config.failure_config = tune.FailureConfig(max_failures=opts.max_failures)
        run_config.callbacks = callbacks
        run_config.verbose = None if opts.verbose else 0
    else:
        points = searcher_points(study, opts, carried, plan, to_train)
        if optuna_db is not None and Path(optuna_db).exists():
            search.drop_optuna_study(optuna_db, study.name)
        alg = search.searcher(plan, study.metric, study.mode, opts.seeds, opts.max_concurrent, points,
                              optuna_db=optuna_db, name=study.name, start=list(step.start) or None,
                              warm=step.warm)
        samples = plan.num_samples * (opts.seeds if alg is not None else 1)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(study, opts, carried, plan, to_train),
            tune_config=tune.TuneConfig(
                metric=study.metric, mode=study.mode, search_alg=alg,
                scheduler=search.scheduler(plan, study.space, epochs),
                num_samples=len(points) if points is not None else samples,
                # a searcher is limited by its ConcurrencyLimiter; Tune's generator by this
                max_concurrent_trials=None if alg is not None else opts.max_concurrent,
                # Reusing trial actors saves ~4 s of process start-up per trial (python -m tune_cifar.bench, part 4).
                reuse_actors=True),
            run_config=tune.RunConfig(
                name=study.name, storage_path=storage if is_uri(storage) else str(Path(storage).absolute()),
                # The newest checkpoints, in the order saved: what resume needs (Tune syncs its experiment state
                # every num_to_keep checkpoints, so the one that state names is still there), and at a trial's
                # end its final epoch's (trainable.checkpoint_due always saves it). No score attribute: one
                # (val_acc) would keep an earlier best epoch instead, which nothing uses (ranking.py ranks final
                # epochs). Under PBT Tune's count goes wrong (pruning.py): CheckpointPruner keeps a few more there
                # (a clone restores from a donor's latest while the donor goes on saving), counted by folder.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None if plan.scheduler == "pbt" else 2),
                # The trials write run_info.json straight to storage (TrialOptions.experiment_path), so Tune
                # need not upload their working folders (a forced upload at every checkpoint and trial end).
                sync_config=tune.SyncConfig(sync_artifacts=False),
                failure_config=tune.FailureConfig(max_failures=opts.max_failures),
                callbacks=callbacks,
                verbose=None if opts.verbose else 0,
            ),
        )
    per_trial = f"{res['cpu']:g} CPU" + (f" and {res['gpu']:g} GPU" if res["gpu"] else "")
    what = (f"{n_configs} trials fused into {n_trials} groups of up to {opts.fuse}" if opts.fuse
            else f"{n_trials} trials") + reused_note
    print(f"[{study.name}] {study.described(carried)}\n[{study.name}] {what}, up to {epochs} epochs "
          f"({plan.label()}), {per_trial} each, carried {carried or 'nothing'}; results in {path}", file=sys.stderr)
    for line in live_views(path, optuna_db):
        print(f"[{study.name}] {line}", file=sys.stderr)
    with _quiet_tune(not opts.verbose):
        grid = tuner.fit()
    ended = grid.num_terminated + grid.num_errors
    if ended < n_trials:  # Tune returns normally on Ctrl-C/SIGTERM, with trials left unstarted or paused
        raise Interrupted(f"{ended} of {n_trials} trials of {study.name!r} ended; the rest are saved in {path}")
    if optuna_db is not None and (orphans := search.settle_optuna_db(optuna_db, study.name)):
        print(f"[{study.name}] {OPTUNA_DB}: {orphans} trial(s) suggested before the driver was killed never ran; "
              f"marked FAIL there", file=sys.stderr)
    df = _write_results(path, results.combine([results_frame(grid, study, res, path), *copies]))
    df.attrs["failed_trials"] = grid.num_errors
    empty = results.trials_without_results(df)
    if empty:
        print(f"[{study.name}] {len(empty)} trial(s) have no results (no epoch was recorded): {', '.join(empty)}",
              file=sys.stderr)
    if grid.num_errors:
        print(f"[{study.name}] {grid.num_errors} trial(s) failed; see {path}; `--resume` retries them", file=sys.stderr)
    return df


def _write_results(path: str, df: pd.DataFrame) -> pd.DataFrame:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    write_atomic(join(path, "results.parquet"), buf.getvalue())
    return df


@contextlib.contextmanager
def _quiet_tune(quiet: bool):
    """Without --verbose, Tune's own console output (experiment boxes, trial tables, INFO lines) gives way
    to our progress lines: its old reporter at verbosity 0 prints nothing, the new one still prints boxes."""
    if not quiet:
        yield
        return
    saved = os.environ.get("RAY_AIR_NEW_OUTPUT")
    tune_logger = logging.getLogger("ray.tune")
    level = tune_logger.level
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    tune_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        tune_logger.setLevel(level)
        if saved is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = saved


def run(study: Study, data: CifarData, opts: RunOptions, given: set[str] = frozenset()) -> dict[str, pd.DataFrame]:
    """Run a study, or a chain of studies each carrying the earlier winners; print each table."""
    if not study.chain:
        df = run_study(study, data, opts, opts.storage_path, given=given)
        _print_table(df, study)
        return {study.name: df}
    storage = join(opts.storage_path, study.name)
    carried: dict[str, Any] = {}
    chain_log: dict[str, Any] = {"order": list(study.chain), "carried": {}, "descriptions": {}, "winners": {}}
    frames = {}
    for name in study.chain:
        sub = load_study(name)
        chain_log["carried"][name] = {k: v for k, v in carried.items() if k not in sub.space}  # what it ran with
        chain_log["descriptions"][name] = sub.described(carried)
        sub_opts = opts
        if opts.resume and read_text(join(storage, name, "study.json")) is None:
            sub_opts = replace(opts, resume=False)  # the chain stopped before this study began
        df = run_study(sub, data, sub_opts, storage, carried, chain=study.name, given=given, earlier=dict(frames))
        _print_table(df, sub, carried)
        frames[name] = df
        won = results.winner(df, list(sub.space), sub.metric, sub.mode)
        if won is None:
            raise ExperimentError(f"study {name!r} has no finished configuration to carry forward "
                                  f"(every trial crashed, was interrupted or stopped early); see {join(storage, name)}")
        chain_log["winners"][name] = won
        carried = {**carried, **won}
        write_atomic(join(storage, "chain.json"), json.dumps(chain_log, indent=2, default=str))
    return frames


def live_views(path: str, optuna_db: str | None, installed: set[str] | None = None) -> list[str]:
    """The commands that show a study while it runs: TensorBoard over the trial folders (Tune writes
    every trial's epochs there as event files) and, for an Optuna search, optuna-dashboard over its study."""
    if installed is None:
        import importlib.util

        installed = {m for m in ("tensorboard", "optuna_dashboard") if importlib.util.find_spec(m) is not None}
    missing = "   (pip install 'tune-cifar[dashboards]' first)"
    where = path if is_uri(path) else str(Path(path).absolute())
    lines = [f"watch: tensorboard --logdir {where}" + ("" if "tensorboard" in installed else missing)]
    if optuna_db is not None:
        lines.append(f"watch: optuna-dashboard sqlite:///{optuna_db}" + ("" if "optuna_dashboard" in installed
                                                                          else missing))
    return lines


def next_steps(storage_path: str, study: Study, tensorboard: bool | None = None) -> str:
    """Where a study's results are, and the commands that look at them (TensorBoard's when it is installed:
    Tune writes its event files into every trial folder)."""
    if tensorboard is None:
        import importlib.util

        tensorboard = importlib.util.find_spec("tensorboard") is not None
    where = f"{str(storage_path).rstrip('/')}/{study.name}"
    held = ("chain.json and one folder per study, each with its results.parquet" if study.chain
            else "results.parquet, study.json and one folder per trial")
    lines = [f"results in {where} ({held}); next:",
             f"  python -m analysis.report {where}    # tables, figures, tests -> {where}/report/report.md",
             f"  python -m tune_cifar.export {where} --best --out {study.name}-best.pt    # the winner's final weights",
             f"  python -m tune_cifar.train --from {where}/<trial folder>/run_info.json    # rerun one trial, no Ray"]
    if tensorboard:
        lines.append(f"  tensorboard --logdir {where}    # every trial's curves")
    return "\n".join(lines)


def _print_table(df: pd.DataFrame, study: Study, carried: dict[str, Any] | None = None) -> None:
    if df.empty:
        print(f"\n== {study.name}: no results ==", flush=True)
        return
    table = results.final_table(df, list(study.space), study.metric, study.mode)
    shown = table.head(TABLE_ROWS)
    more = f"\n({len(table) - TABLE_ROWS} more configurations in results.parquet)" if len(table) > TABLE_ROWS else ""
    print(f"\n== {study.name}: {study.described(carried)}\n{results.format_table(shown)}{more}", flush=True)
    won = table[table["winner"] == "*"]
    if not won.empty:
        values = ", ".join(f"{k}={won.iloc[0][k]}" for k in study.space)
        print(f"winner ({study.metric}, {study.mode}): {values}\n", flush=True)

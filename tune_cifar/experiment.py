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

from tune_cifar import results, search
from tune_cifar.config import ConfigError
from tune_cifar.data import CifarData
from tune_cifar.storage import is_nonempty_folder, is_uri, join, read_text, trial_path, write_atomic
from tune_cifar.search import SearchPlan
from tune_cifar.studies import Study


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


# Options a resumed experiment takes anew (the trainable and Tune's failure handling are rebuilt);
# every other run option is part of the saved experiment, and a different value is refused.
APPLIED_ON_RESUME = ("checkpoint_every", "max_failures")
IDENTITY_OPTIONS = ("seeds", "epochs")  # they make another experiment, not another run of this one
TABLE_ROWS = 15  # configurations printed at the end of a study (a search may have dozens), best first
RECORDED_OPTIONS = ("seeds", "epochs", "gpus_per_trial", "cpus_per_trial", "max_concurrent", "max_failures",
                    "checkpoint_every", "device", "fuse")


def search_plan(study: Study, opts: RunOptions) -> SearchPlan:
    """The study's own plan with the command line's choices over it, checked (ConfigError if it cannot work)."""
    if study.chain and opts.plan:
        raise ConfigError(f"the {study.name!r} chain runs its studies as their own grids; search one study instead "
                          f"(e.g. python -m tune_cifar.run joint)")
    plan = replace(study.plan, **dict(opts.plan))
    epochs = opts.epochs or study.base_config().epochs
    plan = search.check(study.space, plan, epochs, opts.seeds)
    if opts.fuse is not None:
        if opts.fuse < 1:
            raise ConfigError(f"--fuse must be >= 1, not {opts.fuse}")
        if plan.search != "grid" or plan.scheduler != "fifo":
            raise ConfigError(f"--fuse trains a grid's configurations together from start to end; it cannot be combined "
                              f"with --search {plan.search} --scheduler {plan.scheduler}, which pick or stop trials "
                              f"one by one (use --search grid --scheduler fifo, or drop --fuse)")
    return plan


def fused_groups(study: Study, opts: RunOptions, carried: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The grid's configurations (times seeds) as fusable groups of at most opts.fuse, each a list of config dicts."""
    from tune_cifar.fused import group_configs

    overrides = _overrides(opts)
    cfgs = [c.replace(**overrides, seed=seed) for c in study.configs(carried) for seed in range(opts.seeds)]
    return [[cfgs[i].to_dict() for i in group] for group in group_configs(cfgs, opts.fuse)]


def param_space(study: Study, opts: RunOptions, carried: dict[str, Any], plan: SearchPlan) -> dict[str, Any]:
    """A full TrainConfig dict with the study's space over it (grid axes, domains or choices) and seeds."""
    from ray import tune

    base = study.base_config(carried).replace(**_overrides(opts))
    study.configs(carried)  # validates every grid point and domain edge before anything runs
    space: dict[str, Any] = base.to_dict()
    space.update(search.tune_space(study.space, plan))
    if opts.seeds > 1 and plan.search in ("grid", "random"):
        space["seed"] = tune.grid_search(list(range(opts.seeds)))  # (a Repeater gives other searchers their seeds)
    if opts.fuse:  # one trial per fused group, each holding its members' whole configurations
        space = {"members": tune.grid_search(fused_groups(study, opts, carried))}
    return space


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
                 chain: str | None, plan: SearchPlan) -> dict[str, Any]:
    base = study.base_config(carried).replace(**_overrides(opts)).to_dict()
    for key in study.space:
        base[key] = None
    space = {k: (search.describe(v) if search.is_domain(v) else v) for k, v in study.space.items()}
    return {"study": study.name, "title": study.title, "description": study.description, "metric": study.metric,
            "mode": study.mode, "space": space, "base": base, "carried": carried, "seeds": opts.seeds,
            "search": asdict(plan), "strategy": plan.label(), "fuse": opts.fuse, "resources": res, "chain": chain,
            "options": {k: getattr(opts, k) for k in RECORDED_OPTIONS}}


def check_experiment_folder(path: str, record: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """Refuse to overwrite an experiment, or to resume one that is not there; return the saved record."""
    existing = read_text(join(path, "study.json"))
    saved = _parse_record(existing, path) if existing is not None else None
    if resume:
        if saved is None:
            raise ExperimentError(f"nothing to resume at {path}: no experiment there; drop --resume to start one")
        if _identity(saved) != _identity(record):
            raise ExperimentError(f"{path} holds a different experiment ({_describe(saved)}); it cannot be "
                                  f"resumed as {_describe(record)}: pass the same options or another --storage-path")
        return saved
    if saved is not None:
        what = "the same study" if _identity(saved) == _identity(record) else f"another experiment ({_describe(saved)})"
        raise ExperimentError(f"{path} already holds {what}; pass --resume to continue it, or choose another "
                              f"--storage-path (nothing was overwritten)")
    if is_nonempty_folder(path):
        raise ExperimentError(f"{path} exists and is not an experiment of ours; choose another --storage-path")
    return None


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


def _identity(record: dict[str, Any]) -> tuple:
    base = {k: v for k, v in record.get("base", {}).items() if k not in ("data_dir", "download", "device")}
    return (record.get("study"), json.dumps(record.get("space"), sort_keys=True),
            json.dumps(base, sort_keys=True, default=str), record.get("seeds"),
            json.dumps(record.get("search") or asdict(SearchPlan()), sort_keys=True), record.get("fuse"))


def _describe(record: dict[str, Any]) -> str:
    return (f"study {record.get('study')!r}, space {record.get('space')}, seeds {record.get('seeds')}, "
            f"search {record.get('strategy') or 'grid'}")


def results_frame(result_grid: Any, study: Study, res: dict[str, float], path: str) -> pd.DataFrame:
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
            records = results.read_trial_records(trial_path(path, result.path), read_text, member)
            frames.append(results.trial_frame(study.name, trial_id, config, records,
                                              errored=result.error is not None, ended=True, resources=res))
    return results.combine(frames)


def run_study(study: Study, data: CifarData, opts: RunOptions, storage: str, carried: dict[str, Any] | None = None,
              chain: str | None = None, given: set[str] = frozenset()) -> pd.DataFrame:
    """Run (or resume) one study under `<storage>/<study.name>`; return its results frame."""
    import ray
    from ray import tune

    from tune_cifar.progress import EpochRecorder, StudyProgress
    from tune_cifar.trainable import TrialOptions, train_group, train_trial

    carried = carried or {}
    path = join(storage, study.name)
    if opts.resume:
        existing = read_text(join(path, "study.json"))
        if existing is not None:
            opts = resume_options(_parse_record(existing, path), opts, given)
    plan = search_plan(study, opts)
    epochs = opts.epochs or study.base_config().epochs
    res = resources(opts, ray.cluster_resources().get("GPU", 0))
    record = study_record(study, opts, carried, res, chain, plan)
    saved = check_experiment_folder(path, record, opts.resume)
    if saved is not None:
        res = saved.get("resources") or res
        record = {**saved, "options": {k: getattr(opts, k) for k in RECORDED_OPTIONS}}

    options = TrialOptions(study=study.name, checkpoint_every=opts.checkpoint_every,
                           also_every=plan.perturbation_interval if plan.scheduler == "pbt" else None,
                           experiment_path=path)
    trainable = tune.with_resources(
        tune.with_parameters(train_group if opts.fuse else train_trial, data=data, options=options), res)
    n_configs = search.num_trials(study.space, plan, opts.seeds)
    n_trials = len(fused_groups(study, opts, carried)) if opts.fuse else n_configs
    progress = StudyProgress(study.name, study.metric, study.mode, list(study.space), n_trials, n_configs * epochs,
                             unit="groups" if opts.fuse else "trials")
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
        run_config.callbacks = [EpochRecorder(path)] + ([] if opts.verbose else [progress])
        run_config.verbose = None if opts.verbose else 0
    else:
        alg = search.searcher(plan, study.metric, study.mode, opts.seeds, opts.max_concurrent)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(study, opts, carried, plan),
            tune_config=tune.TuneConfig(
                metric=study.metric, mode=study.mode, search_alg=alg,
                scheduler=search.scheduler(plan, study.space, epochs),
                num_samples=plan.num_samples * (opts.seeds if alg is not None else 1),
                # a searcher is limited by its ConcurrencyLimiter; Tune's generator by this
                max_concurrent_trials=None if alg is not None else opts.max_concurrent,
                # Reusing trial actors saves ~4 s of process start-up per trial (python -m tune_cifar.bench, part 4).
                reuse_actors=True),
            run_config=tune.RunConfig(
                name=study.name, storage_path=storage if is_uri(storage) else str(Path(storage).absolute()),
                # PBT clones a donor's latest checkpoint while the donor goes on saving: keep a few
                checkpoint_config=tune.CheckpointConfig(num_to_keep=4 if plan.scheduler == "pbt" else 2),
                # The trials write run_info.json straight to storage (TrialOptions.experiment_path), so Tune
                # need not upload their working folders (a forced upload at every checkpoint and trial end).
                sync_config=tune.SyncConfig(sync_artifacts=False),
                failure_config=tune.FailureConfig(max_failures=opts.max_failures),
                callbacks=[EpochRecorder(path)] + ([] if opts.verbose else [progress]),
                verbose=None if opts.verbose else 0,
            ),
        )
    per_trial = f"{res['cpu']:g} CPU" + (f" and {res['gpu']:g} GPU" if res["gpu"] else "")
    what = (f"{n_configs} trials fused into {n_trials} groups of up to {opts.fuse}" if opts.fuse
            else f"{n_trials} trials")
    print(f"[{study.name}] {study.description}\n[{study.name}] {what}, up to {epochs} epochs "
          f"({plan.label()}), {per_trial} each, carried {carried or 'nothing'}; results in {path}", file=sys.stderr)
    with _quiet_tune(not opts.verbose):
        grid = tuner.fit()
    ended = grid.num_terminated + grid.num_errors
    if ended < n_trials:  # Tune returns normally on Ctrl-C/SIGTERM, with trials left unstarted or paused
        raise Interrupted(f"{ended} of {n_trials} trials of {study.name!r} ended; the rest are saved in {path}")
    df = results_frame(grid, study, res, path)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    write_atomic(join(path, "results.parquet"), buf.getvalue())
    df.attrs["failed_trials"] = grid.num_errors
    empty = results.trials_without_results(df)
    if empty:
        print(f"[{study.name}] {len(empty)} trial(s) have no results (no epoch was recorded): {', '.join(empty)}",
              file=sys.stderr)
    if grid.num_errors:
        print(f"[{study.name}] {grid.num_errors} trial(s) failed; see {path}; `--resume` retries them", file=sys.stderr)
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
    from tune_cifar.studies import load_study

    if not study.chain:
        df = run_study(study, data, opts, opts.storage_path, given=given)
        _print_table(df, study)
        return {study.name: df}
    storage = join(opts.storage_path, study.name)
    carried: dict[str, Any] = {}
    chain_log: dict[str, Any] = {"order": list(study.chain), "carried": {}, "winners": {}}
    frames = {}
    for name in study.chain:
        sub = load_study(name)
        chain_log["carried"][name] = dict(carried)
        sub_opts = opts
        if opts.resume and read_text(join(storage, name, "study.json")) is None:
            sub_opts = replace(opts, resume=False)  # the chain stopped before this study began
        df = run_study(sub, data, sub_opts, storage, carried, chain=study.name, given=given)
        _print_table(df, sub)
        frames[name] = df
        won = results.winner(df, list(sub.space), sub.metric, sub.mode)
        if won is None:
            raise ExperimentError(f"study {name!r} has no finished configuration to carry forward "
                                  f"(every trial crashed, was interrupted or stopped early); see {join(storage, name)}")
        chain_log["winners"][name] = won
        carried = {**carried, **won}
        write_atomic(join(storage, "chain.json"), json.dumps(chain_log, indent=2, default=str))
    return frames


def _print_table(df: pd.DataFrame, study: Study) -> None:
    if df.empty:
        print(f"\n== {study.name}: no results ==", flush=True)
        return
    table = results.final_table(df, list(study.space), study.metric, study.mode)
    shown = table.head(TABLE_ROWS)
    more = f"\n({len(table) - TABLE_ROWS} more configurations in results.parquet)" if len(table) > TABLE_ROWS else ""
    print(f"\n== {study.name}: {study.description}\n{results.format_table(shown)}{more}", flush=True)
    won = table[table["winner"] == "*"]
    if not won.empty:
        values = ", ".join(f"{k}={won.iloc[0][k]}" for k in study.space)
        print(f"winner ({study.metric}, {study.mode}): {values}\n", flush=True)

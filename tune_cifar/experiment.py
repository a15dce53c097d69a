"""Running a study through Ray Tune: param space, resources, storage layout, results table.

Layout under the storage path (local, NFS, s3:// or gs://):
    <storage>/<study>/                 one Tune experiment per study
        study.json                     what ran: study, space, base config, carried values, resources
        results.parquet                one row per trial and epoch (written when the study ends)
        <trial folders>/               Tune's params.json, result.json, checkpoints, our run_info.json
    <storage>/all/<study>/ ...         the chained study; <storage>/all/chain.json records what it carried
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from tune_cifar.config import TrainConfig
from tune_cifar.data import CifarData
from tune_cifar.studies import Study

METRICS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "diverged", "test_loss", "test_acc",
           "images_per_s", "epoch_s", "timestamp"]
CONFIG_FIELDS = [f.name for f in fields(TrainConfig)]


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
    gpus_per_trial: float | None = None  # None: 0.25 when the cluster has GPUs, else 0
    cpus_per_trial: float = 1.0
    max_concurrent: int | None = None
    max_failures: int = 2  # retries of a crashed trial, from its last checkpoint
    checkpoint_every: int = 1  # epochs
    resume: bool = False
    device: str = "auto"
    extra: tuple[tuple[str, Any], ...] = ()  # further TrainConfig overrides (e.g. smoke's batch size)


def join(root: str, *parts: str) -> str:
    """Path join that keeps URIs (s3://bucket/x) intact."""
    if "://" in root:
        return "/".join([root.rstrip("/"), *parts])
    return str(Path(root, *parts).absolute())


def is_uri(path: str) -> bool:
    return "://" in path


def param_space(study: Study, opts: RunOptions, carried: dict[str, Any]) -> dict[str, Any]:
    """A full TrainConfig dict with grid_search over the study's space (and seeds)."""
    from ray import tune

    overrides = {"data_dir": opts.data_dir, "download": opts.download, "device": opts.device, **dict(opts.extra)}
    if opts.epochs is not None:
        overrides["epochs"] = opts.epochs
    base = study.base_config(carried).replace(**overrides)
    study.configs(carried)  # validates every grid point before anything runs
    space: dict[str, Any] = base.to_dict()
    for key, values in study.space.items():
        space[key] = tune.grid_search(values)
    if opts.seeds > 1:
        space["seed"] = tune.grid_search(list(range(opts.seeds)))
    return space


def study_record(study: Study, opts: RunOptions, carried: dict[str, Any], resources: dict[str, float],
                 chain: str | None) -> dict[str, Any]:
    space = param_space(study, opts, carried)
    base = {k: (v if not isinstance(v, dict) else None) for k, v in space.items()}
    return {"study": study.name, "description": study.description, "metric": study.metric, "mode": study.mode,
            "space": study.space, "base": base, "carried": carried, "seeds": opts.seeds,
            "resources": resources, "chain": chain}


def read_text(path: str) -> str | None:
    """A small file's text, or None when it does not exist; local paths and URIs alike."""
    if is_uri(path):
        import pyarrow.fs as pafs

        fs, inner = pafs.FileSystem.from_uri(path)
        if fs.get_file_info(inner).type != pafs.FileType.File:
            return None
        with fs.open_input_stream(inner) as f:
            return f.read().decode()
    return Path(path).read_text() if Path(path).is_file() else None


def check_experiment_folder(path: str, record: dict[str, Any], resume: bool) -> None:
    """Refuse to overwrite an experiment, or to resume one that is not there."""
    folder = path
    existing = read_text(join(path, "study.json"))
    saved = _parse_record(existing, folder) if existing is not None else None
    if resume:
        if saved is None:
            raise ExperimentError(f"nothing to resume at {folder}: no experiment there; drop --resume to start one")
        if _identity(saved) != _identity(record):
            raise ExperimentError(f"{folder} holds a different experiment ({_describe(saved)}); it cannot be "
                                  f"resumed as {_describe(record)}: pass the same options or another --storage-path")
        return
    if saved is not None:
        what = "the same study" if _identity(saved) == _identity(record) else f"another experiment ({_describe(saved)})"
        raise ExperimentError(f"{folder} already holds {what}; pass --resume to continue it, or choose another "
                              f"--storage-path (nothing was overwritten)")
    if not is_uri(path) and Path(path).exists() and any(Path(path).iterdir()):
        raise ExperimentError(f"{folder} exists and is not an experiment of ours; choose another --storage-path")


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
            json.dumps(base, sort_keys=True, default=str), record.get("seeds"))


def _describe(record: dict[str, Any]) -> str:
    return f"study {record.get('study')!r}, space {record.get('space')}, seeds {record.get('seeds')}"


def write_text(path: str, text: str | bytes) -> None:
    """Atomic on local disks (temp file + rename); through pyarrow's filesystems for URIs."""
    data = text.encode() if isinstance(text, str) else text
    if is_uri(path):
        import pyarrow.fs as pafs

        fs, inner = pafs.FileSystem.from_uri(path)
        fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)  # a no-op on object stores
        with fs.open_output_stream(inner) as f:
            f.write(data)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def results_frame(result_grid: Any, study: Study, resources: dict[str, float]) -> pd.DataFrame:
    """One row per trial and epoch; a trial restarted from a checkpoint keeps each epoch once (the last)."""
    frames = []
    for result in result_grid:
        history = result.metrics_dataframe
        if history is None or history.empty or "epoch" not in history:
            continue
        frame = history[[c for c in METRICS if c in history]].copy()
        frame.insert(0, "study", study.name)
        frame.insert(1, "trial_id", result.metrics.get("trial_id") or Path(result.path).name)
        frame.insert(2, "seed", int(result.config["seed"]))
        frame.insert(3, "status", "ERROR" if result.error else "TERMINATED")
        for name in CONFIG_FIELDS:
            frame[f"config/{name}"] = result.config.get(name)
        frame["resources/cpu"] = resources["cpu"]
        frame["resources/gpu"] = resources["gpu"]
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["study", "trial_id", "seed", "status", *METRICS])
    df = pd.concat(frames, ignore_index=True)
    for col in METRICS:
        if col not in df:
            df[col] = math.nan
    df = df.drop_duplicates(["trial_id", "epoch"], keep="last")
    return df.sort_values(["trial_id", "epoch"]).reset_index(drop=True)


def final_table(df: pd.DataFrame, study: Study) -> pd.DataFrame:
    """Each configuration's final metrics (mean over seeds), the winner by the study's metric marked."""
    keys = [f"config/{k}" for k in study.space]
    last = df.sort_values("epoch").groupby("trial_id").tail(1)
    cols = ["train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"]
    table = last.groupby(keys, dropna=False).agg(
        seeds=("seed", "nunique"), epochs=("epoch", "max"), diverged=("diverged", "any"),
        **{c: (c, "mean") for c in cols}).reset_index()
    table.columns = [c.removeprefix("config/") for c in table.columns]
    ranked = table[~table["diverged"].astype(bool)]
    table["winner"] = ""
    if not ranked.empty and ranked[study.metric].notna().any():
        best = ranked[study.metric].idxmax() if study.mode == "max" else ranked[study.metric].idxmin()
        table.loc[best, "winner"] = "*"
    return table


def winner(df: pd.DataFrame, study: Study) -> dict[str, Any]:
    table = final_table(df, study)
    row = table[table["winner"] == "*"]
    if row.empty:
        raise ExperimentError(f"study {study.name!r} has no finished, non-diverged configuration to carry forward")
    return {k: _plain(row.iloc[0][k]) for k in study.space}


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def format_table(table: pd.DataFrame) -> str:
    return table.to_string(index=False, float_format=lambda v: f"{v:.4f}")


def run_study(study: Study, data: CifarData, opts: RunOptions, storage: str, carried: dict[str, Any] | None = None,
              chain: str | None = None) -> pd.DataFrame:
    """Run (or resume) one study under `<storage>/<study.name>`; return its results frame."""
    import ray
    from ray import tune

    from tune_cifar.trainable import TrialOptions, train_trial

    carried = carried or {}
    path = join(storage, study.name)
    gpus = opts.gpus_per_trial
    if gpus is None:
        gpus = 0.25 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    resources = {"cpu": opts.cpus_per_trial, "gpu": gpus}
    record = study_record(study, opts, carried, resources, chain)
    check_experiment_folder(path, record, opts.resume)

    trainable = tune.with_resources(
        tune.with_parameters(train_trial, data=data,
                             options=TrialOptions(study=study.name, checkpoint_every=opts.checkpoint_every)),
        resources,
    )
    if opts.resume and not tune.Tuner.can_restore(path):
        if is_uri(path) or any(p.is_dir() for p in Path(path).iterdir()):
            raise ExperimentError(f"nothing to resume at {path}: Tune saved no experiment state there")
        opts = _replace(opts, resume=False)  # stopped between writing study.json and Tune's first save
    if opts.resume:
        print(f"[{study.name}] resuming {path}", file=sys.stderr)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        write_text(join(path, "study.json"), json.dumps(record, indent=2, default=str))
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(study, opts, carried),
            # Reusing trial actors saves ~4 s of process start-up per trial (python -m tune_cifar.bench, part 4).
            tune_config=tune.TuneConfig(metric=study.metric, mode=study.mode, reuse_actors=True,
                                        max_concurrent_trials=opts.max_concurrent),
            run_config=tune.RunConfig(
                name=study.name, storage_path=storage if is_uri(storage) else str(Path(storage).absolute()),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                # run_info.json is written in the trial's working folder; this copies it to storage
                # (a reused actor's working folder is not the trial folder).
                sync_config=tune.SyncConfig(sync_artifacts=True),
                failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            ),
        )
    n_trials = math.prod(len(v) for v in study.space.values()) * opts.seeds
    print(f"[{study.name}] {study.description}\n[{study.name}] {n_trials} trials, {resources['cpu']} CPU and "
          f"{resources['gpu']} GPU each, carried {carried or 'nothing'}; results in {path}", file=sys.stderr)
    grid = tuner.fit()
    ended = grid.num_terminated + grid.num_errors
    if ended < n_trials:  # Tune returns normally on Ctrl-C/SIGTERM, with trials left unstarted or paused
        raise Interrupted(f"{ended} of {n_trials} trials of {study.name!r} ended; the rest are saved in {path}")
    df = results_frame(grid, study, resources)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    write_text(join(path, "results.parquet"), buf.getvalue())
    df.attrs["failed_trials"] = grid.num_errors  # a trial that failed before its first epoch has no rows
    if grid.num_errors:
        print(f"[{study.name}] {grid.num_errors} trial(s) failed; see {path}; `--resume` retries them", file=sys.stderr)
    return df


def run(study: Study, data: CifarData, opts: RunOptions) -> dict[str, pd.DataFrame]:
    """Run a study, or a chain of studies each carrying the earlier winners; print each table."""
    from tune_cifar.studies import load_study

    if not study.chain:
        df = run_study(study, data, opts, opts.storage_path)
        _print_table(df, study)
        return {study.name: df}
    storage = join(opts.storage_path, study.name)
    carried: dict[str, Any] = {}
    chain_log: dict[str, Any] = {"order": list(study.chain), "carried": {}, "winners": {}}
    results = {}
    for name in study.chain:
        sub = load_study(name)
        chain_log["carried"][name] = dict(carried)
        sub_opts = opts
        if opts.resume and read_text(join(storage, name, "study.json")) is None:
            sub_opts = _replace(opts, resume=False)  # the chain stopped before this study began
        df = run_study(sub, data, sub_opts, storage, carried, chain=study.name)
        _print_table(df, sub)
        results[name] = df
        won = winner(df, sub)
        chain_log["winners"][name] = won
        carried = {**carried, **won}
        write_text(join(storage, "chain.json"), json.dumps(chain_log, indent=2, default=str))
    return results


def _replace(opts: RunOptions, **changes: Any) -> RunOptions:
    return RunOptions(**{**{f.name: getattr(opts, f.name) for f in fields(RunOptions)}, **changes})


def _print_table(df: pd.DataFrame, study: Study) -> None:
    if df.empty:
        print(f"\n== {study.name}: no results ==", flush=True)
        return
    table = final_table(df, study)
    print(f"\n== {study.name}: {study.description}\n{format_table(table)}", flush=True)
    won = table[table["winner"] == "*"]
    if not won.empty:
        values = ", ".join(f"{k}={won.iloc[0][k]}" for k in study.space)
        print(f"winner ({study.metric}, {study.mode}): {values}\n", flush=True)

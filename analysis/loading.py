"""Results on disk -> one tidy DataFrame (one row per trial and epoch), without Ray or the trainable.

An experiment folder is what one study writes: `study.json`, `results.parquet` (when the study
ended) and Tune's trial folders (`params.json` + `result.json` + `run_info.json`). A results root
holds several experiment folders, possibly nested (`<root>/all/<study>/`).
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from functools import cache
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from tune_cifar import ranking, schema
from tune_cifar.results import CONFIG_FIELDS, REUSED_FROM, fused_members, member_trials, read_trial_records, trial_status
from tune_cifar.storage import is_uri, join, list_files, read_bytes, read_text, write_atomic
from tune_cifar.schema import CONFIGURATION_FIELDS as IDENTITY_FIELDS, COUNTS, EVENTS, METRICS

KEY_COLUMNS = ("experiment", "study", "configuration", "trial_id", "seed", "status")
# Statuses of results written before schema.STATUSES (Tune's own words); TERMINATED is re-derived.
LEGACY_STATUS = {"ERROR": schema.ERROR, "UNFINISHED": schema.INCOMPLETE}
GENERATED_DATA_DIR = "<generated>"  # the data_dir a --smoke run records (tune_cifar/run.py)


class AnalysisError(Exception):
    """The path holds no results that analysis can read; the message says what was expected."""


def load(path: str | Path) -> pd.DataFrame:
    """Tidy frame of every trial and epoch under `path` (one experiment folder or a results root, or its URI)."""
    if is_uri(path):
        with readable(path) as folder:
            return load(folder)
    root = Path(path)
    frames = [load_experiment(folder, label) for label, folder in experiment_labels(root).items()]
    frames = [f for f in frames if not f.empty and f["epoch"].notna().any()]
    if not frames:
        raise AnalysisError(f"{root}: experiment folder(s) found but no trial has reported an epoch yet")
    return pd.concat(frames, ignore_index=True)


@contextlib.contextmanager
def readable(path: str | Path):
    """A local folder holding what analysis reads of `path`: the folder itself, or for a URI (s3://, gs://)
    its files without the checkpoints, copied into a temporary folder for as long as the block runs.
    AnalysisErrors raised in the block name the URI, not the copy."""
    if not is_uri(path):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="tune-cifar-read-") as parent:
        tmp = str(Path(parent, str(path).rstrip("/").rsplit("/", 1)[-1]))  # the same name: labels come from it
        try:
            files = list_files(path)
        except OSError as err:
            raise AnalysisError(f"{path}: cannot be read ({str(err).splitlines()[0]}); check the URI, "
                                f"AWS_ENDPOINT_URL and the credentials") from None
        for rel in files:
            if not any(part.startswith("checkpoint_") for part in rel.split("/")):  # (model states: large, unread)
                write_atomic(Path(tmp, rel), read_bytes(join(path, rel)))
        if not files:
            raise AnalysisError(f"{path}: no such file or folder")
        try:
            yield Path(tmp)
        except AnalysisError as err:
            raise AnalysisError(str(err).replace(tmp, str(path).rstrip("/"))) from None


def find_experiments(root: Path) -> list[Path]:
    if not root.exists():
        raise AnalysisError(f"{root}: no such file or folder")
    if not root.is_dir():
        raise AnalysisError(f"{root}: not a folder; pass a study's experiment folder or a results root")
    found = [root] if is_experiment(root) else list(_search(root, set()))
    if not found:
        hint = "; it looks like a single trial's folder, pass its parent" if _is_trial(root) else ""
        raise AnalysisError(
            f"{root} is not an experiment: no study.json, results.parquet or Tune trial folders "
            f"(params.json + result.json) in it or in its subfolders{hint}")
    return found


def experiment_labels(root: str | Path) -> dict[str, Path]:
    """`lr`, or `all/lr` for a study run inside the chained `all` study -> its folder, in report order.

    Two experiments with one label, or two chain folders with one name, are labelled by their paths under
    `root` instead (`a/all/lr`), so each chain's studies stay apart (read_chains keys them the same way)."""
    root = Path(root)
    folders = find_experiments(root)
    labels = [_label(f) for f in folders]
    chain_folders: dict[str, set[Path]] = {}
    for label, folder in zip(labels, folders):
        if "/" in label:
            chain_folders.setdefault(label.rsplit("/", 1)[0], set()).add(folder.parent)
    clashes = {l for l in labels if labels.count(l) > 1
               or ("/" in l and len(chain_folders[l.rsplit("/", 1)[0]]) > 1)}
    labels = [(f.relative_to(root).as_posix() or l) if l in clashes else l for l, f in zip(labels, folders)]
    return dict(sorted(zip(labels, folders), key=lambda item: _sort_key(item[0])))


def is_experiment(folder: Path) -> bool:
    return ((folder / "study.json").is_file() or (folder / "results.parquet").is_file()
            or any(_is_trial(child) for child in _subdirs(folder)))


def read_study(folder: Path) -> dict[str, Any]:
    """study.json, or a minimal stand-in for a copied folder that lost it."""
    path = Path(folder) / "study.json"
    meta = _read_json(path) if path.is_file() else {}
    meta.setdefault("study", Path(folder).name)
    meta.setdefault("metric", "val_acc")
    meta.setdefault("mode", "max")
    meta.setdefault("space", {})
    return meta


def read_chains(root: str | Path) -> dict[str, dict[str, Any]]:
    """Every chain.json under `root`, however deep, keyed as its studies' labels start (`all`, see
    experiment_labels), or by its folder's path under `root` when none of its studies ran."""
    root = Path(root)
    prefix = {folder.parent: label.rsplit("/", 1)[0]
              for label, folder in experiment_labels(root).items() if "/" in label}
    chains = {}
    for folder in [root, *_folders_under(root, set(), into_experiments=False)]:
        if (folder / "chain.json").is_file():
            key = prefix.get(folder) or (folder.relative_to(root).as_posix() if folder != root else folder.name)
            chains[key] = _read_json(folder / "chain.json")
    return chains


def study_metadata(root: str | Path) -> dict[str, dict[str, Any]]:
    """study.json of every experiment under `root`, keyed by the same label as load()'s `experiment`, with
    `data`: what its trials trained on (read_data)."""
    metadata = {}
    for label, folder in experiment_labels(root).items():
        meta = read_study(folder)
        metadata[label] = {**meta, "data": read_data(folder, meta)}
    return metadata


def read_data(folder: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """What an experiment's trials trained on, as the first trial's run_info.json records it (`generated`,
    `train_images`, `test_images`, `classes`; tune_cifar.data.data_summary), else as study.json does (the
    only record left once the trial folders are gone: a results.parquet + study.json copy). Results from
    before either record know only that `--smoke` data is `<generated>`; anything else is taken for the
    release."""
    for child in _subdirs(Path(folder)):
        info = _read_json(child / "run_info.json") if (child / "run_info.json").is_file() else {}
        if isinstance(info.get("data"), dict):
            return info["data"]
    if isinstance(meta.get("data"), dict):
        return meta["data"]
    return {"generated": meta.get("base", {}).get("data_dir") == GENERATED_DATA_DIR}


def load_experiment(folder: Path, label: str) -> pd.DataFrame:
    meta = read_study(folder)
    parquet = folder / "results.parquet"
    if parquet.is_file():  # written when the study ended: the whole study in one file
        try:
            df = pd.read_parquet(parquet)
        except (OSError, ValueError) as err:  # (pyarrow's ArrowInvalid is a ValueError)
            raise AnalysisError(f"{parquet}: unreadable results.parquet ({str(err).splitlines()[0]}); copy it "
                                f"again from where the study ran, or move it aside to read the trial folders "
                                f"instead") from None
    else:  # interrupted before the parquet: read what Tune wrote per trial
        df = _read_trial_folders(folder, meta)
    if df.empty:
        return df
    df = _normalise(df, meta)
    df.insert(0, "experiment", label)
    df["configuration"] = configuration_labels(df, list(meta["space"]))
    return df[_column_order(df)].sort_values(["trial_id", "iteration"], ignore_index=True)


def configuration_labels(df: pd.DataFrame, keys: Iterable[str] = ()) -> pd.Series:
    """`lr=0.05`, `mixup_alpha=off`: the study's varied keys, plus any other identity field that varies."""
    keys = [k for k in keys if f"config/{k}" in df]
    keys += [k for k in IDENTITY_FIELDS if k not in keys and f"config/{k}" in df
             and df[f"config/{k}"].nunique(dropna=False) > 1]
    if not keys:
        return pd.Series("base", index=df.index)
    parts = [df[f"config/{k}"].map(lambda v, k=k: f"{k}={format_value(k, v)}") for k in keys]
    return pd.concat(parts, axis=1).agg(", ".join, axis=1)


def format_value(field: str, value: Any) -> str:
    if field == "mixup_alpha" and value == 0:
        return "off"
    if isinstance(value, (float, np.floating)):
        return format(float(value), ".6g")
    return str(value)


def _read_trial_folders(folder: Path, meta: dict[str, Any]) -> pd.DataFrame:
    ended = {tid for tid, status in tune_statuses(folder).items() if status == "TERMINATED"}
    trials = [_read_trial(child, meta, ended) for child in _subdirs(folder) if _is_trial(child)]
    trials += [_reused_rows(folder, meta, trial_id, source) for trial_id, source in (meta.get("reused") or {}).items()]
    trials = [t for t in trials if not t.empty]
    return pd.concat(trials, ignore_index=True) if trials else pd.DataFrame()


def _reused_rows(folder: Path, meta: dict[str, Any], trial_id: str, source: str) -> pd.DataFrame:
    """A chained study's trial that repeated an earlier step's run has no folder of its own (it was not
    trained again): its rows are the source trial's (`<study>/<trial id>` in study.json's `reused`), read
    from that sibling study's folder, as results.parquet holds them."""
    study, _, source_id = source.partition("/")
    sibling = folder.parent / study
    if not is_experiment(sibling):
        return pd.DataFrame()
    rows = load_experiment(sibling, study)
    rows = rows[rows["trial_id"] == source_id].drop(columns=["experiment", "configuration"])
    return rows.assign(study=meta.get("study", folder.name), trial_id=trial_id, **{REUSED_FROM: source})


def tune_statuses(folder: Path) -> dict[str, str]:
    """Trial id -> Tune's status, from the newest experiment state Tune saved in `folder` (no Ray needed)."""
    states = sorted(Path(folder).glob("experiment_state-*.json"))
    try:
        entries = json.loads(states[-1].read_text()).get("trial_data", []) if states else []
        trials = [json.loads(e[0] if isinstance(e, list) else e) for e in entries]
        return {str(t["trial_id"]): str(t.get("status")) for t in trials}
    except (OSError, ValueError, KeyError, TypeError):  # unreadable: statuses then come from the files alone
        return {}


def _read_trial(folder: Path, meta: dict[str, Any], ended: set[str] = frozenset()) -> pd.DataFrame:
    """One Tune trial's rows; a fused group's trial gives each member's rows under its own trial id."""
    params = _read_json(folder / "params.json")
    info = _read_json(folder / "run_info.json") if (folder / "run_info.json").is_file() else {}
    tune_id = str(info.get("trial_id") or next((r.get("trial_id") for r in read_trial_records(str(folder), read_text)
                                                if r.get("trial_id")), None) or folder.name)
    resolved = info.get("members") or [{"config": info.get("config", {})}]
    frames = [_member_rows(folder, meta, trial_id, member, {**config, **resolved[member or 0].get("config", {})},
                           info, tune_id in ended)
              for trial_id, member, config in member_trials(tune_id, params)]
    return pd.concat(frames, ignore_index=True)


def _member_rows(folder: Path, meta: dict[str, Any], trial_id: str, member: int | None, params: dict[str, Any],
                 info: dict[str, Any], ended: bool) -> pd.DataFrame:
    lines = read_trial_records(str(folder), read_text, member)
    config = {**meta.get("base", {}), **params}
    rows = pd.DataFrame([{m: line.get(m) for m in (*METRICS, *EVENTS, *COUNTS)} for line in lines]
                        or [{m: math.nan for m in METRICS}])
    if lines:
        rows["epoch"] = rows["epoch"].fillna(pd.Series([line.get("training_iteration") for line in lines]))
    rows.insert(0, "study", meta["study"])
    rows.insert(1, "trial_id", trial_id)
    rows.insert(2, "seed", config.get("seed"))
    rows["diverged"] = ranking.diverged_epochs(rows)
    rows.insert(3, "status", _trial_status(folder, rows, config, ended))
    for name in CONFIG_FIELDS:
        rows[f"config/{name}"] = config.get(name)
    resources = info.get("resources") or meta.get("resources") or {}
    rows["resources/cpu"] = resources.get("cpu", math.nan)
    rows["resources/gpu"] = resources.get("gpu", math.nan)
    return rows


def _trial_status(folder: Path, rows: pd.DataFrame, config: dict[str, Any], ended: bool) -> str:
    """`ended`: Tune's saved state says the trial ended (TERMINATED), so short of its epochs it was stopped
    early by a scheduler; without that, a stop cannot be told from an interruption and is `incomplete`.

    error.txt says the trainable raised at least once: Tune appends to it per failure and keeps it after a
    retry succeeds, so a trial Tune then ended is not an error (nor, see trial_status, one that finished)."""
    epochs = pd.to_numeric(rows["epoch"], errors="coerce")
    last = None if epochs.isna().all() else int(epochs.max())
    return trial_status(last, int(config.get("epochs", 0) or 0), bool(rows["diverged"].fillna(False).astype(bool).any()),
                        errored=(folder / "error.txt").is_file() and not ended, ended=ended)


def _normalise(df: pd.DataFrame, meta: dict[str, Any]) -> pd.DataFrame:
    df = df.copy()
    if "study" not in df:
        df["study"] = meta["study"]
    if "seed" not in df and "config/seed" in df:
        df["seed"] = df["config/seed"]
    for name in [m for m in METRICS if m not in df]:
        df[name] = np.nan
    for name in [f"config/{f}" for f in CONFIG_FIELDS if f"config/{f}" not in df]:
        df[name] = meta.get("base", {}).get(name.removeprefix("config/"))
    for name in EVENTS:  # text per epoch (PBT's donor); results from before it have none
        df[name] = df[name].astype("string") if name in df else pd.Series(pd.NA, index=df.index, dtype="string")
    for name in ("status", "resources/cpu", "resources/gpu"):
        if name not in df:
            df[name] = "TERMINATED" if name == "status" else np.nan
    df["fused_members"] = fused_members(df)
    df["trial_id"] = df["trial_id"].astype(str)
    df["epoch"] = pd.to_numeric(df["epoch"], errors="coerce").astype("Int64")  # <NA>: a trial with no results
    if "iteration" not in df or df["iteration"].isna().all():  # results from before `iteration`: one row an epoch
        # a trial restarted from a checkpoint reports the epochs after it again; the later report stands
        df = df.drop_duplicates(["trial_id", "epoch"], keep="last")
        df["iteration"] = df.groupby("trial_id")["epoch"].rank(method="first")
    df["iteration"] = pd.to_numeric(df["iteration"], errors="coerce").astype("Int64")
    df = df.drop_duplicates(["trial_id", "iteration", "epoch"], keep="last")
    for name in [m for m in METRICS if m not in ("epoch", "diverged")] + ["resources/cpu", "resources/gpu"]:
        df[name] = pd.to_numeric(df[name], errors="coerce").astype(float)
    df["diverged"] = ranking.diverged_epochs(df)  # results written before the exploded-loss rule get it too
    df["status"] = _current_statuses(df)
    return df


def _current_statuses(df: pd.DataFrame) -> pd.Series:
    status = df["status"].astype(str).map(lambda s: LEGACY_STATUS.get(s, s))
    legacy = status == "TERMINATED"
    if legacy.any():
        for trial_id, g in df[legacy].groupby("trial_id"):
            last = None if g["epoch"].isna().all() else int(g["epoch"].max())
            status[g.index] = trial_status(last, int(g["config/epochs"].iloc[0]), bool(g["diverged"].any()),
                                           errored=False, ended=True)
    # by ranking's rule whatever was recorded, with trial_status's precedence (only a crash comes first)
    exploded = df.groupby("trial_id")["diverged"].transform("any")
    return status.mask(exploded & (status != schema.ERROR), schema.DIVERGED)


def _column_order(df: pd.DataFrame) -> list[str]:
    config = [f"config/{f}" for f in CONFIG_FIELDS]
    first = list(KEY_COLUMNS) + config + list(METRICS) + ["resources/cpu", "resources/gpu"]
    return first + [c for c in df.columns if c not in first]


def _search(folder: Path, seen: set[Path]) -> Iterable[Path]:
    """Experiment folders under `folder`, however deep (a results root may hold roots of its own)."""
    for child in _folders_under(folder, seen, into_experiments=False):
        if is_experiment(child):
            yield child


def _folders_under(folder: Path, seen: set[Path], into_experiments: bool = True) -> Iterable[Path]:
    """Every folder below `folder`, never into a trial folder (checkpoints), nor the same folder twice
    (a symlink loop); with into_experiments False, not below an experiment either."""
    for child in _subdirs(folder):
        real = child.resolve()
        if real in seen or _is_trial(child):
            continue
        seen.add(real)
        yield child
        if into_experiments or not is_experiment(child):
            yield from _folders_under(child, seen, into_experiments)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_trial(folder: Path) -> bool:
    return (folder / "params.json").is_file() and (folder / "result.json").is_file()


def _label(folder: Path) -> str:
    chain = read_study(folder).get("chain") if (folder / "study.json").is_file() else None
    if chain is None and (folder.parent / "chain.json").is_file():
        chain = folder.parent.name
    return f"{chain}/{folder.name}" if chain else folder.name


@cache
def _study_order() -> tuple[str, ...]:
    from tune_cifar.studies import study_order  # the order of `python -m tune_cifar.run --list`

    return tuple(study_order())


def _sort_key(label: str) -> tuple:
    parts = label.split("/")
    order = _study_order()
    position = order.index(parts[-1]) if parts[-1] in order else len(order)
    return (len(parts), parts[:-1], position, parts[-1])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise AnalysisError(f"{path}: unreadable JSON ({err})") from None



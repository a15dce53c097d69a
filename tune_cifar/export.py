"""One trial's final weights as a file that needs only torch and this package:

    python -m tune_cifar.export results/lr --best --out model.pt       # the study's winner
    python -m tune_cifar.export results/all --best                     # a chain's: its last study's winner
    python -m tune_cifar.export s3://bucket/runs/lr --trial 7564d_00001 --out lr-0.05.pt

The file holds the model's state_dict, the trial's resolved config, its final metrics, the normalisation
statistics of its training split, and the provenance of the trial (git revision, versions) and of the
export. `tune_cifar.models.load_exported(path)` reads it back (torch.load with weights_only=True).
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import re
import sys
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from tune_cifar import results
from tune_cifar.models import EXPORT_FORMAT
from tune_cifar.provenance import provenance
from tune_cifar.schema import FINAL_METRICS, FINISHED
from tune_cifar.storage import StorageError, exists, is_uri, join, list_files, read_bytes, read_text, write_atomic

CHECKPOINT = re.compile(r"checkpoint_(\d+)/state\.pt")
STATISTICS = ("normalisation_mean", "normalisation_std")  # saved in each checkpoint (data.DeviceData.statistics)


class ExportError(RuntimeError):
    """The trial cannot be exported (unknown id, no final weights...); the message says why and what to do."""


@dataclass(frozen=True)
class Trial:
    trial_id: str  # as results.parquet names it (a fused member: `<group id>-<index>`)
    folder: str  # the Tune trial folder holding its checkpoints (a fused member's: its group's)
    member: int | None  # its index in a fused group
    run_info: dict[str, Any]


def experiment_folder(path: str) -> str:
    """A study's folder: `path` itself, or for a chain's folder (chain.json, no study.json) its last study's,
    whose winner carries every earlier study's."""
    path = join(str(path).rstrip("/"))  # (a local path made absolute: the export records where it came from)
    if read_text(join(path, "study.json")) is None:
        chain = _json(join(path, "chain.json"))
        if chain and chain.get("order"):
            return join(path, chain["order"][-1])
    return path


def trial_folders(experiment: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """Tune trial id -> (its folder, its run_info.json), for every trial folder of the experiment."""
    try:
        files = list_files(experiment)
    except (OSError, ValueError) as e:
        raise ExportError(f"{experiment} cannot be read ({str(e).splitlines()[0]})") from None
    found = {}
    for rel in files:
        parts = rel.split("/")
        if len(parts) == 2 and parts[1] == "run_info.json":
            info = _json(join(experiment, rel)) or {}
            if info.get("trial_id"):
                found[info["trial_id"]] = (join(experiment, parts[0]), info)
    return found


def find_trial(experiment: str, trial_id: str) -> Trial:
    """The trial `trial_id` names: a trial of the experiment, a fused group's member, or the earlier study's
    trial that a chained study reused (results.parquet's `reused_from`)."""
    df = _results(experiment)
    if df is not None and trial_id in set(df["trial_id"]):
        source = df.loc[df["trial_id"] == trial_id, results.REUSED_FROM].dropna().astype(str)
        if len(source) and source.iloc[0]:
            study, original = source.iloc[0].split("/", 1)
            return find_trial(_sibling(experiment, study), original)
    folders = trial_folders(experiment)
    if trial_id in folders and not folders[trial_id][1].get("members"):
        return Trial(trial_id, folders[trial_id][0], None, folders[trial_id][1])
    group, _, index = trial_id.rpartition("-")
    if group in folders and index.isdigit() and int(index) < len(folders[group][1].get("members") or []):
        return Trial(trial_id, folders[group][0], int(index), folders[group][1])
    known = sorted(set(df["trial_id"]) if df is not None else _member_ids(folders))
    raise ExportError(f"no trial {trial_id!r} in {experiment}; its trials: {', '.join(known) or 'none'}")


def best_trial(experiment: str) -> str:
    """The winning configuration's trial by the runner's rule (ranking.py, via results.winner): of its finished
    trials (seeds), the one with the best final metric, then the lowest seed."""
    df = _results(experiment)
    if df is None:
        raise ExportError(f"{experiment} has no results.parquet (the study has not ended); pass --trial ID")
    record = _json(join(experiment, "study.json")) or {}
    keys, metric, mode = list(record.get("space") or {}), record.get("metric", "val_acc"), record.get("mode", "max")
    won = results.winner(df, keys, metric, mode) if keys else None
    last = results.last_rows(df)
    chosen = last[last["status"] == FINISHED]
    for key, value in (won or {}).items():
        chosen = chosen[chosen[f"config/{key}"] == value]
    if (keys and won is None) or chosen.empty:
        raise ExportError(f"{experiment}: no finished configuration to export (every trial crashed, diverged, was "
                          f"interrupted or stopped early)")
    chosen = chosen.sort_values([metric, "seed"], ascending=[mode == "min", True], kind="stable")
    return str(chosen["trial_id"].iloc[0])


def final_state(trial: Trial) -> tuple[dict[str, Any], dict[str, list[float]], str]:
    """(the TrainState dict of the trial's final epoch, its normalisation statistics, the checkpoint's path)."""
    saved = sorted((int(m.group(1)), rel) for rel in list_files(trial.folder) if (m := CHECKPOINT.fullmatch(rel)))
    if not saved:
        raise ExportError(f"trial {trial.trial_id} kept no weights: no checkpoint in {trial.folder} (a trial "
                          f"saves its final epoch since issue 21; rerun it with python -m tune_cifar.train --from "
                          f"{join(trial.folder, 'run_info.json')})")
    path = join(trial.folder, saved[-1][1])
    try:
        # weights_only: tensors and plain values only, as the trainable loads its checkpoints (trainable.py)
        state = _load(read_bytes(path))
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise ExportError(f"{path} cannot be loaded ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})") from None
    stats = {k: state.get(k) for k in STATISTICS}
    if trial.member is not None:
        state = state["members"][trial.member]
    epochs = int(state["config"]["epochs"])
    if int(state["epoch"]) != epochs:
        raise ExportError(f"trial {trial.trial_id} kept no final weights: its last checkpoint ({path}) is of epoch "
                          f"{state['epoch']} of {epochs} (it diverged, was stopped early, or has not finished)")
    if any(v is None for v in stats.values()):
        raise ExportError(f"{path} holds no normalisation statistics (saved before issue 21); rerun the trial with "
                          f"python -m tune_cifar.train --from {join(trial.folder, 'run_info.json')}")
    return state, stats, path


def export(experiment: str, trial_id: str) -> dict[str, Any]:
    """Everything the exported file holds (plain values and tensors only)."""
    trial = find_trial(experiment, trial_id)
    state, stats, checkpoint = final_state(trial)
    records = results.read_trial_records(trial.folder, read_text, trial.member)
    last = records[-1] if records else {}
    info = trial.run_info
    return {
        "format": EXPORT_FORMAT,
        "model": state["model"],
        "num_classes": int(state["model"]["linear.bias"].shape[0]),
        "config": state["config"],
        "metrics": {k: last.get(k) for k in ("epoch", *FINAL_METRICS, "diverged")},
        "normalisation": {"mean": stats["normalisation_mean"], "std": stats["normalisation_std"]},
        "data": info.get("data"),  # what it trained on: generated or the release, image and class counts
        "provenance": {"trial": {"git_revision": info.get("git_revision"), "versions": info.get("versions"),
                                 "hostname": info.get("hostname")},
                       "export": provenance()},
        "source": {"study": info.get("study"), "trial_id": trial.trial_id, "asked_for": trial_id,
                   "experiment": experiment, "checkpoint": checkpoint},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tune_cifar.export", description=__doc__.splitlines()[0])
    p.add_argument("experiment", help="a study's results folder (RESULTS/STUDY), a chain's (RESULTS/all: its last "
                                      "study), or its s3:// / gs:// URI")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--best", action="store_true", help="the study's winner, by the runner's ranking rule")
    which.add_argument("--trial", metavar="ID", help="a trial id as results.parquet names it")
    p.add_argument("--out", default="model.pt", help="the file to write, a path or URI (default model.pt)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = p.parse_args(argv)
    try:
        if exists(args.out) and not args.force:
            raise ExportError(f"{args.out} exists; pass --force to overwrite it, or another --out")
        experiment = experiment_folder(args.experiment)
        if not is_uri(experiment) and read_text(join(experiment, "study.json")) is None and not trial_folders(experiment):
            raise ExportError(f"{args.experiment} is not a study's results folder (no study.json, no trial folders)")
        trial_id = best_trial(experiment) if args.best else args.trial
        payload = export(experiment, trial_id)
        buf = io.BytesIO()
        import torch

        torch.save(payload, buf)
        write_atomic(args.out, buf.getvalue())
    except (ExportError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an object store's errors (endpoint, credentials), a full disk
        print(f"error: {(str(e).splitlines() or [type(e).__name__])[0]}", file=sys.stderr)
        return 2
    m, cfg, source = payload["metrics"], payload["config"], payload["source"]
    record = _json(join(experiment, "study.json")) or {}
    varied = ", ".join(f"{k}={cfg[k]}" for k in record.get("space", {}))
    reused = (f", which {record.get('study')}'s trial {trial_id} reused" if source["trial_id"] != trial_id else "")
    print(f"exported trial {source['trial_id']} of {source['study']}{reused} ({varied}, seed "
          f"{cfg['seed']}; epoch {m['epoch']}: val_acc {m['val_acc']:.4f}, test_acc {m['test_acc']:.4f}) to "
          f"{args.out} ({buf.tell() / 1e6:.1f} MB); load it with tune_cifar.models.load_exported({args.out!r})")
    return 0


def _load(data: bytes | None) -> dict[str, Any]:
    import torch

    if data is None:
        raise OSError("the file vanished while being read")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _results(experiment: str):
    import pandas as pd

    path = join(experiment, "results.parquet")
    data = read_bytes(path)
    try:
        return None if data is None else pd.read_parquet(io.BytesIO(data))
    except Exception as e:  # truncated or foreign files raise many different errors
        raise ExportError(f"{path} is unreadable ({type(e).__name__}); pass --trial ID to export without it") from None


def _sibling(experiment: str, study: str) -> str:
    """The folder of another study of the same chain (`<chain>/<study>`)."""
    parent = experiment.rsplit("/", 1)[0] if is_uri(experiment) else str(PurePosixPath(experiment).parent)
    return join(parent, study)


def _member_ids(folders: dict[str, tuple[str, dict[str, Any]]]) -> list[str]:
    return [m["trial_id"] for _, info in folders.values() for m in info.get("members", [])] + [
        tid for tid, (_, info) in folders.items() if not info.get("members")]


def _json(path: str) -> dict[str, Any] | None:
    text = read_text(path)
    try:
        value = json.loads(text) if text is not None else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


if __name__ == "__main__":
    sys.exit(main())

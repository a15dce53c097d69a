"""The driver's view of a running study, through Tune's callback interface (not by parsing its output).

StudyProgress prints one line whenever a trial ends, and otherwise at most every `interval` seconds
after an epoch:

    [lr] 2/3 trials, 31/45 trial-epochs, 1:02 elapsed, ~0:28 left, best val_acc 0.4125 (lr=0.05)

EpochRecorder keeps every result Tune receives in the trial's folder (epochs.json), the record that
results.parquet is built from. Tune's own result.json can lose lines: when a trial restarts (PBT's
exploits pause and restart trials; so do retries), Tune copies the storage copy of result.json
back over the local one, dropping the lines written since its last sync.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, Sequence, TextIO

from ray import tune

from tune_cifar import ranking
from tune_cifar.results import RECORD_FILE, lineage, parse_records, records_of
from tune_cifar.storage import join, read_text, trial_path, write_atomic


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class StudyProgress(tune.Callback):
    def __init__(self, study: str, metric: str, mode: str, keys: Sequence[str], trials: int, trial_epochs: int,
                 interval: float = 10.0, stream: TextIO | None = None, unit: str = "trials"):
        self.study, self.metric, self.mode, self.keys = study, metric, mode, list(keys)
        self.trials, self.trial_epochs = trials, trial_epochs
        self.interval = interval
        self.unit = unit  # "trials", or "groups" when each Tune trial trains a fused group
        self.stream = stream  # None: sys.stderr at the time of printing (Tune pickles callbacks; streams do not)
        self.start = time.monotonic()
        self.last_line = -math.inf
        self.epochs: dict[str, int] = {}  # trial id -> epochs reported (the latest epoch number)
        self.ended: set[str] = set()
        self.best: tuple[float, str] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "stream": None}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        epoch = result.get("epoch")
        if epoch is None:
            return
        members = result.get("members") if isinstance(result.get("members"), dict) else None
        if members:  # a fused group's epoch is one epoch of each member still training
            self.epochs[trial.trial_id] = self.epochs.get(trial.trial_id, 0) + len(members)
        else:
            self.epochs[trial.trial_id] = int(epoch)
        candidates = ([(m, trial.config["members"][int(k)]) for k, m in members.items()] if members
                      else [(result, trial.config)])
        for metrics, config in candidates:
            value = metrics.get(self.metric)
            if value is None or not math.isfinite(value) or metrics.get("diverged") \
                    or ranking.exploded([metrics.get(k) for k in ranking.LOSSES]).any():
                continue
            if self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0]):
                self.best = (value, ", ".join(f"{k}={_short(config.get(k))}" for k in self.keys))
        if time.monotonic() - self.last_line >= self.interval:
            self.line()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.add(trial.trial_id)
        self.line()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.add(trial.trial_id)
        self.line(note=f"trial {trial.trial_id} failed")

    def line(self, note: str = "") -> None:
        self.last_line = time.monotonic()
        elapsed = self.last_line - self.start
        done = sum(self.epochs.values())
        total = max(self.trial_epochs, done)
        running = len(self.ended) < self.trials  # (a scheduler that stops trials early leaves `total` unspent)
        left = f", ~{clock(elapsed / done * (total - done))} left" if running and 0 < done < total else ""
        best = f", best {self.metric} {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        print(f"[{self.study}] {len(self.ended)}/{self.trials} {self.unit}, {done}/{total} trial-epochs, "
              f"{clock(elapsed)} elapsed{left}{best}" + (f"; {note}" if note else ""), file=self.stream or sys.stderr, flush=True)


def _short(value: Any) -> str:
    return format(value, ".4g") if isinstance(value, float) else str(value)


class EpochRecorder(tune.Callback):
    """Keeps what each trial trained in the order it trained it (results.lineage): an epoch a PBT member
    trains again after cloning a donor behind it is a second record, not a replacement."""

    def __init__(self, experiment: str) -> None:
        self.experiment = experiment  # the experiment's path or URI, as the user gave it (trial.path has no scheme)
        self.records: dict[str, list[dict]] = {}  # trial id -> its records, in training order

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get("epoch") is None:
            return
        records = self.records.get(trial.trial_id)
        if records is None:  # first result since this driver started: continue what an earlier one wrote
            records = parse_records(read_text(join(trial_path(self.experiment, trial.path), RECORD_FILE)) or "[]")
        records = self.records[trial.trial_id] = lineage([*records, *records_of(result)])
        write_atomic(join(trial_path(self.experiment, trial.path), RECORD_FILE), json.dumps(records))

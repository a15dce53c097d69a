"""Where part 4's Tune overhead goes: timestamps taken inside the trial actors, and their sums.

`ray.init(runtime_env={"worker_process_setup_hook": HOOK})` makes Ray run install() in each worker process
that takes on the benchmark's work. It wraps the trainable's steps (the trial function, the training loop,
the data splits, torch.save, tune.report) so that every call appends one line (step, start, end, details)
to the file named by $TUNE_CIFAR_BENCH_EVENTS. The project's code carries no timing of its own; a step it
renames shows up as a missing name here (tests/test_bench.py runs part 4).

breakdown() turns one Tune run's events and one in-process run's figures into additive items: they sum to
the Tune run's seconds minus the in-process run's, which is the overhead part 4 reports.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

EVENTS_ENV = "TUNE_CIFAR_BENCH_EVENTS"
HOOK = "tune_cifar.bench.timing.install"

# Each item, in the order printed, with what it holds.
ITEMS = {
    "actor_start": "actor start, once (worker process, imports of torch/ray.tune)",
    "trainable_steps": "trainable's own steps (checkpoint lookup, run_info.json)",
    "data": "data splits on the device (DeviceData)",
    "model_and_loop": "model build and loop start",
    "training": "training + evaluation (slower in the actor)",
    "checkpoint_save": "checkpoint serialisation (torch.save)",
    "report_with_checkpoint": "tune.report with a checkpoint (copy to storage)",
    "report": "tune.report without (driver round trip)",
    "between_trials": "between trials (Tune: reset, scheduling)",
    "after_last_trial": "after the last trial (Tune's end, results.parquet)",
}


def install() -> None:
    path = os.environ.get(EVENTS_ENV)
    if not path:
        return
    import torch
    from ray import tune

    from tune_cifar import data, trainable

    trainable.train_trial = _timed(path, "trial", trainable.train_trial)
    trainable.train = _timed(path, "train", trainable.train)
    data.DeviceData.__init__ = _timed(path, "data", data.DeviceData.__init__)
    torch.save = _timed(path, "save", torch.save)
    tune.report = _timed(path, "report", tune.report,
                         lambda metrics, checkpoint=None, **_: {"checkpoint": checkpoint is not None,
                                                                "epoch_s": metrics.get("epoch_s")})


def _timed(path: str, step: str, fn: Callable, details: Callable[..., dict] | None = None) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.time()  # wall clock: compared with the driver's
        try:
            return fn(*args, **kwargs)
        finally:
            line = {"step": step, "start": start, "end": time.time(), **(details(*args, **kwargs) if details else {})}
            with open(path, "a") as f:
                f.write(json.dumps(line) + "\n")
    return wrapper


def read_events(path: str, start: float, end: float) -> list[dict[str, Any]]:
    """The events of the Tune run that went from `start` to `end` (wall clock); the file holds every run's."""
    try:
        with open(path) as f:
            lines = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
    return [e for e in lines if start <= e["start"] and e["end"] <= end]


def _within(event: dict[str, Any], spans: Iterable[dict[str, Any]]) -> bool:
    return any(s["start"] <= event["start"] and event["end"] <= s["end"] for s in spans)


def _total(events: Iterable[dict[str, Any]]) -> float:
    return sum(e["end"] - e["start"] for e in events)


def breakdown(events: list[dict[str, Any]], run_start: float, run_end: float,
              baseline: dict[str, float]) -> dict[str, float]:
    """Seconds per item (ITEMS) of one Tune run over the in-process baseline; they sum to
    (run_end - run_start) - baseline["total_s"].

    baseline: total_s, data_s (its one DeviceData), train_s (its train() calls), epochs_s (their epochs' epoch_s).
    """
    by = {step: [e for e in events if e["step"] == step] for step in ("trial", "train", "data", "save", "report")}
    trials = sorted(by["trial"], key=lambda e: e["start"])
    if not trials:
        raise RuntimeError("no trial timings came back from the Tune workers (is the worker setup hook installed?)")
    data_in_train = _total(e for e in by["data"] if _within(e, by["train"]))
    data_outside = _total(by["data"]) - data_in_train
    reports = by["report"]
    epochs_s = sum(e["epoch_s"] or 0.0 for e in reports)
    with_checkpoint = _total(e for e in reports if e["checkpoint"])
    plain = _total(e for e in reports if not e["checkpoint"])
    saves = _total(by["save"])
    baseline_rest = baseline["total_s"] - baseline["data_s"] - baseline["train_s"]  # its loop around train()
    return {
        "actor_start": trials[0]["start"] - run_start,
        "trainable_steps": _total(trials) - _total(by["train"]) - data_outside - baseline_rest,
        "data": _total(by["data"]) - baseline["data_s"],
        "model_and_loop": (_total(by["train"]) - epochs_s - saves - with_checkpoint - plain - data_in_train)
                          - (baseline["train_s"] - baseline["epochs_s"]),
        "training": epochs_s - baseline["epochs_s"],
        "checkpoint_save": saves,
        "report_with_checkpoint": with_checkpoint,
        "report": plain,
        "between_trials": sum(b["start"] - a["end"] for a, b in itertools.pairwise(trials)),
        "after_last_trial": run_end - trials[-1]["end"],
    }


def marginal_s(events: list[dict[str, Any]], baseline_calls_s: list[float]) -> float | None:
    """What one more trial adds through Tune: the median time from one trial's end to the next one's (its
    start-up, run and Tune's handling), minus the median in-process train() call, both over the trials
    after the first (the first pays the one-off costs: the actor's start, a fresh process's first step)."""
    trials = sorted((e for e in events if e["step"] == "trial"), key=lambda e: e["start"])
    if len(trials) < 2 or len(baseline_calls_s) < 2:
        return None
    spans = [b["end"] - a["end"] for a, b in itertools.pairwise(trials)]
    return statistics.median(spans) - statistics.median(baseline_calls_s[1:])

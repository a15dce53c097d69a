"""Part 4: Tune's overhead, a study of short trials through Tune against the same trainings in one process."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tune_cifar.bench import timing
from tune_cifar.bench.common import bench_images, log
from tune_cifar.data import NUM_CLASSES, CifarData, DeviceData
from tune_cifar.schema import FINISHED
from tune_cifar.train import train

# The runs compared, by name: the runner's default checkpoint cadence, and a checkpoint every epoch (the
# cadence before issue 14), so the storage written per trial-epoch is measured side by side.
VARIANTS = {"default": None, "every_epoch": 1}  # --checkpoint-every


def bench_tune(args: argparse.Namespace, device: torch.device) -> dict[str, Any] | None:
    """A study of short trials through the project's own runner (experiment.run_study: Tune, checkpoints,
    results table) vs train() on the same configurations in this process. One trial at a time with the same
    threads in both (--tune-threads, default 1 as a trial's default CPU), so the difference is Tune's cost,
    not a gain from side-by-side trials (part 3). Rounds interleave the runs and the fastest of each counts
    (see common.interleaved_best)."""
    try:
        import ray
    except ImportError:
        log("tune: Ray is not installed; part 4 skipped")
        return None
    from tune_cifar.studies import Study

    n_eval = max(1, args.tune_images // 4)
    x, y = bench_images(args.tune_images + n_eval, args.data_dir)
    data = CifarData(x, y, x[:n_eval], y[:n_eval], [str(i) for i in range(NUM_CLASSES)], source="bench")
    base = {"epochs": args.tune_epochs, "batch_size": args.batch_size,
            "val_fraction": n_eval / (args.tune_images + n_eval), "device": device.type, "download": False}
    study = Study("bench", "Tune overhead: short trials", base=base, space={"lr": [0.01 * (i + 1) for i in range(args.tune_trials)]})
    threads = args.tune_threads
    with tempfile.TemporaryDirectory() as scratch:
        events = os.path.join(scratch, "events.jsonl")
        os.environ[timing.EVENTS_ENV] = events  # Ray's workers inherit the driver's environment
        t0 = time.perf_counter()
        ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, log_to_driver=False,
                 configure_logging=False, runtime_env={"worker_process_setup_hook": timing.HOOK})
        init_s = time.perf_counter() - t0
        try:
            rounds = [_round(study, data, device, threads, events, scratch, r, args.tune_rounds)
                      for r in range(args.tune_rounds)]
        finally:
            ray.shutdown()
            os.environ.pop(timing.EVENTS_ENV, None)
    return summary(rounds, args, init_s)


def _round(study, data: CifarData, device: torch.device, threads: int, events: str, scratch: str, index: int,
           rounds: int) -> dict[str, Any]:
    log(f"tune: round {index + 1}/{rounds}: {len(study.configs())} trials one after another in this process")
    out = {"baseline": in_process(study, data, device, threads)}
    for name, every in VARIANTS.items():
        log(f"tune: round {index + 1}/{rounds}: the same trials through Ray Tune (run_study, {name} checkpoints)")
        out[name] = through_tune(study, data, device, threads, every, events, os.path.join(scratch, f"{name}{index}"))
    return out


def in_process(study, data: CifarData, device: torch.device, threads: int) -> dict[str, float]:
    """The trainings one after another in this process, on one DeviceData, with the trials' thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    epochs: list[float] = []
    try:
        configs = study.configs()
        t0 = time.perf_counter()
        splits = DeviceData(data, configs[0].val_fraction, configs[0].split_seed, device)
        data_s = time.perf_counter() - t0
        calls = []
        for cfg in configs:
            t1 = time.perf_counter()
            train(cfg, splits, lambda metrics, state: epochs.append(metrics["epoch_s"]))
            calls.append(time.perf_counter() - t1)
        total_s = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    return {"total_s": total_s, "data_s": data_s, "train_s": sum(calls), "epochs_s": sum(epochs), "calls_s": calls}


def through_tune(study, data: CifarData, device: torch.device, threads: int, checkpoint_every: int | None,
                 events: str, storage: str) -> dict[str, Any]:
    from tune_cifar.experiment import RunOptions, run_study

    # A trial trains on as many threads as it has CPUs (trainable.py); one trial at a time.
    opts = RunOptions(storage_path=storage, download=False, cpus_per_trial=threads, max_concurrent=1,
                      device=device.type, gpus_per_trial=1.0 if device.type == "cuda" else 0.0, max_failures=0,
                      checkpoint_every=checkpoint_every)
    with contextlib.redirect_stdout(sys.stderr):  # stdout: the table
        start = time.time()
        df = run_study(study, data, opts, storage)
        end = time.time()
    expected = len(study.configs()) * study.base_config().epochs
    if len(df) != expected or (df["status"] != FINISHED).any():
        raise RuntimeError(f"the benchmark's Tune study ended with {len(df)} results of {expected} expected, "
                           f"or with unfinished trials")
    return {"total_s": end - start, "start": start, "end": end, "storage": storage_bytes(Path(storage)),
            "events": timing.read_events(events, start, end)}


def storage_bytes(root: Path) -> dict[str, int]:
    """Bytes written under the storage path: every file there, plus the checkpoints Tune wrote and deleted
    since (CheckpointConfig(num_to_keep)), counted at the size of the trial's kept ones."""
    files = [p for p in root.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    checkpoints = deleted = 0
    for trial in {p.parent for p in root.rglob("checkpoint_*") if p.is_dir()}:
        kept = sorted(p for p in trial.glob("checkpoint_*") if p.is_dir())
        sizes = [sum(f.stat().st_size for f in c.rglob("*") if f.is_file()) for c in kept]
        written = max(int(c.name.split("_")[-1]) for c in kept) + 1  # Tune numbers them from 0, per trial
        checkpoints += sum(sizes)
        deleted += (written - len(kept)) * sum(sizes) // len(kept)
    return {"total": total + deleted, "checkpoints": checkpoints + deleted}


def summary(rounds: list[dict[str, Any]], args: argparse.Namespace, init_s: float) -> dict[str, Any]:
    trials, epochs = args.tune_trials, args.tune_epochs
    baseline = min((r["baseline"] for r in rounds), key=lambda b: b["total_s"])
    out: dict[str, Any] = {"trials": trials, "epochs": epochs, "train_images": args.tune_images,
                           "threads": args.tune_threads,
                           "rounds": len(rounds), "sequential_s": baseline["total_s"], "ray_init_s": init_s,
                           "variants": {}}
    for name, every in VARIANTS.items():
        best = min((r[name] for r in rounds), key=lambda v: v["total_s"])
        items = timing.breakdown(best["events"], best["start"], best["end"], baseline)
        overhead = best["total_s"] - baseline["total_s"]
        marginal = timing.marginal_s(best["events"], baseline["calls_s"])
        out["variants"][name] = {
            "checkpoint_every": every, "tune_fit_s": best["total_s"],
            "overhead_s_per_trial": overhead / trials, "overhead_s_per_result": overhead / (trials * epochs),
            # Split in two: what every further trial adds, and what the study pays once (actor start, imports).
            "marginal_overhead_s_per_trial": marginal,
            "one_off_s": overhead - trials * marginal if marginal is not None else None,
            "breakdown_s_per_trial": {k: v / trials for k, v in items.items()},
            "storage_bytes_per_trial_epoch": best["storage"]["total"] / (trials * epochs),
            "checkpoint_file_bytes_per_trial_epoch": best["storage"]["checkpoints"] / (trials * epochs)}
    default, every_epoch = out["variants"]["default"], out["variants"]["every_epoch"]
    out.update(tune_fit_s=default["tune_fit_s"], overhead_s_per_trial=default["overhead_s_per_trial"],
               overhead_s_per_result=default["overhead_s_per_result"],
               marginal_overhead_s_per_trial=default["marginal_overhead_s_per_trial"],
               storage_cut=every_epoch["storage_bytes_per_trial_epoch"] / default["storage_bytes_per_trial_epoch"])
    return out

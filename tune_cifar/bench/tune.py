"""Part 4: Tune's overhead, a study of short trials through Tune against the same trainings in one process."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from typing import Any

import torch

from tune_cifar.bench.common import bench_images, log
from tune_cifar.data import NUM_CLASSES, CifarData
from tune_cifar.schema import FINISHED
from tune_cifar.train import train


def bench_tune(args: argparse.Namespace, device: torch.device) -> dict[str, Any] | None:
    """A study of short trials through the project's own runner (experiment.run_study: Tune, checkpoints,
    results table) vs train() on the same configurations in this process. One trial at a time with every
    core in both, so the difference is Tune's cost, not a gain from side-by-side trials (part 3)."""
    try:
        import ray
    except ImportError:
        log("tune: Ray is not installed; part 4 skipped")
        return None
    from tune_cifar.experiment import RunOptions, run_study
    from tune_cifar.studies import Study

    n_eval = max(1, args.tune_images // 4)
    x, y = bench_images(args.tune_images + n_eval, args.data_dir)
    data = CifarData(x, y, x[:n_eval], y[:n_eval], [str(i) for i in range(NUM_CLASSES)], source="bench")
    base = {"epochs": args.tune_epochs, "batch_size": args.batch_size,
            "val_fraction": n_eval / (args.tune_images + n_eval), "device": device.type, "download": False}
    study = Study("bench", "Tune overhead: short trials", base=base, space={"lr": [0.01 * (i + 1) for i in range(args.tune_trials)]})
    log(f"tune: {args.tune_trials} trials one after another in this process")
    t0 = time.perf_counter()
    for cfg in study.configs():
        train(cfg, data)
    sequential_s = time.perf_counter() - t0

    log("tune: the same trials through Ray Tune (tune_cifar.experiment.run_study)")
    cores = len(os.sched_getaffinity(0))
    t0 = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, configure_logging=False)
    init_s = time.perf_counter() - t0
    try:
        with tempfile.TemporaryDirectory() as storage, contextlib.redirect_stdout(sys.stderr):  # stdout: the table
            opts = RunOptions(storage_path=storage, download=False, cpus_per_trial=cores, device=device.type,
                              gpus_per_trial=1.0 if device.type == "cuda" else 0.0, max_failures=0)
            t0 = time.perf_counter()
            df = run_study(study, data, opts, storage)
            tune_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
    results = len(df)
    if results != args.tune_trials * args.tune_epochs or (df["status"] != FINISHED).any():
        raise RuntimeError(f"the benchmark's Tune study ended with {results} results of "
                           f"{args.tune_trials * args.tune_epochs} expected, or with failed trials")
    return {"trials": args.tune_trials, "epochs": args.tune_epochs, "train_images": args.tune_images,
            "sequential_s": sequential_s, "ray_init_s": init_s, "tune_fit_s": tune_s,
            "overhead_s_per_trial": (tune_s - sequential_s) / args.tune_trials,
            "overhead_s_per_result": (tune_s - sequential_s) / results}

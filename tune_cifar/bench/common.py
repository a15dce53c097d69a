"""What every part of the benchmark shares: data of CIFAR-100's shape, timing, logging."""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import numpy as np
import torch

from tune_cifar.data import NUM_CLASSES, CifarData, DeviceData, read_cifar100, synthetic_images

_START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[bench {time.perf_counter() - _START:6.1f}s] {msg}", file=sys.stderr, flush=True)


def bench_images(n: int, data_dir: str | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n images (n, 3, 32, 32) uint8 and labels (n,) int64."""
    if data_dir:
        data = read_cifar100(data_dir)
        return np.resize(data.train_x, (n, 3, 32, 32)), np.resize(data.train_y, n)
    labels = np.random.default_rng(seed).permutation(np.resize(np.arange(NUM_CLASSES), n))
    return synthetic_images(labels, seed), labels


def device_data(n_train: int, n_eval: int, device: torch.device, data_dir: str | None) -> DeviceData:
    """A DeviceData whose training split holds exactly n_train images; val and test hold n_eval each."""
    x, y = bench_images(n_train + n_eval, data_dir)
    data = CifarData(x, y, x[:n_eval], y[:n_eval], [str(i) for i in range(NUM_CLASSES)], source="bench")
    return DeviceData(data, n_eval / (n_train + n_eval), 0, device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_best(runs: dict[str, Any], rounds: int) -> dict[str, float]:
    """Seconds of the fastest call of each run(), called in turn for `rounds` rounds after one untimed call
    each: on a shared machine a burst of other work then slows one round of every run, not one run."""
    for run in runs.values():
        run()
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def peak_rss_mib() -> float:
    """This process's peak resident memory. Not getrusage's ru_maxrss: Linux carries that across exec, so a
    child started by a big parent would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024  # kB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # other systems: KiB (macOS: bytes)

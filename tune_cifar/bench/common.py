"""What every part of the benchmark shares: data of CIFAR-100's shape, timing, logging."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch

from tune_cifar.config import TrainConfig
from tune_cifar.data import NUM_CLASSES, CifarData, DeviceData, read_cifar100, synthetic_images
from tune_cifar.train import train

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


class Budget:
    """One part's share of `--budget-s`: over() once its deadline has passed; allows_another() whether one
    more round as long as the longest so far still fits. No deadline (None): everything runs."""

    def __init__(self, deadline: float | None):
        self.deadline = deadline  # time.perf_counter() seconds
        self.longest = 0.0

    def over(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline

    def allows_another(self) -> bool:
        return self.deadline is None or time.perf_counter() + self.longest <= self.deadline

    def round_took(self, seconds: float) -> None:
        self.longest = max(self.longest, seconds)


class _Enough(Exception):
    """Raised from train()'s epoch callback once enough was timed (not a RuntimeError: train() lets it through)."""


def train_for(cfg: TrainConfig, dd: DeviceData, min_timed_s: float, max_epochs: int = 100) -> list[dict[str, Any]]:
    """train() for one warm-up epoch (compilation, cuDNN's first calls), then whole epochs until at least
    `min_timed_s` of training steps are timed (on a GPU a short epoch is dominated by its fixed costs, so a
    step count says little); every epoch's metrics, with `train_s`, the first being the warm-up."""
    epochs: list[dict[str, Any]] = []

    def on_epoch(metrics: dict[str, Any], state: Any) -> None:
        epochs.append({**metrics, "train_s": dd.num_train / metrics["images_per_s"]})
        if len(epochs) >= 2 and sum(e["train_s"] for e in epochs[1:]) >= min_timed_s:
            raise _Enough

    try:
        train(cfg.replace(epochs=max_epochs), dd, on_epoch)
    except _Enough:
        pass
    return epochs


def timed_figures(epochs: list[dict[str, Any]], dd: DeviceData, batch_size: int) -> dict[str, float]:
    """images/s and ms/step over the epochs after the warm-up (train_for); eval images/s over their evaluations."""
    timed = epochs[1:] or epochs
    train_s = sum(e["train_s"] for e in timed)
    eval_s = sum(e["epoch_s"] - e["train_s"] for e in timed)
    steps = -(-dd.num_train // batch_size) * len(timed)
    return {"timed_epochs": len(timed), "timed_s": train_s, "images_per_s": dd.num_train * len(timed) / train_s,
            "ms_per_step": 1000 * train_s / steps, "eval_images_per_s": len(dd.val_x) * len(timed) / max(eval_s, 1e-9)}


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


def reset_peak(device: torch.device) -> None:
    """Start peak_mib afresh: CUDA's allocator peak, or on Linux the process's peak resident set."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: "5" resets the peak resident set (VmHWM) to the current one
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_mib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mib()


def run_workers(cmds: list[list[str]], wait_s: float) -> list[dict[str, Any]]:
    """Start one process per command, let each warm up and print a ready line, then send every one "go" at
    once and return the JSON line each prints when its timed work is done (packing: K processes sharing
    one device)."""
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for cmd in cmds]
    try:
        for p in procs:
            if not p.stdout.readline():
                raise RuntimeError(f"packing worker exited with {p.wait()} before it was ready")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        return [json.loads(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.stdin.close()
                p.wait(timeout=wait_s)


def fmt(v: float | None, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def timed_worker(cfg: TrainConfig, dd: DeviceData) -> int:
    """The child's side of run_workers: train epoch 1 untimed, print a ready line, wait for "go", train epoch 2,
    and print its images, start, end (CLOCK_MONOTONIC: one clock for every process) and peak memory."""
    window: dict[str, float] = {}

    def on_epoch(metrics: dict[str, Any], state: Any) -> None:
        if metrics["epoch"] == 1:
            print(json.dumps({"ready": True}), flush=True)
            sys.stdin.readline()  # every process starts its timed epoch together
            window["start"] = time.perf_counter()
        else:
            window["end"] = window["start"] + dd.num_train / metrics["images_per_s"]

    reset_peak(dd.device)
    train(cfg, dd, on_epoch)
    print(json.dumps({"images": dd.num_train, **window, "peak_memory_mib": peak_mib(dd.device)}), flush=True)
    return 0

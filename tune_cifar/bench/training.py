"""Part 2: training steps, our loop in several variants against the template loop."""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from tune_cifar.bench.baseline import reference_epoch, reference_model, template_loader
from tune_cifar.bench.common import device_data, log
from tune_cifar.config import TrainConfig
from tune_cifar.data import DeviceData
from tune_cifar.models import build_model
from tune_cifar.train import train


def train_variants(device: torch.device) -> dict[str, dict[str, Any]]:
    """Named TrainConfig overrides; on cuda each speed feature alone, then together."""
    if device.type == "cpu":
        return {"fp32 NCHW": dict(precision="fp32", channels_last=False),
                "fp32 channels_last": dict(precision="fp32", channels_last=True)}
    return {"fp32 NCHW": dict(precision="fp32", channels_last=False),
            "+bf16": dict(precision="bf16", channels_last=False),
            "+channels_last": dict(precision="fp32", channels_last=True),
            "+compile": dict(precision="fp32", channels_last=False, compile=True),
            "bf16 channels_last": dict(precision="bf16", channels_last=True),
            "bf16 channels_last compile": dict(precision="bf16", channels_last=True, compile=True)}


def is_default(overrides: dict[str, Any], device: torch.device) -> bool:
    """Whether these overrides resolve to what TrainConfig() runs on `device`."""
    base = TrainConfig()
    precision = base.precision if base.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    return (overrides.get("precision") == precision and overrides.get("channels_last") == base.channels_last
            and overrides.get("compile", False) == base.compile)


def run_ours(cfg: TrainConfig, dd: DeviceData) -> dict[str, Any]:
    """train() over dd for 2 epochs (the first warms up and compiles); the second epoch's figures."""
    epochs: list[dict[str, Any]] = []
    if dd.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dd.device)
    train(cfg.replace(epochs=2), dd, lambda metrics, state: epochs.append(dict(metrics)))
    last = epochs[-1]
    train_s = dd.num_train / last["images_per_s"]
    out = {"train_s": train_s, "eval_s": last["epoch_s"] - train_s}  # the last epoch evaluates val and test
    if dd.device.type == "cuda":
        out["peak_memory_mib"] = torch.cuda.max_memory_allocated(dd.device) / 2**20
    return out


def bench_train(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    steps, batch = args.train_steps, args.batch_size
    dd = device_data(steps * batch, args.eval_images, device, args.data_dir)
    model, optimizer = reference_model(0, device)
    loader = template_loader(dd, batch, args.ref_workers)
    reference_epoch(model, optimizer, loader, device)  # warm-up epoch, as ours has
    variants = train_variants(device)
    best: dict[str, dict[str, Any]] = {}
    for round_ in range(args.train_repeats):  # rounds interleave the loops (see interleaved_best)
        log(f"train: round {round_ + 1}/{args.train_repeats}: reference loop, {steps} steps of {batch} "
            f"(DataLoader with {args.ref_workers} workers)")
        t0 = time.perf_counter()
        _, _, images = reference_epoch(model, optimizer, loader, device)
        ref_s = min(time.perf_counter() - t0, best.get("reference", {}).get("train_s", float("inf")))
        best["reference"] = {"train_s": ref_s}
        for name, overrides in variants.items():
            log(f"train: round {round_ + 1}/{args.train_repeats}: our loop, {name} (a warm-up and a timed epoch)")
            result = run_ours(TrainConfig(device=device.type, batch_size=batch, **overrides), dd)
            if name not in best or result["train_s"] < best[name]["train_s"]:
                best[name] = result
    del loader
    ref_rate = images / best["reference"]["train_s"]
    reference = {"images_per_s": ref_rate, "ms_per_step": 1000 * best["reference"]["train_s"] / steps,
                 "dataloader_workers": args.ref_workers}
    ours = {}
    for name, overrides in variants.items():
        r = best[name]
        ours[name] = {"images_per_s": dd.num_train / r["train_s"], "ms_per_step": 1000 * r["train_s"] / steps,
                      "eval_images_per_s": (len(dd.val_x) + len(dd.test_x)) / max(r["eval_s"], 1e-9),
                      "speedup": dd.num_train / r["train_s"] / ref_rate, "default": is_default(overrides, device),
                      **({"peak_memory_mib": r["peak_memory_mib"]} if "peak_memory_mib" in r else {})}
    default = next((n for n, v in ours.items() if v["default"]), max(ours, key=lambda n: ours[n]["images_per_s"]))
    out = {"steps": steps, "repeats": args.train_repeats, "batch_size": batch, "reference": reference, "ours": ours,
           "default_variant": default, "speedup": ours[default]["speedup"],
           "train_gflop_per_image": train_flops_per_image() / 1e9}
    if device.type == "cuda":
        out["host_syncs_per_step"] = host_syncs_per_step(dd, batch)
    return out


def train_flops_per_image() -> float:
    """Training FLOPs of MobileNet per 32x32 image: 3x the counted forward (multiply-add = 2), the usual
    estimate; torch's counter ignores groups in convolution_backward, so it overstates depthwise layers."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model("mobilenet")
    x = torch.randn(2, 3, 32, 32)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return 3 * counter.get_total_flops() / len(x)


def host_syncs_per_step(dd: DeviceData, batch: int) -> float | None:
    """Synchronising CUDA calls per training step, from torch's sync debug mode: one epoch of n
    steps and one of 2n differ only in steps, so (syncs(2n) - syncs(n)) / n is the per-step count."""
    import warnings

    def count(n_steps: int) -> int:
        part = DeviceData.__new__(DeviceData)
        part.__dict__.update(dd.__dict__, train_x=dd.train_x[: n_steps * batch], train_y=dd.train_y[: n_steps * batch])
        cfg = TrainConfig(device="cuda", batch_size=batch, epochs=1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train(cfg, part)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        return sum("synchroniz" in str(w.message) for w in caught)

    n = max(1, dd.num_train // batch // 2)
    try:
        return (count(2 * n) - count(n)) / n
    except Exception as e:  # sync debug mode is a diagnostic; never let it sink the benchmark
        log(f"host sync count unavailable: {e}")
        return None

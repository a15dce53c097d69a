"""Part 2: training steps, our loop in several variants against the template loop."""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from tune_cifar.bench.baseline import reference_epoch, reference_model, template_loader
from tune_cifar.bench.common import Budget, device_data, log, train_for
from tune_cifar.config import TrainConfig
from tune_cifar.data import DeviceData
from tune_cifar.models import build_model
from tune_cifar.train import precision_state, set_determinism, train


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


def run_ours(cfg: TrainConfig, dd: DeviceData, min_timed_s: float) -> dict[str, Any]:
    """train() over dd: a warm-up epoch (compilation, cuDNN's first calls), then whole epochs until at least
    min_timed_s of steps are timed (common.train_for); per-epoch seconds of training and of evaluation (val)."""
    if dd.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dd.device)
    epochs = train_for(cfg, dd, min_timed_s)
    timed = epochs[1:]
    out = {"train_s": sum(e["train_s"] for e in timed) / len(timed),
           "eval_s": sum(e["epoch_s"] - e["train_s"] for e in timed) / len(timed), "timed_epochs": len(timed),
           "precision_state": precision_state()}  # as the run left it: what it ran with
    if dd.device.type == "cuda":
        out["peak_memory_mib"] = torch.cuda.max_memory_allocated(dd.device) / 2**20
        out["peak_reserved_mib"] = torch.cuda.max_memory_reserved(dd.device) / 2**20
    return out


# The template ran with PyTorch's defaults, pinned before each of its epochs so it never inherits what a
# variant of ours set: TF32 convolutions (cuDNN's default), IEEE fp32 matmuls, no determinism.
REFERENCE_PRECISION = "fp32 with torch's defaults: TF32 convolutions, IEEE matmul"


def pin_reference_precision() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = True
    set_determinism(False)


def reference_run(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: Any, device: torch.device,
                  min_timed_s: float) -> tuple[float, int]:
    """Template epochs until at least min_timed_s: seconds and images."""
    seconds, images = 0.0, 0
    while True:
        pin_reference_precision()
        t0 = time.perf_counter()
        _, _, n = reference_epoch(model, optimizer, loader, device)
        seconds, images = seconds + time.perf_counter() - t0, images + n
        if seconds >= min_timed_s:
            return seconds, images


def bench_train(args: argparse.Namespace, device: torch.device, budget: Budget | None = None) -> dict[str, Any]:
    """Every variant in its own try: one that fails (a compile on a new GPU) is recorded and the others run.
    Rounds after the first run only while the part's budget allows another (cli.Budget)."""
    steps, batch = args.train_steps, args.batch_size
    min_s = min_timed_s(args, device)
    dd = device_data(steps * batch, args.eval_images, device, args.data_dir)
    model, optimizer = reference_model(0, device)
    loader = template_loader(dd, batch, args.ref_workers)
    pin_reference_precision()
    reference_epoch(model, optimizer, loader, device)  # warm-up epoch, as ours has
    variants = train_variants(device)
    best: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    ref = (float("inf"), 1)
    for round_ in range(args.train_repeats):  # rounds interleave the loops (see interleaved_best)
        t_round = time.perf_counter()
        if round_ and budget and not budget.allows_another():
            log(f"train: round {round_ + 1} skipped: the part's budget would not hold another")
            break
        log(f"train: round {round_ + 1}/{args.train_repeats}: reference loop, {steps} steps of {batch} "
            f"(DataLoader with {args.ref_workers} workers), at least {min_s:.1f} s timed")
        seconds, images = reference_run(model, optimizer, loader, device, min_s)
        if seconds / images < ref[0] / ref[1]:
            ref = (seconds, images)
        for name, overrides in variants.items():
            if budget and budget.over():
                errors.setdefault(name, "skipped: the part's time budget was spent")
                continue
            log(f"train: round {round_ + 1}/{args.train_repeats}: our loop, {name} (a warm-up epoch, then {min_s:.1f} s)")
            try:
                result = run_ours(TrainConfig(device=device.type, batch_size=batch, **overrides), dd, min_s)
            except Exception as e:  # noqa: BLE001 (recorded; the other variants still run)
                errors.setdefault(name, f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
                log(f"train: {name} failed: {errors[name]}")
                continue
            if name not in best or result["train_s"] < best[name]["train_s"]:
                best[name] = result
        if budget:
            budget.round_took(time.perf_counter() - t_round)
    del loader
    ref_rate = ref[1] / ref[0]
    reference = {"images_per_s": ref_rate, "ms_per_step": 1000 * batch / ref_rate,
                 "dataloader_workers": args.ref_workers, "precision": REFERENCE_PRECISION}
    ours = {}
    for name, overrides in variants.items():
        if name not in best:
            ours[name] = {"error": errors.get(name, "did not run"), "default": is_default(overrides, device)}
            continue
        r = best[name]
        ours[name] = {"images_per_s": dd.num_train / r["train_s"], "ms_per_step": 1000 * r["train_s"] / steps,
                      "eval_images_per_s": len(dd.val_x) / max(r["eval_s"], 1e-9),
                      "speedup": dd.num_train / r["train_s"] / ref_rate, "default": is_default(overrides, device),
                      "timed_epochs": r["timed_epochs"], "precision_state": r["precision_state"],
                      **{k: r[k] for k in ("peak_memory_mib", "peak_reserved_mib") if k in r}}
    ran = [n for n, v in ours.items() if "images_per_s" in v]
    if not ran:
        raise RuntimeError(f"every variant of our loop failed: {errors}")
    default = next((n for n in ran if ours[n]["default"]), max(ran, key=lambda n: ours[n]["images_per_s"]))
    out = {"steps": steps, "repeats": args.train_repeats, "batch_size": batch, "min_timed_s": min_s,
           "reference": reference, "ours": ours, "default_variant": default, "speedup": ours[default]["speedup"],
           "train_gflop_per_image": train_flops_per_image() / 1e9}
    if device.type == "cuda":
        out["host_syncs_per_step"] = host_syncs_per_step(dd, batch)
    return out


def min_timed_s(args: argparse.Namespace, device: torch.device) -> float:
    """--min-timed-s, or by default 2 s on a GPU (where a few steps are mostly fixed costs) and 0 on a CPU
    (one whole epoch: its steps take long enough)."""
    if args.min_timed_s is not None:
        return args.min_timed_s
    return 2.0 if device.type == "cuda" else 0.0


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

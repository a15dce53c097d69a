"""Part 3: packing, K training processes on one device at once (what fractional GPUs do)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

import torch

from tune_cifar.bench.common import Budget, device_data, log, run_workers, timed_worker
from tune_cifar.bench.report import FULL_DATA_BYTES
from tune_cifar.config import TrainConfig
from tune_cifar.train import pick_device, train


def pack_worker(args: argparse.Namespace) -> int:
    """Child of bench_pack: the default configuration through common.timed_worker, or (--footprint) one
    trial's device memory as a real trial holds it."""
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if args.footprint:
        return footprint_worker(args, device)
    dd = device_data(args.pack_steps * args.batch_size, args.batch_size, device, args.data_dir)
    return timed_worker(TrainConfig(device=device.type, batch_size=args.batch_size, epochs=2), dd)


def footprint_worker(args: argparse.Namespace, device: torch.device) -> int:
    """A trial's footprint on the device: TrainConfig's defaults (evaluation batches of 1000), the full CIFAR-100
    resident (a uint8 pad stands in for the images not generated), one epoch and its evaluation; then what the
    device has in use (mem_get_info: this process's CUDA context and allocator cache included)."""
    cfg = TrainConfig(device="cuda", batch_size=args.batch_size, epochs=1)
    dd = device_data(args.pack_steps * args.batch_size, cfg.eval_batch_size, device, args.data_dir)
    held = sum(t.numel() for t in (dd.train_x, dd.val_x, dd.test_x))
    pad = torch.empty(max(FULL_DATA_BYTES - held, 0), dtype=torch.uint8, device=device)  # noqa: F841 (held)
    train(cfg, dd)
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    print(json.dumps({"device_used_mib": (total - free) / 2**20, "total_mib": total / 2**20,
                      "reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20,
                      "allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20}), flush=True)
    return 0


def trial_footprint(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """The footprint worker's device memory in use minus what was in use before it started (this process's)."""
    free, total = torch.cuda.mem_get_info(device)
    before = (total - free) / 2**20
    cmd = [sys.executable, "-m", "tune_cifar.bench", "--worker", "--footprint", "--device", "cuda",
           "--batch-size", str(args.batch_size), "--pack-steps", str(args.pack_steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    child = json.loads(out.stdout.strip().splitlines()[-1])
    return {**child, "trial_device_mib": child["device_used_mib"] - before, "in_use_before_mib": before}


def advise(total_mib: float, trial_mib: float, rows: list[dict[str, Any]], headroom: float = 0.9) -> dict[str, Any]:
    """Trials per GPU: as many as fit in `headroom` of its memory, and no more than packing gains from (the
    smallest K within 5% of the best packed throughput measured): on a large GPU compute, not memory, is the limit."""
    by_memory = max(1, int(headroom * total_mib // trial_mib))
    best = max(r["images_per_s"] for r in rows)
    by_throughput = min(r["k"] for r in rows if r["images_per_s"] >= 0.95 * best)
    n = min(by_memory, by_throughput)
    why = (f"{by_memory} fit in {headroom:.0%} of {total_mib:,.0f} MiB at {trial_mib:,.0f} MiB each; packing gains "
           f"nothing beyond {by_throughput} (throughput)")
    return {"trials_per_gpu": n, "gpus_per_trial": 1 / n, "by_memory": by_memory, "by_throughput": by_throughput,
            "limited_by": "memory" if by_memory < by_throughput else "throughput", "why": why}


def bench_pack(args: argparse.Namespace, device: torch.device, budget: Budget | None = None) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0))
    rows = []
    for k in args.pack:
        if rows and budget and budget.over():
            log(f"pack: K={k} and above skipped: the part's time budget was spent")
            break
        threads = max(1, cores // k)  # on cpu the cores are what is shared; on cuda it keeps hosts from thrashing
        log(f"pack: {k} processes x {args.pack_steps} steps, {threads} threads each")
        cmd = [sys.executable, "-m", "tune_cifar.bench", "--worker", "--device", device.type, "--threads", str(threads),
               "--batch-size", str(args.batch_size), "--pack-steps", str(args.pack_steps)]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        reports = run_workers([cmd] * k, wait_s=60)
        wall = max(r["end"] for r in reports) - min(r["start"] for r in reports)
        images = sum(r["images"] for r in reports)
        rows.append({"k": k, "threads": threads if device.type == "cpu" else None, "images_per_s": images / wall,
                     "per_process_images_per_s": images / wall / k,
                     "peak_memory_mib": max(r["peak_memory_mib"] for r in reports)})
    single = next((r["images_per_s"] for r in rows if r["k"] == 1), None)
    for r in rows:
        r["vs_k1"] = r["images_per_s"] / single if single else None
    best = max(rows, key=lambda r: r["images_per_s"])
    out = {"steps": args.pack_steps, "batch_size": args.batch_size, "rows": rows, "best_k": best["k"],
           "packing_factor": best["vs_k1"]}
    if device.type == "cuda":
        log("pack: one trial's device footprint, in a fresh process")
        footprint = trial_footprint(args, device)
        out.update(footprint=footprint, trial_device_mib=footprint["trial_device_mib"],
                   advice=advise(footprint["total_mib"], footprint["trial_device_mib"], rows))
    return out

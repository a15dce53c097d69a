"""Part 3: packing, K training processes on one device at once (what fractional GPUs do)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch

from tune_cifar.bench.common import device_data, log, run_workers, timed_worker
from tune_cifar.config import TrainConfig
from tune_cifar.train import pick_device


def pack_worker(args: argparse.Namespace) -> int:
    """Child of bench_pack: the default configuration through common.timed_worker."""
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dd = device_data(args.pack_steps * args.batch_size, args.batch_size, device, args.data_dir)
    return timed_worker(TrainConfig(device=device.type, batch_size=args.batch_size, epochs=2), dd)


def bench_pack(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0))
    rows = []
    for k in args.pack:
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
    return {"steps": args.pack_steps, "batch_size": args.batch_size, "rows": rows, "best_k": best["k"],
            "packing_factor": best["vs_k1"]}

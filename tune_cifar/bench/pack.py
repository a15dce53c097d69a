"""Part 3: packing, K training processes on one device at once (what fractional GPUs do)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import torch

from tune_cifar.bench.common import device_data, log, peak_rss_mib
from tune_cifar.config import TrainConfig
from tune_cifar.train import pick_device, train


def pack_worker(args: argparse.Namespace) -> int:
    """Child of bench_pack: warm up, say ready, wait for the go line, train, print its figures."""
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dd = device_data(args.pack_steps * args.batch_size, args.batch_size, device, args.data_dir)
    cfg = TrainConfig(device=device.type, batch_size=args.batch_size, epochs=2)
    window: dict[str, float] = {}

    def on_epoch(metrics: dict[str, Any], state: Any) -> None:
        if metrics["epoch"] == 1:
            print(json.dumps({"ready": True}), flush=True)
            sys.stdin.readline()  # every process starts its timed epoch together
            window["start"] = time.perf_counter()  # CLOCK_MONOTONIC: one clock for all processes
        else:
            window["end"] = window["start"] + dd.num_train / metrics["images_per_s"]

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train(cfg, dd, on_epoch)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mib()
    print(json.dumps({"images": dd.num_train, **window, "peak_memory_mib": peak}), flush=True)
    return 0


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
        procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(k)]
        try:
            for p in procs:
                line = p.stdout.readline()
                if not line:
                    raise RuntimeError(f"packing worker exited with {p.wait()} before it was ready")
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            reports = [json.loads(p.stdout.readline()) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.stdin.close()
                    p.wait(timeout=60)
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

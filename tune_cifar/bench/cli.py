"""`python -m tune_cifar.bench`: parse the sizes, run the parts, print the table, write the JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from tune_cifar.bench.augment import bench_augment
from tune_cifar.bench.common import Budget, log
from tune_cifar.bench.fused import bench_fused, format_fused
from tune_cifar.bench.pack import bench_pack, pack_worker
from tune_cifar.bench.report import format_table, machine, projection
from tune_cifar.bench.training import bench_train
from tune_cifar.bench.tune import bench_tune
from tune_cifar.config import ConfigError
from tune_cifar.train import pick_device


# Each part's share of --budget-s, in the order they run; a part that finishes early leaves its time to the next.
BUDGET_SHARES = {"augment": 0.05, "train": 0.45, "pack": 0.15, "tune": 0.1, "fused": 0.25}
CUDA_BUDGET_S = 300.0  # --budget-s on cuda when not given: 5 minutes


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Every part in its own try: a failure is recorded under the part's name ({"error": ...}) and the next part
    runs; the JSON (--json) is rewritten after every part, so a later failure keeps what came before."""
    device = pick_device(args.device)
    if os.getloadavg()[0] > 0.5 * len(os.sched_getaffinity(0)):
        log(f"warning: load average {os.getloadavg()[0]:.1f} on {len(os.sched_getaffinity(0))} cores; other "
            f"processes will distort the figures (see load_average_1m in the JSON)")
    budget_s = args.budget_s if args.budget_s is not None else (CUDA_BUDGET_S if device.type == "cuda" else None)
    result: dict[str, Any] = {"machine": machine(device), "data": args.data_dir or "synthetic", "budget_s": budget_s,
                              "sizes": {k: v for k, v in vars(args).items() if k not in ("json", "worker", "threads")}}
    start, share = time.perf_counter(), 0.0
    parts = {
        "augment": lambda b: bench_augment(args, device),
        "train": lambda b: bench_train(args, device, b),
        "pack": lambda b: bench_pack(args, device, b),
        "tune": lambda b: bench_tune(args, device),
        "fused": lambda b: bench_fused(argparse.Namespace(
            k=args.fused_k, model="mobilenet", batch_size=args.batch_size, steps=args.fused_steps,
            repeats=args.fused_repeats, skip_pack=args.skip_pack, methods=args.fused_methods,
            min_timed_s=args.min_timed_s), device, b),
    }
    for name, part in parts.items():
        share += BUDGET_SHARES[name]
        if getattr(args, f"skip_{name}"):
            if name == "tune":
                result["tune"] = None
            continue
        budget = Budget(start + share * budget_s if budget_s is not None else None)
        if budget.over() and name != "train":
            result[name] = {"error": "skipped: --budget-s was spent before this part"}
            continue
        try:
            result[name] = part(budget)
        except Exception as e:  # noqa: BLE001 (recorded; the next part still runs)
            log(f"{name}: failed: {type(e).__name__}: {e}")
            result[name] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
        write_json(args.json, result)
    ok = {name: result.get(name) for name in parts if not failed(result.get(name))}
    view = {k: v for k, v in result.items() if not failed(v)}  # the machine, and the parts that ran
    result["projection"] = projection(view, device) if ok.get("train") else None
    result["load_average_1m_at_end"] = os.getloadavg()[0]
    result["elapsed_s"] = time.perf_counter() - start
    if device.type == "cpu" and ok.get("pack"):
        k1 = next((row for row in ok["pack"]["rows"] if row["k"] == 1), None)
        result["trial_memory_mib"] = k1["peak_memory_mib"] if k1 else None  # peak RSS of one training process
    elif ok.get("pack") and ok["pack"].get("trial_device_mib"):
        result["trial_memory_mib"] = ok["pack"]["trial_device_mib"]  # what one trial holds on the device, measured
        result["advice"] = ok["pack"].get("advice")
    two = (ok.get("augment") or {}).get("dataloader", {}).get("2")
    result["augment_speedup"] = two["speedup"] if two else None
    result["train_speedup"] = (ok.get("train") or {}).get("speedup")
    result["fused_speedup"] = (ok.get("fused") or {}).get("fused_speedup")  # best fused over best packing
    tune = ok.get("tune") or {}
    result["tune_overhead_s_per_trial"] = tune.get("overhead_s_per_trial")
    result["tune_marginal_overhead_s_per_trial"] = tune.get("marginal_overhead_s_per_trial")
    variants = tune.get("variants", {})
    # Everything written under the storage path (checkpoints, Tune's and our files) per trial-epoch.
    result["checkpoint_bytes_per_trial_epoch"] = variants.get("default", {}).get("storage_bytes_per_trial_epoch")
    result["checkpoint_bytes_per_trial_epoch_every_epoch"] = variants.get("every_epoch", {}).get(
        "storage_bytes_per_trial_epoch")
    write_json(args.json, result)
    return result


def failed(part: Any) -> bool:
    return isinstance(part, dict) and "error" in part and len(part) == 1


def write_json(path: str | None, result: dict[str, Any]) -> None:
    if not path:
        return
    with open(f"{path}.tmp", "w") as f:
        json.dump(result, f, indent=2)
    os.replace(f"{path}.tmp", path)


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tune_cifar.bench", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", metavar="PATH", help="write every figure here as JSON")
    p.add_argument("--data-dir", help="folder holding cifar-100-python/ (default: generated images)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--augment-images", type=int, default=8192, help="images per augmentation pass")
    p.add_argument("--workers", type=int_list, default=[0, 2], help="DataLoader workers to compare against")
    p.add_argument("--repeats", type=int, default=3, help="rounds of timed augmentation passes; the fastest counts")
    p.add_argument("--train-steps", type=int, default=10, help="training steps per timed epoch")
    p.add_argument("--train-repeats", type=int, default=2, help="rounds of timed epochs; each loop's fastest counts")
    p.add_argument("--ref-workers", type=int, default=2, help="DataLoader workers of the reference loop")
    p.add_argument("--eval-images", type=int, default=500, help="val and test images in the training part")
    p.add_argument("--pack", type=int_list, default=[1, 2, 4, 8], help="process counts K to pack on one device")
    p.add_argument("--pack-steps", type=int, default=3, help="timed steps per packed process")
    p.add_argument("--tune-trials", type=int, default=8)
    p.add_argument("--tune-images", type=int, default=64, help="training images per Tune trial")
    p.add_argument("--tune-epochs", type=int, default=2)
    p.add_argument("--tune-rounds", type=int, default=2, help="rounds of part 4's runs; the fastest of each counts")
    p.add_argument("--tune-threads", type=int, default=1,
                   help="CPUs of each Tune trial and threads of the in-process runs (default 1, a trial's default)")
    p.add_argument("--fused-k", type=int_list, default=[1, 2, 4, 8], help="fused group sizes K (part 5)")
    p.add_argument("--fused-steps", type=int, default=4, help="timed steps per member in part 5")
    p.add_argument("--fused-repeats", type=int, default=2, help="rounds of part 5; the fastest of each counts")
    p.add_argument("--fused-methods", action="store_true", help="part 5 also times grouped conv vs vmap per step")
    p.add_argument("--budget-s", type=float, default=None,
                   help=f"seconds for the whole run, shared among the parts (default {CUDA_BUDGET_S:.0f} on cuda, none "
                        f"on cpu); rounds after the first, and variants or K once a part's share is spent, are skipped")
    p.add_argument("--min-timed-s", type=float, default=None,
                   help="seconds of steps timed per run after its warm-up epoch (default 2 on cuda, one epoch on cpu)")
    for part in ("augment", "train", "pack", "tune", "fused"):
        p.add_argument(f"--skip-{part}", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a packing child process
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--footprint", action="store_true", help=argparse.SUPPRESS)  # a trial's device memory, measured
    args = p.parse_args(argv)
    if min(args.fused_steps, args.fused_repeats, *args.fused_k) < 1:
        p.error("part 5's sizes and K must be >= 1")
    if min(args.batch_size, args.augment_images, args.train_steps, args.train_repeats, args.pack_steps, args.eval_images,
           args.tune_trials, args.tune_images, args.tune_epochs, args.tune_rounds, args.tune_threads, args.repeats, *args.pack) < 1:
        p.error("sizes, counts and K must be >= 1")
    if (args.budget_s is not None and args.budget_s <= 0) or (args.min_timed_s is not None and args.min_timed_s < 0):
        p.error("--budget-s must be > 0 and --min-timed-s >= 0")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        p.error(f"--json {args.json}: no such folder")  # found at the first part's end, it lost that part
    if not args.worker:
        try:
            pick_device(args.device)
        except ConfigError as e:
            p.error(str(e))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return pack_worker(args)
    result = run_bench(args)
    print(format_table(result), flush=True)
    if result.get("fused") and not failed(result["fused"]):
        print("\n5. " + format_fused(result["fused"]), flush=True)
    if args.json:
        log(f"wrote {args.json}")
    errors = {n: result[n]["error"] for n in ("augment", "train", "pack", "tune", "fused") if failed(result.get(n))}
    for name, error in errors.items():
        print(f"{name}: {error}", file=sys.stderr)
    return 1 if any(not e.startswith("skipped") for e in errors.values()) else 0

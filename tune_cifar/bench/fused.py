"""Part 5: fused training (tune_cifar.fused) against K trials one after another and K processes at once.

`python -m tune_cifar.bench` runs it with the other parts (`--fused-k`, `--fused-steps`, `--skip-fused`);
on its own, with its fusion-method comparison:

    python -m tune_cifar.bench.fused [--device cpu|cuda] [--k 1,2,4,8] [--steps 4] [--json PATH]
    python -m tune_cifar.bench.fused --methods-only    # grouped conv vs vmap vs plain models, per step

For each K: (fused) the K configurations as one model through train_fused; (sequential) K train()
runs in this process, one after another; (packed) K processes running train() at once, sharing the
device (on cpu each gets cores // K threads). Each times its second epoch (the first warms up), in
interleaved rounds, fastest round counts. On cuda the fused step is also timed captured in a CUDA
graph (one replay per step, the batch copied into static inputs). Images/s are of all K members
together. Peak memory: on cuda max_memory_allocated (packed: summed over the processes); on cpu the
peak resident set (VmHWM, reset before each in-process run; packed: summed, which counts shared
library pages once per process).

`bench_fused(args, device)` returns the figures as a dict, `format_fused(result)` the table;
`add_fused_args(parser)` adds this module's flags to another command line.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from tune_cifar.bench.common import Budget, _Enough, fmt, peak_mib, reset_peak, run_workers, timed_worker, train_for
from tune_cifar.config import TrainConfig
from tune_cifar.data import NUM_CLASSES, CifarData, DeviceData, synthetic_images
from tune_cifar.fused import FusedState, GroupPlan, fused_batches, fused_step, resolve_group, train_fused
from tune_cifar.fusion import fused_sgd_
from tune_cifar.models import build_model
from tune_cifar.train import pick_device, train

_START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[bench.fused {time.perf_counter() - _START:6.1f}s] {msg}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_data(n_train: int, n_eval: int, device: torch.device) -> DeviceData:
    """Generated CIFAR-shaped data whose training split holds exactly n_train images, val and test n_eval."""
    labels = np.random.default_rng(0).permutation(np.resize(np.arange(NUM_CLASSES), n_train + n_eval))
    x = synthetic_images(labels, 0)
    data = CifarData(x, labels, x[:n_eval], labels[:n_eval], [str(i) for i in range(NUM_CLASSES)], source="bench")
    return DeviceData(data, n_eval / (n_train + n_eval), 0, device)


def member_configs(k: int, base: TrainConfig) -> list[TrainConfig]:
    """K configurations that differ as a study's trials do: seed, lr, weight decay, schedule."""
    return [base.replace(seed=i, lr=0.05 * (1 + i % 3) / 2, weight_decay=(0.0, 5e-4, 1e-4)[i % 3],
                         schedule=("constant", "cosine")[i % 2]) for i in range(k)]


# ---------------------------------------------------------------------------------------------
# Peak memory


# ---------------------------------------------------------------------------------------------
# In-process runs: fused and sequential, second epoch timed


def run_fused(cfgs: list[TrainConfig], dd: DeviceData, min_timed_s: float = 0.0) -> dict[str, Any]:
    """train_fused: a warm-up epoch, then whole epochs until at least min_timed_s are timed (common.train_for)."""
    reset_peak(dd.device)
    seconds: list[float] = []

    def on_epoch(i: int, metrics: dict[str, Any], state: FusedState) -> None:
        if i == state.reporting[0]:
            seconds.append(dd.num_train / metrics["images_per_s"])
            if len(seconds) >= 2 and sum(seconds[1:]) >= min_timed_s:
                raise _Enough

    try:
        train_fused([c.replace(epochs=100) for c in cfgs], dd, on_epoch)
    except _Enough:
        pass
    timed = seconds[1:] or seconds
    return {"images_per_s": len(cfgs) * dd.num_train * len(timed) / sum(timed), "peak_memory_mib": peak_mib(dd.device)}


def run_sequential(cfgs: list[TrainConfig], dd: DeviceData, min_timed_s: float = 0.0) -> dict[str, Any]:
    """K train() runs in turn, each timed as run_fused times the group (its share of min_timed_s each)."""
    reset_peak(dd.device)
    images, total = 0, 0.0
    for cfg in cfgs:
        timed = train_for(cfg, dd, min_timed_s / len(cfgs))[1:]
        images += dd.num_train * len(timed)
        total += sum(e["train_s"] for e in timed)
    return {"images_per_s": images / total, "peak_memory_mib": peak_mib(dd.device)}


def keep_best(best: dict[tuple[int, str], dict[str, Any]], key: tuple[int, str], r: dict[str, Any]) -> None:
    """The fastest run of each (K, kind); a failed run (images_per_s None, with its error) is kept only while no
    run of that kind has succeeded, and never compared with a figure."""
    old = best.get(key)
    if r.get("images_per_s") is None:
        if old is None:
            best[key] = r
        return
    if old is None or old.get("images_per_s") is None or r["images_per_s"] > old["images_per_s"]:
        best[key] = r


def run_graph(cfgs: list[TrainConfig], dd: DeviceData, steps: int) -> dict[str, Any]:
    """CUDA only: the fused step captured once in a CUDA graph and replayed per batch."""
    device = dd.device
    cfgs = resolve_group(cfgs, device)
    batch = cfgs[0].batch_size
    state = FusedState(cfgs, device)
    state.set_epoch_hparams([c.lr for c in cfgs])
    # autocast's weight-cast cache must be off inside a captured graph (CUDA graphs notes in torch's docs)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfgs[0].precision == "bf16", cache_enabled=False)
    state.model.train()

    def batches(epoch: int):
        plan = GroupPlan.draw(cfgs, dd.num_train, batch, epoch, device)
        for x, y, y_mix, lam in fused_batches(dd, plan, batch):
            if len(x) == batch:  # a graph has one shape
                yield (x.contiguous(memory_format=torch.channels_last) if cfgs[0].channels_last else x), y, y_mix, lam

    static = [t.clone() if t is not None else None for t in next(batches(0))]
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up outside the graph, on a side stream
            fused_step(state.model, state, *static, autocast)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fused_step(state.model, state, *static, autocast)
    reset_peak(device)
    done, t0 = 0, 0.0
    for epoch in range(2):  # the first pass warms the replay up, the second is timed
        sync(device)
        t0 = time.perf_counter()
        done = 0
        for b in batches(epoch):
            for dst, src in zip(static, b):
                if dst is not None:
                    dst.copy_(src)
            graph.replay()
            done += batch
            if done >= steps * batch:
                break
    sync(device)
    return {"images_per_s": len(cfgs) * done / (time.perf_counter() - t0), "peak_memory_mib": peak_mib(device)}


# ---------------------------------------------------------------------------------------------
# Packing: K processes running train() at once


def pack_worker(args: argparse.Namespace) -> int:
    """Child of run_packed: one member's configuration through common.timed_worker."""
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dd = bench_data(args.steps * args.batch_size, args.batch_size, device)
    cfg = member_configs(args.member + 1, TrainConfig(model=args.model, device=device.type,
                                                      batch_size=args.batch_size, epochs=2))[args.member]
    return timed_worker(cfg, dd)


def run_packed(k: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // k)
    cmds = [[sys.executable, "-m", "tune_cifar.bench.fused", "--worker", "--member", str(i), "--device", device.type,
             "--threads", str(threads), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
             "--model", args.model] for i in range(k)]
    reports = run_workers(cmds, wait_s=120)
    wall = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    peaks = [r["peak_memory_mib"] for r in reports]
    return {"images_per_s": sum(r["images"] for r in reports) / wall, "threads": threads,
            "peak_memory_mib": sum(peaks) if None not in peaks else None}


# ---------------------------------------------------------------------------------------------
# Fusion methods, per step without the data pipeline: what chose the grouped-conv rewrite


def method_steps(k: int, base: TrainConfig, device: torch.device) -> dict[str, Callable[[], None]]:
    """One training step of K members of batch `base.batch_size` each, three ways."""
    cfgs = resolve_group(member_configs(k, base), device)
    b, cl = base.batch_size, cfgs[0].channels_last
    fmt = torch.channels_last if cl else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(k, b, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, NUM_CLASSES, (k, b), generator=gen).to(device)
    off = torch.autocast(device.type, enabled=False)

    plain = []
    for cfg in cfgs:
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model).to(device).to(memory_format=fmt)
        plain.append((model, torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                             weight_decay=cfg.weight_decay)))

    def plain_step() -> None:
        for i, (model, opt) in enumerate(plain):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[i].contiguous(memory_format=fmt)), y[i]).backward()
            opt.step()
        sync(device)

    state = FusedState(cfgs, device)
    state.set_epoch_hparams([c.lr for c in cfgs])
    x_fused = x.transpose(0, 1).reshape(b, 3 * k, 32, 32).contiguous(memory_format=fmt)

    def grouped_step() -> None:
        fused_step(state.model, state, x_fused, y, y, None, off)
        sync(device)

    from torch.func import functional_call, stack_module_state

    params, buffers = stack_module_state([m for m, _ in plain])
    bufs = {n: torch.zeros_like(p) for n, p in params.items()}
    shape = {n: (k,) + (1,) * (p.dim() - 1) for n, p in params.items()}
    per = {h: torch.tensor([getattr(c, h) for c in cfgs], device=device) for h in ("lr", "weight_decay", "momentum")}
    skeleton = copy.deepcopy(plain[0][0])

    def one(p: dict, bf: dict, xi: torch.Tensor) -> torch.Tensor:
        return functional_call(skeleton, (p, bf), (xi,))

    def vmap_step() -> None:
        logits = torch.vmap(one)(params, buffers, x)  # (K, b, classes)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(k, b).mean(1).sum()
        grads = torch.autograd.grad(loss, list(params.values()))
        for (n, p), g in zip(params.items(), grads):
            s = shape[n]
            fused_sgd_(p.data, g, bufs[n], per["lr"].view(s), per["weight_decay"].view(s), per["momentum"].view(s))
        sync(device)

    return {"plain": plain_step, "grouped": grouped_step, "vmap": vmap_step}


def bench_methods(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    base = TrainConfig(model=args.model, batch_size=args.batch_size, device=device.type)
    steps = {k: method_steps(k, base, device) for k in args.k}
    best = {(k, name): float("inf") for k in args.k for name in steps[k]}
    for k in args.k:
        for run in steps[k].values():
            run()  # warm-up
    for round_ in range(args.repeats):
        log(f"methods: round {round_ + 1}/{args.repeats}, K in {args.k}")
        for k in args.k:
            for name, run in steps[k].items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    run()
                best[k, name] = min(best[k, name], (time.perf_counter() - t0) / args.steps)
    return {"batch_size": args.batch_size, "steps": args.steps, "rows": [
        {"k": k, **{f"{name}_images_per_s": k * args.batch_size / best[k, name] for name in steps[k]}} for k in args.k]}


# ---------------------------------------------------------------------------------------------
# The benchmark


def bench_fused(args: argparse.Namespace, device: torch.device, budget: Budget | None = None) -> dict[str, Any]:
    """Fused vs sequential vs packed at each K in args.k; see the module docstring for what is timed. Each
    run in its own try (a failure is recorded with its error, the others go on); rounds after the first, and
    K's once the budget is spent, are skipped."""
    load_start = os.getloadavg()[0]
    min_s = getattr(args, "min_timed_s", None)
    min_s = min_s if min_s is not None else (2.0 if device.type == "cuda" else 0.0)
    base = TrainConfig(model=args.model, batch_size=args.batch_size, epochs=2, device=device.type)
    dd = bench_data(args.steps * args.batch_size, args.batch_size, device)
    best: dict[tuple[int, str], dict[str, Any]] = {}
    kinds: dict[str, Callable[[list[TrainConfig], int], dict[str, Any]]] = {
        "fused": lambda cfgs, k: run_fused(cfgs, dd, min_s), "sequential": lambda cfgs, k: run_sequential(cfgs, dd, min_s)}
    if device.type == "cuda":
        kinds["graph"] = lambda cfgs, k: run_graph(cfgs, dd, args.steps)
    if not args.skip_pack:
        kinds["packed"] = lambda cfgs, k: run_packed(k, args, device)

    for round_ in range(args.repeats):  # rounds interleave the kinds: a burst of other load slows all of them
        t_round = time.perf_counter()
        if round_ and budget and not budget.allows_another():
            log(f"round {round_ + 1} skipped: the part's budget would not hold another")
            break
        for k in args.k:
            if budget and budget.over() and (round_ or (k, "fused") in best):
                log(f"K={k} skipped: the part's time budget was spent")
                continue
            cfgs = member_configs(k, base)
            log(f"round {round_ + 1}/{args.repeats}, K={k}: {', '.join(kinds)} "
                f"({args.steps} steps of {args.batch_size} per member, at least {min_s:.1f} s timed)")
            for kind, run in kinds.items():
                try:
                    r = run(cfgs, k)
                except Exception as e:  # noqa: BLE001 (recorded; never lets one kind sink the benchmark)
                    r = {"images_per_s": None, "peak_memory_mib": None, "error": f"{type(e).__name__}: {e}"[:500]}
                    log(f"K={k} {kind} failed: {r['error']}")
                keep_best(best, (k, kind), r)
        if budget:
            budget.round_took(time.perf_counter() - t_round)
    rows = []
    for k in (k for k in args.k if (k, "fused") in best or (k, "sequential") in best):
        row: dict[str, Any] = {"k": k}
        for kind in ("fused", "sequential", "packed", "graph"):
            r = best.get((k, kind), {})
            row[f"{kind}_images_per_s"] = r.get("images_per_s")
            row[f"{kind}_peak_memory_mib"] = r.get("peak_memory_mib")
            if "error" in r:
                row[f"{kind}_error"] = r["error"]
        row["packed_threads"] = best.get((k, "packed"), {}).get("threads")
        row["fused_vs_sequential"] = ratio(row["fused_images_per_s"], row["sequential_images_per_s"])
        row["fused_vs_packed"] = ratio(row["fused_images_per_s"], row["packed_images_per_s"])
        rows.append(row)

    def top(kind: str) -> float | None:
        values = [r[f"{kind}_images_per_s"] for r in rows if r[f"{kind}_images_per_s"]]
        return max(values) if values else None

    fused_best = max(top("fused") or 0.0, top("graph") or 0.0)
    k1 = next((r for r in rows if r["k"] == 1), None)
    result = {
        "machine": machine(device), "model": args.model, "batch_size": args.batch_size, "steps": args.steps,
        "repeats": args.repeats, "rows": rows,
        "fused_speedup": fused_best / top("packed") if top("packed") else None,  # best fused over best packing
        "fused_vs_sequential": ratio(fused_best, top("sequential")),
        "fused_k1_vs_plain": ratio(k1["fused_images_per_s"], k1["sequential_images_per_s"]) if k1 else None,
        "methods": bench_methods(args, device) if args.methods else None,
        "load_average_1m": [load_start, os.getloadavg()[0]],  # at start and end
    }
    return result


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def machine(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {"device": device.type, "device_name": name, "cpu_cores": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def format_fused(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [f"fused training: {r['model']} on {m['device']} ({m['device_name']}, {m['cpu_cores']} cores), torch "
             f"{m['torch']}; batch {r['batch_size']} per member, {r['steps']} timed steps, best of {r['repeats']} "
             f"rounds; load average {r['load_average_1m'][0]:.2f} at start, {r['load_average_1m'][1]:.2f} at end",
             "images/s of all K members together; peak memory MiB (packed: summed over its processes)",
             f"{'K':>3}{'fused':>10}{'graph':>10}{'sequential':>12}{'packed':>10}{'fused/seq':>11}{'fused/pack':>12}"
             f"{'MiB fused':>11}{'MiB seq':>9}{'MiB packed':>12}"]
    for row in r["rows"]:
        lines.append(f"{row['k']:>3}{fmt(row['fused_images_per_s']):>10}{fmt(row['graph_images_per_s']):>10}"
                     f"{fmt(row['sequential_images_per_s']):>12}{fmt(row['packed_images_per_s']):>10}"
                     f"{fmt(row['fused_vs_sequential'], '.2f') + 'x':>11}{fmt(row['fused_vs_packed'], '.2f') + 'x':>12}"
                     f"{fmt(row['fused_peak_memory_mib']):>11}{fmt(row['sequential_peak_memory_mib']):>9}"
                     f"{fmt(row['packed_peak_memory_mib']):>12}")
        for kind in ("fused", "sequential", "packed", "graph"):
            if row.get(f"{kind}_error"):
                lines.append(f"    K={row['k']}: {kind} failed: {row[f'{kind}_error'][:200]}")
    lines.append(f"fused_speedup {fmt(r['fused_speedup'], '.2f')} (best fused over best packed)  "
                 f"fused_vs_sequential {fmt(r['fused_vs_sequential'], '.2f')}  "
                 f"fused_k1_vs_plain {fmt(r['fused_k1_vs_plain'], '.2f')}")
    if r.get("methods"):
        mt = r["methods"]
        lines += [f"\nfusion methods, one step without the data pipeline (images/s, batch {mt['batch_size']} per member)",
                  f"{'K':>3}{'plain':>10}{'grouped':>10}{'vmap':>10}"]
        for row in mt["rows"]:
            lines.append(f"{row['k']:>3}{fmt(row['plain_images_per_s']):>10}{fmt(row['grouped_images_per_s']):>10}"
                         f"{fmt(row['vmap_images_per_s']):>10}")
    return "\n".join(lines)


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def add_fused_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int_list, default=[1, 2, 4, 8], help="group sizes K (default 1,2,4,8)")
    p.add_argument("--model", default="mobilenet")
    p.add_argument("--batch-size", type=int, default=128, help="images per step per member")
    p.add_argument("--steps", type=int, default=4, help="timed steps per member")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the fastest counts")
    p.add_argument("--skip-pack", action="store_true", help="no packed processes")
    p.add_argument("--methods", action="store_true", help="also time grouped conv vs vmap vs plain per step")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tune_cifar.bench.fused", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", metavar="PATH", help="write every figure here as JSON")
    p.add_argument("--methods-only", action="store_true", help="only the per-step fusion-method comparison")
    add_fused_args(p)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a packing child process
    p.add_argument("--member", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.batch_size, args.steps, args.repeats, *args.k) < 1:
        p.error("sizes, counts and K must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return pack_worker(args)
    device = pick_device(args.device)
    if args.methods_only:
        result = {"machine": machine(device), "load_average_1m": [os.getloadavg()[0]],
                  "methods": bench_methods(args, device)}
        result["load_average_1m"].append(os.getloadavg()[0])
        print(json.dumps(result, indent=2))
    else:
        result = bench_fused(args, device)
        print(format_fused(result), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

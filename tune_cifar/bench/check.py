"""The first run on a GPU, in at most 4 minutes, with nothing but torch and numpy (issue 20).

    scripts/gpu_check.sh [--json gpu_check.json]              # = PYTHONPATH=. python -m tune_cifar.bench.check --device cuda
    PYTHONPATH=. python -m tune_cifar.bench.check --device cpu # CI: the CUDA-only steps say they were skipped, and why

No Ray and no install: run from the repository root. Steps, in order, each under its own time budget
(STEPS; a step past its budget is stopped and recorded, and one stuck in a CUDA call ends the process a
few seconds later, with every record so far already written): the environment (Inductor's toolchain
included), the TF32/precision switches read back, torch.compile under bf16 autocast, train() fp32 NCHW and
bf16 channels_last (losses, ms/step, memory), host syncs per step (warn and error modes), determinism
(two runs compared bit for bit, with and without `deterministic`), fused K = 1, 4, 8 against K runs in
turn (and the fused loop's per-epoch setup on its own), the fused step in a CUDA graph against the eager
one, and the `all` study's device-hours from the measured throughput. The JSON (--json) is rewritten after
every step: {"meta": ..., "steps": [{"name", "status": ok|failed|timeout|skipped, "seconds", "budget_s",
"reason" or "error", "values"}]}. Exit 0 when no step failed, 1 otherwise, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from tune_cifar.bench.common import bench_images, peak_mib, reset_peak, sync, timed_figures, train_for
from tune_cifar.config import TrainConfig
from tune_cifar.data import NUM_CLASSES, CifarData, DeviceData
from tune_cifar.train import TrainState, precision_state, set_fp32_matmul, train

HARD_GRACE_S = 10  # a step that ignores its timeout (stuck in a CUDA call) ends the process this much later
TRAIN_IMAGES, VAL_IMAGES, TEST_IMAGES = 40_000, 10_000, 10_000  # a real trial's epoch and its test pass


@dataclass(frozen=True)
class Sizes:
    batch_size: int  # images per step (per member when fused)
    steps: int  # training steps per epoch
    eval_images: int  # val (and test) images of the generated data
    min_timed_s: float  # seconds of steps timed after the warm-up epoch, at least (bench.common.train_for)
    fused_k: tuple[int, ...]  # fused group sizes


# On a GPU the figures must mean something; on a CPU (CI) the same code must run, quickly (K = 1, 2 there).
SIZES = {"cuda": Sizes(batch_size=128, steps=40, eval_images=1000, min_timed_s=2.0, fused_k=(1, 4, 8)),
         "cpu": Sizes(batch_size=8, steps=2, eval_images=16, min_timed_s=0.0, fused_k=(1, 2))}


class Skip(Exception):
    """The step does not apply here; the message says why."""


class StepTimeout(Exception):
    pass


@dataclass
class Context:
    device: torch.device
    sizes: Sizes
    found: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> values of the steps done

    def data(self, n_train: int) -> DeviceData:
        x, y = bench_images(n_train + self.sizes.eval_images, None)
        n = self.sizes.eval_images
        cifar = CifarData(x, y, x[:n], y[:n], [str(i) for i in range(NUM_CLASSES)], source="check")
        return DeviceData(cifar, n / (n_train + n), 0, self.device)

    def base(self, **changes: Any) -> TrainConfig:
        return TrainConfig(device=self.device.type, batch_size=self.sizes.batch_size,
                           eval_batch_size=min(1000, self.sizes.eval_images), **changes)


def cuda_only(ctx: Context) -> None:
    if ctx.device.type != "cuda":
        raise Skip("CUDA only (run with --device cuda on a GPU)")


# ---------------------------------------------------------------------------------------------
# The steps


def step_environment(ctx: Context) -> dict[str, Any]:
    gcc = shutil.which(os.environ.get("CC", "gcc"))
    include = sysconfig.get_paths().get("include", "")
    out: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "cpu_cores": len(os.sched_getaffinity(0)),
        "load_average_1m": os.getloadavg()[0], "gcc": gcc,
        "gcc_version": _first_line([gcc, "--version"]) if gcc else None,
        "python_h": os.path.exists(os.path.join(include, "Python.h")), "python_include": include}
    for name in ("numpy", "triton", "torchvision", "PIL"):
        out[name] = _version(name)
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        free, total = torch.cuda.mem_get_info(ctx.device)
        out.update(device_name=props.name, capability=f"{props.major}.{props.minor}", device_count=torch.cuda.device_count(),
                   total_memory_mib=total / 2**20, used_at_start_mib=(total - free) / 2**20,
                   cudnn=torch.backends.cudnn.version())
    out["inductor_ready"] = bool(gcc and out["python_h"]) and (ctx.device.type != "cuda" or out["triton"] is not None)
    return out


def step_precision(ctx: Context) -> dict[str, Any]:
    """The switches set as train() sets them, then read back through both APIs (a mix raises on reading)."""
    out = {"torch_defaults": precision_state()}
    for precision, tf32 in (("bf16", True), ("fp32", False)):
        set_fp32_matmul(precision)
        state = precision_state()
        with torch.backends.cudnn.flags(enabled=True):  # what torch.compile's Inductor enters
            pass
        if state["matmul_allow_tf32"] is not tf32 or state["cudnn_allow_tf32"] is not tf32:
            raise AssertionError(f"set_fp32_matmul({precision!r}) read back as {state}")
        out[precision] = state
    return out


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def step_compile(ctx: Context) -> dict[str, Any]:
    cuda_only(ctx)
    set_fp32_matmul("bf16")
    model = _Tiny().to(ctx.device).to(memory_format=torch.channels_last)
    compiled = torch.compile(model)
    x = torch.randn(64, 3, 32, 32, device=ctx.device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,), device=ctx.device)

    def step() -> float:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(compiled(x).float(), y)
        loss.backward()
        return loss

    t0 = time.perf_counter()
    first = float(step())
    compile_s = time.perf_counter() - t0
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = float(torch.nn.functional.cross_entropy(model(x).float(), y))
    sync(ctx.device)
    t0 = time.perf_counter()
    for _ in range(20):
        step()
    sync(ctx.device)
    if not math.isfinite(first):
        raise AssertionError(f"compiled loss {first}")
    return {"first_call_s": compile_s, "ms_per_step": 1000 * (time.perf_counter() - t0) / 20, "loss": first,
            "eager_loss": eager, "relative_difference": abs(first - eager) / abs(eager)}


# The reference arithmetic and each device's default (bf16 autocast on CUDA; a CPU has no fast bf16 convolution).
TRAIN_VARIANTS = {"cuda": {"fp32 NCHW": dict(precision="fp32", channels_last=False),
                           "bf16 channels_last": dict(precision="bf16", channels_last=True)},
                  "cpu": {"fp32 NCHW": dict(precision="fp32", channels_last=False),
                          "fp32 channels_last": dict(precision="fp32", channels_last=True)}}
DEFAULT_VARIANT = {"cuda": "bf16 channels_last", "cpu": "fp32 channels_last"}


def step_train(ctx: Context) -> dict[str, Any]:
    s = ctx.sizes
    dd = ctx.data(s.steps * s.batch_size)
    out: dict[str, Any] = {"steps_per_epoch": s.steps, "batch_size": s.batch_size, "min_timed_s": s.min_timed_s}
    for name, overrides in TRAIN_VARIANTS[ctx.device.type].items():
        reset_peak(ctx.device)
        epochs = train_for(ctx.base(**overrides), dd, s.min_timed_s)
        losses = [e["train_loss"] for e in epochs]
        if not all(math.isfinite(v) for v in losses):
            raise AssertionError(f"{name}: train losses {losses}")
        # The switches as the run left them: what it ran with (train() sets them on CUDA).
        row = {**timed_figures(epochs, dd, s.batch_size), "train_losses": losses, "precision_state": precision_state()}
        row.update(memory(ctx.device))
        out[name] = row
    return out


def memory(device: torch.device) -> dict[str, float]:
    """On CUDA: the allocator's peaks, and the device's used memory (mem_get_info: the CUDA context and every
    process included); on a CPU: this process's peak resident set."""
    if device.type != "cuda":
        return {"peak_rss_mib": peak_mib(device)}
    free, total = torch.cuda.mem_get_info(device)
    return {"peak_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20,
            "peak_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20, "device_used_mib": (total - free) / 2**20}


def step_host_syncs(ctx: Context) -> dict[str, Any]:
    """Warn mode: syncs counted over epochs of n and 2n steps (the difference is per step). Error mode: from
    the second step on, any sync raises; it must come only after the epoch's last step (its one .item())."""
    cuda_only(ctx)
    from tune_cifar.bench.training import host_syncs_per_step

    s = ctx.sizes
    dd = ctx.data(s.steps * s.batch_size)
    per_step = host_syncs_per_step(dd, s.batch_size)
    steps_done = [0]

    def count(optimizer: Any, args: Any, kwargs: Any) -> None:
        steps_done[0] += 1
        if steps_done[0] == 1:
            torch.cuda.set_sync_debug_mode("error")

    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(count)
    error = None
    try:
        train(ctx.base(epochs=1), dd)
    except RuntimeError as e:
        error = str(e).splitlines()[0][:200]
    finally:
        torch.cuda.set_sync_debug_mode(0)
        handle.remove()
    out = {"syncs_per_step_warn_mode": per_step, "error_mode_steps_before_first_sync": steps_done[0],
           "steps_per_epoch": s.steps, "error_mode_first_sync": error}
    if per_step is None or per_step > 0 or steps_done[0] < s.steps:
        raise AssertionError(f"host syncs inside the step loop: {out}")
    return out


def step_determinism(ctx: Context) -> dict[str, Any]:
    """Two runs of one configuration from scratch, their weights compared bit for bit, with and without
    `deterministic` (on CUDA only the first is promised: README, Performance)."""
    s = ctx.sizes
    dd = ctx.data(min(s.steps, 8) * s.batch_size)
    out: dict[str, Any] = {}
    for deterministic in (True, False):
        runs = []
        for _ in range(2):
            states: list[TrainState] = []
            train(ctx.base(epochs=1, deterministic=deterministic), dd, lambda m, state: states.append(state))
            runs.append({k: v.detach().clone() for k, v in states[-1].model.state_dict().items()})
        differ = [k for k in runs[0] if not torch.equal(runs[0][k], runs[1][k])]
        out[f"deterministic={deterministic}"] = {"bit_exact": not differ, "tensors_differing": len(differ),
                                                 "tensors": len(runs[0])}
    if not out["deterministic=True"]["bit_exact"]:
        raise AssertionError(f"deterministic=True runs differ: {out}")
    return out


def step_fused(ctx: Context) -> dict[str, Any]:
    from tune_cifar.bench.fused import member_configs, run_fused, run_sequential

    s = ctx.sizes
    dd = ctx.data(s.steps * s.batch_size)
    base = ctx.base(epochs=2)
    rows = []
    for k in s.fused_k:
        cfgs = member_configs(k, base)
        fused, sequential = run_fused(cfgs, dd, s.min_timed_s), run_sequential(cfgs, dd, s.min_timed_s)
        rows.append({"k": k, "fused_images_per_s": fused["images_per_s"],
                     "sequential_images_per_s": sequential["images_per_s"],
                     "fused_vs_sequential": fused["images_per_s"] / sequential["images_per_s"],
                     "fused_peak_memory_mib": fused["peak_memory_mib"],
                     "epoch_setup_s": fused_epoch_setup_s(cfgs, ctx.device)})
    return {"batch_size": s.batch_size, "steps_per_epoch": s.steps, "rows": rows}


def fused_epoch_setup_s(cfgs: list[TrainConfig], device: torch.device) -> float:
    """What train_fused does once per epoch before its first step, at a real epoch's size (40,000 images):
    the members' hyperparameters over the flat buffer and every member's draws (GroupPlan), moved to the device."""
    from tune_cifar.fused import FusedState, GroupPlan, resolve_group
    from tune_cifar.schedules import schedule_lr

    cfgs = resolve_group(cfgs, device)
    state = FusedState(cfgs, device)
    state.set_epoch_hparams([schedule_lr(c, 0) for c in cfgs])  # the first epoch builds what later ones keep
    sync(device)
    t0 = time.perf_counter()
    state.set_epoch_hparams([schedule_lr(c, 1) * 0.5 for c in cfgs])  # a changed lr, as a later epoch has
    GroupPlan.draw(cfgs, TRAIN_IMAGES, cfgs[0].batch_size, 1, device)
    sync(device)
    return time.perf_counter() - t0


def step_graph(ctx: Context) -> dict[str, Any]:
    """The fused step captured in a CUDA graph at K = 1 and 4, against the same step run eagerly from the same
    state on the same batch: the same loss, and images/s of each over the same number of steps."""
    cuda_only(ctx)
    from tune_cifar.bench.fused import member_configs
    from tune_cifar.fused import FusedState, GroupPlan, fused_batches, fused_step, resolve_group

    s = ctx.sizes
    dd = ctx.data(s.steps * s.batch_size)
    rows = []
    for k in (1, 4):
        cfgs = resolve_group(member_configs(k, ctx.base(epochs=2)), ctx.device)
        plan = GroupPlan.draw(cfgs, dd.num_train, s.batch_size, 0, ctx.device)
        batch = [t.clone() if t is not None else None for t in next(fused_batches(dd, plan, s.batch_size))]
        batch[0] = batch[0].contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfgs[0].precision == "bf16", cache_enabled=False)
        eager, graphed = FusedState(cfgs, ctx.device), FusedState(cfgs, ctx.device)
        for state in (eager, graphed):
            state.set_epoch_hparams([c.lr for c in cfgs])
            state.model.train()
        side = torch.cuda.Stream(ctx.device)
        side.wait_stream(torch.cuda.current_stream(ctx.device))
        with torch.cuda.stream(side):  # warm-up outside the graph, on a side stream (torch's CUDA graph notes)
            for _ in range(3):
                fused_step(eager.model, eager, *batch, autocast)
                fused_step(graphed.model, graphed, *batch, autocast)
        torch.cuda.current_stream(ctx.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            graph_loss, _ = fused_step(graphed.model, graphed, *batch, autocast)
        eager_loss, _ = fused_step(eager.model, eager, *batch, autocast)
        graph.replay()  # the 4th step of both, from equal states
        sync(ctx.device)
        difference = float(((graph_loss - eager_loss).abs() / eager_loss.abs()).max())
        n = max(s.steps, 20)
        timings = {}
        for name, run in (("eager", lambda: fused_step(eager.model, eager, *batch, autocast)), ("graph", graph.replay)):
            sync(ctx.device)
            t0 = time.perf_counter()
            for _ in range(n):
                run()
            sync(ctx.device)
            timings[name] = k * s.batch_size * n / (time.perf_counter() - t0)
        rows.append({"k": k, "loss_relative_difference": difference, "eager_images_per_s": timings["eager"],
                     "graph_images_per_s": timings["graph"], "graph_vs_eager": timings["graph"] / timings["eager"]})
        if difference > 1e-3:
            raise AssertionError(f"K={k}: the graph's loss differs from the eager step's by {difference:.2e}: {rows}")
    return {"rows": rows}


def step_projection(ctx: Context) -> dict[str, Any]:
    """Device-hours of the `all` study (the report's chain) at the throughput measured above: one trial at a
    time in the device's default (DEFAULT_VARIANT), and as fused groups at the best K measured."""
    from tune_cifar.studies import load_study

    train_found = ctx.found.get("train")
    if not train_found:
        raise Skip("the train step did not finish")
    default = train_found[DEFAULT_VARIANT[ctx.device.type]]
    study = load_study("all")
    epochs, trials = study.trial_epochs(), study.num_trials()
    hours = (epochs * (TRAIN_IMAGES / default["images_per_s"] + VAL_IMAGES / default["eval_images_per_s"])
             + trials * TEST_IMAGES / default["eval_images_per_s"]) / 3600
    out = {"study": "all", "trial_epochs": epochs, "trials": trials, "variant_images_per_s": default["images_per_s"],
           "device_hours_one_at_a_time": hours}
    rows = (ctx.found.get("fused") or {}).get("rows") or []
    # K=1 fuses nothing: its ratio says how alike the two loops are timed, not a gain, so only K > 1 may
    # shorten the projection
    out["k1_fused_vs_sequential"] = next((r["fused_vs_sequential"] for r in rows if r["k"] == 1), None)
    fused = [r for r in rows if r["k"] > 1]
    if fused:
        best = max(fused, key=lambda r: r["fused_vs_sequential"])
        out.update(best_fused_k=best["k"], fused_vs_sequential=best["fused_vs_sequential"],
                   device_hours_fused=hours / max(best["fused_vs_sequential"], 1.0))
    return out


# name, function, time budget (s). The budgets sum to 225 s: with the process start and data, 4 minutes.
STEPS: list[tuple[str, Callable[[Context], dict[str, Any]], float]] = [
    ("environment", step_environment, 10),
    ("precision", step_precision, 5),
    ("compile", step_compile, 45),
    ("train", step_train, 45),
    ("host_syncs", step_host_syncs, 15),
    ("determinism", step_determinism, 20),
    ("fused", step_fused, 50),
    ("graph", step_graph, 30),
    ("projection", step_projection, 5),
]


# ---------------------------------------------------------------------------------------------
# Running: a budget per step, the JSON after every one, the table at the end


class Report:
    def __init__(self, path: str | None, meta: dict[str, Any]):
        self.path, self.meta, self.records = path, meta, []
        self._lock = threading.Lock()

    def add(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.records.append(record)
            self.write()

    def write(self) -> None:
        if not self.path:
            return
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump({"meta": self.meta, "steps": self.records}, f, indent=2, default=str)
        os.replace(tmp, self.path)  # a reader never sees half a file


def run_step(name: str, fn: Callable[[Context], dict[str, Any]], budget: float, ctx: Context,
             report: Report) -> dict[str, Any]:
    record: dict[str, Any] = {"name": name, "budget_s": budget}
    t0 = time.perf_counter()

    def soft(signum: int, frame: Any) -> None:
        raise StepTimeout(f"still running after its budget of {budget:.0f} s")

    def hard() -> None:  # the main thread is stuck where no signal reaches it (a CUDA call, a compiler)
        report.add({**record, "status": "timeout", "seconds": time.perf_counter() - t0,
                    "error": f"stuck {budget + HARD_GRACE_S:.0f} s (budget {budget:.0f} s); the process was ended"})
        print(format_table(report.records), flush=True)
        os._exit(1)

    watchdog = threading.Timer(budget + HARD_GRACE_S, hard)
    watchdog.daemon = True
    previous = signal.signal(signal.SIGALRM, soft)
    signal.setitimer(signal.ITIMER_REAL, budget)
    watchdog.start()
    try:
        record["values"] = fn(ctx)
        record["status"] = "ok"
        ctx.found[name] = record["values"]
    except Skip as e:
        record.update(status="skipped", reason=str(e))
    except StepTimeout as e:
        record.update(status="timeout", error=str(e))
    except Exception as e:  # noqa: BLE001 (a step's failure is recorded; the next step still runs)
        record.update(status="failed", error=f"{type(e).__name__}: {str(e)[:2000]}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        watchdog.cancel()
    record["seconds"] = time.perf_counter() - t0
    report.add(record)
    print(f"[check] {name}: {record['status']} in {record['seconds']:.1f} s"
          + (f" ({record.get('reason') or record.get('error')})" if record["status"] != "ok" else ""),
          file=sys.stderr, flush=True)
    return record


def summary(record: dict[str, Any]) -> str:
    """One line of figures per step for the table."""
    v = record.get("values") or {}
    name = record["name"]
    if record["status"] != "ok":
        return (record.get("reason") or record.get("error") or "")[:100]
    if name == "environment":
        return (f"torch {v['torch']}, {v.get('device_name', 'cpu')}, gcc {'yes' if v['gcc'] else 'NO'}, "
                f"Python.h {'yes' if v['python_h'] else 'NO'}, triton {v['triton'] or '-'}")
    if name == "precision":
        return f"fp32: matmul/conv TF32 {v['fp32']['matmul_allow_tf32']}/{v['fp32']['cudnn_allow_tf32']}; bf16: TF32 on"
    if name == "compile":
        return f"first call {v['first_call_s']:.1f} s, then {v['ms_per_step']:.2f} ms/step"
    if name == "train":
        parts = []
        for variant in (k for k in v if isinstance(v[k], dict)):
            r = v[variant]
            mem = (f", {r['peak_allocated_mib']:.0f}/{r['peak_reserved_mib']:.0f}/{r['device_used_mib']:.0f} MiB"
                   if "peak_allocated_mib" in r else "")
            parts.append(f"{variant} {r['ms_per_step']:.1f} ms/step{mem}")
        return "; ".join(parts) + (" (alloc/reserved/device)" if "peak_allocated_mib" in r else "")
    if name == "host_syncs":
        return f"{v['syncs_per_step_warn_mode']:.2f} per step; error mode: {v['error_mode_steps_before_first_sync']} steps clean"
    if name == "determinism":
        return ", ".join(f"{k} {'bit-exact' if r['bit_exact'] else 'differs'}" for k, r in v.items())
    if name == "fused":
        return "; ".join(f"K={r['k']} {r['fused_vs_sequential']:.2f}x seq, epoch setup {1000 * r['epoch_setup_s']:.0f} ms"
                         for r in v["rows"])
    if name == "graph":
        return "; ".join(f"K={r['k']} {r['graph_vs_eager']:.2f}x eager, loss diff {r['loss_relative_difference']:.1e}"
                         for r in v["rows"])
    if name == "projection":
        fused = f", fused K={v['best_fused_k']} {v['device_hours_fused']:.1f}" if "device_hours_fused" in v else ""
        return f"`all` study: {v['device_hours_one_at_a_time']:.1f} device-hours one at a time{fused}"
    return ""


def format_table(records: list[dict[str, Any]]) -> str:
    lines = [f"{'step':<13}{'status':<9}{'seconds':>8}{'budget':>8}  figures"]
    for r in records:
        lines.append(f"{r['name']:<13}{r['status']:<9}{r.get('seconds', 0):8.1f}{r['budget_s']:8.0f}  {summary(r)}")
    return "\n".join(lines)


def _first_line(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _version(module: str) -> str | None:
    """The installed version, without importing it (triton and torchvision take seconds to import)."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec(module) is None:
        return None
    try:
        return importlib.metadata.version({"PIL": "pillow"}.get(module, module))
    except importlib.metadata.PackageNotFoundError:
        return "present"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one clear line, not the usage block
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="python -m tune_cifar.bench.check", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--json", metavar="PATH", help="the records, rewritten after every step")
    p.add_argument("--steps", metavar="NAMES", help=f"only these steps, comma-separated ({', '.join(n for n, _, _ in STEPS)})")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's on cuda, 1 on cpu: a CPU run checks the code, not its speed, "
                        "and one thread stays quick on a shared CI machine, where more contend)")
    p.add_argument("--force", action="store_true", help="replace an existing --json file (kept by default: on a "
                   "short GPU lease it may be the only record)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads {args.threads}: must be >= 1")
    names = [n for n, _, _ in STEPS]
    args.only = [s.strip() for s in args.steps.split(",") if s.strip()] if args.steps else names
    unknown = sorted(set(args.only) - set(names))
    if not args.only:
        p.error(f"--steps {args.steps!r} names no step; steps: {', '.join(names)}")
    if unknown:
        p.error(f"unknown step(s) {', '.join(unknown)}; steps: {', '.join(names)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error(f"--device cuda: no CUDA device is visible (torch {torch.__version__}, CUDA build "
                f"{torch.version.cuda}); use --device cpu")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        p.error(f"--json {args.json}: no such folder")
    if args.json and os.path.isdir(args.json):
        p.error(f"--json {args.json} is a folder; name a file in it")
    if args.json and os.path.exists(args.json) and not args.force:
        p.error(f"--json {args.json} exists; name another file, or add --force to replace it")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    threads, before = args.threads or (1 if device.type == "cpu" else None), torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(args, device)
    finally:
        torch.set_num_threads(before)


def _run(args: argparse.Namespace, device: torch.device) -> int:
    ctx = Context(device, SIZES[device.type])
    report = Report(args.json, {"command": " ".join([sys.executable, "-m", "tune_cifar.bench.check", *args.argv]),
                                "device": device.type, "started_unix": time.time(), "sizes": vars(ctx.sizes)})
    report.write()
    t0 = time.perf_counter()
    for name, fn, budget in STEPS:
        if name in args.only:
            run_step(name, fn, budget, ctx, report)
    report.meta["total_s"] = time.perf_counter() - t0
    report.write()
    print(format_table(report.records), flush=True)
    print(f"total {report.meta['total_s']:.1f} s" + (f"; wrote {args.json}" if args.json else ""), flush=True)
    return 1 if any(r["status"] in ("failed", "timeout") for r in report.records) else 0


if __name__ == "__main__":
    sys.exit(main())

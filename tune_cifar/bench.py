"""Speed of our pipeline against the report's own, measured side by side in one run.

    python -m tune_cifar.bench [--device cpu|cuda] [--json PATH] [--data-dir DIR] [--skip-tune]

The baseline is the course template: torchvision's per-image PIL transforms in a DataLoader, an fp32
NCHW loop that reads loss and accuracy with `.item()` every step, one trial per device. Parts:
1. augmentation + batching, 2. training steps, 3. K training processes sharing one device,
4. Ray Tune's overhead per trial (only where Ray is installed). The table goes to stdout, progress to
stderr, every figure to --json. Without --data-dir the images are generated, of CIFAR-100's shape.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from tune_cifar.config import TrainConfig
from tune_cifar.data import NUM_CLASSES, CifarData, DeviceData, EpochPlan, read_cifar100, synthetic_images
from tune_cifar.models import build_model
from tune_cifar.train import pick_device, train

# The `all` study (protocol.md): lr = 3 trials x 15 epochs; lrs, wd, mixup = 2 trials x 300 epochs each.
ALL_STUDY_TRIAL_EPOCHS = 3 * 15 + 3 * 2 * 300
ALL_STUDY_TRIALS = 3 + 3 * 2
TRAIN_IMAGES, VAL_IMAGES, TEST_IMAGES = 40_000, 10_000, 10_000  # per epoch: train + val; per trial: test once
FULL_DATA_BYTES = (50_000 + 10_000) * 3 * 32 * 32  # the uint8 splits a real trial keeps on its device
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, by GPU name substring


_START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[bench {time.perf_counter() - _START:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Data: real CIFAR-100 when --data-dir is given, else generated images of the same shape


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


# ---------------------------------------------------------------------------------------------
# The report's pipeline: torchvision's CIFAR100 __getitem__ (uint8 HWC -> PIL) and the template loop


class PilDataset(torch.utils.data.Dataset):
    """Images handed out one at a time as PIL, as torchvision.datasets.CIFAR100 does."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Any):
        self.images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))  # (N, 32, 32, 3) HWC
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def template_transform(mean: torch.Tensor, std: torch.Tensor) -> Any:
    import torchvision.transforms as T

    return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(mean.tolist(), std.tolist())])


def template_loader(dd: DeviceData, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    """The template's training loader over the same images as `dd`; persistent workers (kinder than
    the template, which restarts them every epoch) so that a timed pass holds no worker start-up."""
    ds = PilDataset(dd.train_x.cpu().numpy(), dd.train_y.cpu().numpy(), template_transform(dd.mean.cpu(), dd.std.cpu()))
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       persistent_workers=workers > 0)


def reference_model(seed: int, device: torch.device, lr: float = 0.05) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)  # the same initial weights as TrainState(cfg) with cfg.seed == seed
    model = build_model("mobilenet").to(device)
    return model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)


def reference_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader: Any,
                    device: torch.device) -> tuple[float, float, int]:
    """The course template's training loop: mean loss, accuracy, images seen."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    running_loss, correct, total = 0.0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        outputs = model(images)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item() * labels.size(0)  # a host sync every step
        _, predicted = outputs.max(1)
        total += labels.size(0)
        correct += predicted.eq(labels).sum().item()
    return running_loss / total, correct / total, total


# ---------------------------------------------------------------------------------------------
# 1. Augmentation + batching


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


def bench_augment(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    dd = device_data(args.augment_images, args.batch_size, device, args.data_dir)
    epoch = itertools.count()  # a fresh plan every pass, as every training epoch draws one

    def ours() -> None:
        plan = EpochPlan.draw(dd.num_train, 0, next(epoch)).to(device)
        for x, y in dd.train_batches(plan, args.batch_size):
            pass
        sync(device)

    def baseline(loader: torch.utils.data.DataLoader) -> Any:
        def run() -> None:
            for x, y in loader:
                x, y = x.to(device), y.to(device)
            sync(device)
        return run

    runs = {"ours": ours, **{str(w): baseline(template_loader(dd, args.batch_size, w)) for w in args.workers}}
    log(f"augment: ours and torchvision's transforms in DataLoaders with {args.workers} workers, "
        f"{dd.num_train} images, {args.repeats} rounds")
    seconds = interleaved_best(runs, args.repeats)
    del runs  # stops the loaders' persistent workers
    ours_rate = dd.num_train / seconds.pop("ours")
    return {"images": dd.num_train, "batch_size": args.batch_size, "ours_images_per_s": ours_rate,
            "dataloader": {w: {"images_per_s": dd.num_train / t, "speedup": ours_rate * t / dd.num_train}
                           for w, t in seconds.items()}}


# ---------------------------------------------------------------------------------------------
# 2. Training steps: our loop in several variants vs the template loop


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


# ---------------------------------------------------------------------------------------------
# 3. Packing: K training processes on one device at once


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


def peak_rss_mib() -> float:
    """This process's peak resident memory. Not getrusage's ru_maxrss: Linux carries that across exec, so a
    child started by a big parent would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024  # kB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # other systems: KiB (macOS: bytes)


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


# ---------------------------------------------------------------------------------------------
# 4. Tune overhead: a study of short trials through Tune vs the same trainings in one process


def bench_tune(args: argparse.Namespace, device: torch.device) -> dict[str, Any] | None:
    """A study of short trials through the project's own runner (experiment.run_study: Tune, checkpoints,
    results table) vs train() on the same configurations in this process. One trial at a time with every
    core in both, so the difference is Tune's cost, not a gain from side-by-side trials (part 3)."""
    try:
        import ray
    except ImportError:
        log("tune: Ray is not installed; part 4 skipped")
        return None
    from tune_cifar.experiment import RunOptions, run_study
    from tune_cifar.studies import Study

    n_eval = max(1, args.tune_images // 4)
    x, y = bench_images(args.tune_images + n_eval, args.data_dir)
    data = CifarData(x, y, x[:n_eval], y[:n_eval], [str(i) for i in range(NUM_CLASSES)], source="bench")
    base = {"epochs": args.tune_epochs, "batch_size": args.batch_size,
            "val_fraction": n_eval / (args.tune_images + n_eval), "device": device.type, "download": False}
    study = Study("bench", "Tune overhead: short trials", base, {"lr": [0.01 * (i + 1) for i in range(args.tune_trials)]})
    log(f"tune: {args.tune_trials} trials one after another in this process")
    t0 = time.perf_counter()
    for cfg in study.configs():
        train(cfg, data)
    sequential_s = time.perf_counter() - t0

    log("tune: the same trials through Ray Tune (tune_cifar.experiment.run_study)")
    cores = len(os.sched_getaffinity(0))
    t0 = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, configure_logging=False)
    init_s = time.perf_counter() - t0
    try:
        with tempfile.TemporaryDirectory() as storage, contextlib.redirect_stdout(sys.stderr):  # stdout: the table
            opts = RunOptions(storage_path=storage, download=False, cpus_per_trial=cores, device=device.type,
                              gpus_per_trial=1.0 if device.type == "cuda" else 0.0, max_failures=0)
            t0 = time.perf_counter()
            df = run_study(study, data, opts, storage)
            tune_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
    results = len(df)
    if results != args.tune_trials * args.tune_epochs or (df["status"] != "TERMINATED").any():
        raise RuntimeError(f"the benchmark's Tune study ended with {results} results of "
                           f"{args.tune_trials * args.tune_epochs} expected, or with failed trials")
    return {"trials": args.tune_trials, "epochs": args.tune_epochs, "train_images": args.tune_images,
            "sequential_s": sequential_s, "ray_init_s": init_s, "tune_fit_s": tune_s,
            "overhead_s_per_trial": (tune_s - sequential_s) / args.tune_trials,
            "overhead_s_per_result": (tune_s - sequential_s) / results}


# ---------------------------------------------------------------------------------------------
# Projection, table, entry point


def projection(result: dict[str, Any], device: torch.device) -> dict[str, Any] | None:
    train_part = result.get("train")
    if not train_part:
        return None
    best = train_part["ours"][train_part["default_variant"]]
    seconds = (ALL_STUDY_TRIAL_EPOCHS * (TRAIN_IMAGES / best["images_per_s"] + VAL_IMAGES / best["eval_images_per_s"])
               + ALL_STUDY_TRIALS * TEST_IMAGES / best["eval_images_per_s"])
    packing = (result.get("pack") or {}).get("packing_factor") or 1.0
    out = {"variant": train_part["default_variant"], "trial_epochs": ALL_STUDY_TRIAL_EPOCHS,
           "device_hours": seconds / 3600, "device_hours_packed": seconds / 3600 / max(packing, 1.0),
           "packing_factor": packing}
    name = result["machine"]["device_name"]
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None) if device.type == "cuda" else None
    achieved = train_part["train_gflop_per_image"] * 1e9 * best["images_per_s"]
    out.update(achieved_tflops=achieved / 1e12, peak_tflops=peak / 1e12 if peak else None,
               fraction_of_peak=achieved / peak if peak else None)
    if device.type == "cuda" and "peak_memory_mib" in best:
        bench_bytes = (train_part["steps"] * train_part["batch_size"]) * 3 * 32 * 32
        out["trial_memory_mib"] = best["peak_memory_mib"] + (FULL_DATA_BYTES - bench_bytes) / 2**20
    return out


def machine(device: torch.device) -> dict[str, Any]:
    try:
        ray_version = importlib.metadata.version("ray")  # without importing it
    except importlib.metadata.PackageNotFoundError:
        ray_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return {"device": device.type, "device_name": name, "cpu_cores": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "ray": ray_version,
            "load_average_1m": os.getloadavg()[0],
            "python": platform.python_version()}


def fmt(v: float | None, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def format_table(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [f"tune_cifar.bench on {m['device']} ({m['device_name']}, {m['cpu_cores']} cores), torch {m['torch']}, "
             f"ray {m['ray'] or 'not installed'}, data {r['data']}; load average {m['load_average_1m']:.2f} at "
             f"start, {r['load_average_1m_at_end']:.2f} at end"]
    if r.get("augment"):
        a = r["augment"]
        lines += [f"\n1. augmentation + batching ({a['images']} images, batch {a['batch_size']})",
                  f"   {'pipeline':<50}{'images/s':>12}{'ours is':>10}",
                  f"   {'ours: on-device gather, crop_flip, normalise':<50}{fmt(a['ours_images_per_s']):>12}{'':>10}"]
        for w, d in a["dataloader"].items():
            lines.append(f"   {f'torchvision transforms, DataLoader {w} workers':<50}{fmt(d['images_per_s']):>12}"
                         f"{fmt(d['speedup'], '.1f') + 'x':>10}")
    if r.get("train"):
        t = r["train"]
        lines += [f"\n2. training MobileNet ({t['steps']} steps of {t['batch_size']} per timed epoch, each after a warm-up "
                  f"epoch; fastest of {t['repeats']} rounds; {t['train_gflop_per_image']:.3f} GFLOP/image)",
                  f"   {'loop':<50}{'images/s':>12}{'ms/step':>10}{'vs ref':>8}",
                  f"   {'reference: template, DataLoader ' + str(t['reference']['dataloader_workers']) + ' workers, fp32':<50}"
                  f"{fmt(t['reference']['images_per_s']):>12}{fmt(t['reference']['ms_per_step']):>10}{'1.00x':>8}"]
        for name, v in t["ours"].items():
            label = f"ours {name}" + (" (default)" if v["default"] else "")
            lines.append(f"   {label:<50}{fmt(v['images_per_s']):>12}{fmt(v['ms_per_step']):>10}"
                         f"{fmt(v['speedup'], '.2f') + 'x':>8}")
        if "host_syncs_per_step" in t:
            lines.append(f"   host syncs per step in our loop: {fmt(t['host_syncs_per_step'], '.2f')}")
    if r.get("pack"):
        p = r["pack"]
        lines += [f"\n3. packing: K processes training at once on one {m['device']} ({p['steps']} steps of "
                  f"{p['batch_size']} each)",
                  f"   {'K':>3}{'threads':>9}{'total images/s':>16}{'per process':>13}{'vs K=1':>8}{'peak MiB/proc':>15}"]
        for row in p["rows"]:
            lines.append(f"   {row['k']:>3}{fmt(row['threads'], 'd') if row['threads'] else '-':>9}"
                         f"{fmt(row['images_per_s']):>16}{fmt(row['per_process_images_per_s']):>13}"
                         f"{fmt(row['vs_k1'], '.2f') + 'x':>8}{fmt(row['peak_memory_mib']):>15}")
    if "tune" in r:
        t = r["tune"]
        if t is None:
            lines.append("\n4. Tune overhead: skipped (Ray not installed or --skip-tune)")
        else:
            lines += [f"\n4. Tune overhead ({t['trials']} trials x {t['epochs']} epochs on {t['train_images']} images, "
                      f"one at a time with every core, in both)",
                      f"   one after another in one process   {t['sequential_s']:8.1f} s",
                      f"   through Tune (run_study)             {t['tune_fit_s']:8.1f} s  (+ ray.init {t['ray_init_s']:.1f} s)",
                      f"   overhead per trial {t['overhead_s_per_trial']:.2f} s, per reported result "
                      f"{t['overhead_s_per_result']:.2f} s"]
    if r.get("projection"):
        q = r["projection"]
        lines += [f"\nprojection of the `all` study ({q['trial_epochs']} trial-epochs of 40k train + 10k val images) "
                  f"with ours {q['variant']}: {q['device_hours']:.1f} {m['device']}-hours one trial at a time, "
                  f"{q['device_hours_packed']:.1f} packed ({q['packing_factor']:.2f}x)",
                  f"achieved {q['achieved_tflops']:.3f} TFLOP/s of training; peak "
                  f"{fmt(q['peak_tflops'], '.0f') if q['peak_tflops'] else 'unknown'} TFLOP/s"
                  + (f" ({100 * q['fraction_of_peak']:.1f}%)" if q['fraction_of_peak'] else "")]
        if "trial_memory_mib" in q:
            lines.append(f"one trial's device memory: {q['trial_memory_mib']:,.0f} MiB (peak allocated, with the full "
                         f"CIFAR-100 resident); choose --gpus-per-trial from it")
    lines.append(f"\naugment_speedup {fmt(r['augment_speedup'], '.2f')}  train_speedup {fmt(r['train_speedup'], '.2f')}  "
                 f"tune_overhead_s_per_trial {fmt(r['tune_overhead_s_per_trial'], '.2f')}")
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    device = pick_device(args.device)
    if os.getloadavg()[0] > 0.5 * len(os.sched_getaffinity(0)):
        log(f"warning: load average {os.getloadavg()[0]:.1f} on {len(os.sched_getaffinity(0))} cores; other "
            f"processes will distort the figures (see load_average_1m in the JSON)")
    result: dict[str, Any] = {"machine": machine(device), "data": args.data_dir or "synthetic",
                              "sizes": {k: v for k, v in vars(args).items() if k not in ("json", "worker", "threads")}}
    if not args.skip_augment:
        result["augment"] = bench_augment(args, device)
    if not args.skip_train:
        result["train"] = bench_train(args, device)
    if not args.skip_pack:
        result["pack"] = bench_pack(args, device)
    result["tune"] = None if args.skip_tune else bench_tune(args, device)
    result["projection"] = projection(result, device)
    result["load_average_1m_at_end"] = os.getloadavg()[0]
    if device.type == "cpu" and result.get("pack"):
        k1 = next((row for row in result["pack"]["rows"] if row["k"] == 1), None)
        result["trial_memory_mib"] = k1["peak_memory_mib"] if k1 else None  # peak RSS of one training process
    elif result["projection"]:
        result["trial_memory_mib"] = result["projection"].get("trial_memory_mib")
    two = (result.get("augment") or {}).get("dataloader", {}).get("2")
    result["augment_speedup"] = two["speedup"] if two else None
    result["train_speedup"] = (result.get("train") or {}).get("speedup")
    result["tune_overhead_s_per_trial"] = (result["tune"] or {}).get("overhead_s_per_trial")
    return result


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
    for part in ("augment", "train", "pack", "tune"):
        p.add_argument(f"--skip-{part}", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a packing child process
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.batch_size, args.augment_images, args.train_steps, args.train_repeats, args.pack_steps, args.eval_images,
           args.tune_trials, args.tune_images, args.tune_epochs, args.repeats, *args.pack) < 1:
        p.error("sizes, counts and K must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return pack_worker(args)
    result = run_bench(args)
    print(format_table(result), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

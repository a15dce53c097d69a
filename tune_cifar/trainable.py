"""The Ray Tune function trainable: a thin adapter from Tune to the Ray-free loop in train.py."""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ray
import torch
from ray import tune

from tune_cifar.config import TrainConfig
from tune_cifar.data import CifarData, data_summary, device_data
from tune_cifar.provenance import provenance
from tune_cifar.results import trial_config
from tune_cifar.storage import join, read_text, write_atomic
from tune_cifar.train import CheckpointMismatch, TrainState, pick_device, train

CHECKPOINT_FILE = "state.pt"


# The default cadence's floor: a checkpoint costs the same (26.6 MB for MobileNet, model + momentum buffers)
# whether an epoch takes 1 s or 10 min, and what it buys is the work a killed trial would repeat. So a
# run saves at most every 5 minutes of its own time; storage traffic per trial-hour stays bounded on fast
# devices. The final epoch is the exception: its weights are what the study trained (tune_cifar.export),
# so a trial that reaches it always saves it, and a short trial writes that one only.
MIN_CHECKPOINT_GAP_S = 300.0


@dataclass(frozen=True)
class TrialOptions:
    study: str = ""
    checkpoint_every: int | None = None  # epochs between checkpoints, exactly; None: the default cadence
    also_every: int | None = None  # a scheduler's own cadence (PBT's perturbation interval), saved as well
    min_checkpoint_gap_s: float = MIN_CHECKPOINT_GAP_S  # default cadence: seconds of this run between checkpoints
    experiment_path: str = ""  # the study's folder on storage (path or URI), where Tune puts the trial folders


def checkpoint_interval(epochs: int) -> int:
    """The default's epoch cadence: about 30 checkpoints per trial at most, whatever its length (every epoch
    up to 30 epochs, every 10th of 300)."""
    return max(1, math.ceil(epochs / 30))


def checkpoint_due(epoch: int, epochs: int, diverged: bool, options: TrialOptions, since_saved_s: float) -> bool:
    """Whether the state after `epoch` (1-based) is saved; `since_saved_s`: seconds since this run's last
    checkpoint, or since it started.

    The final epoch always is (its weights are the trial's result, kept for export and reruns), and so are
    the scheduler's epochs (PBT clones them). `--checkpoint-every N` saves every Nth epoch and the last,
    exactly. The default saves on checkpoint_interval's cadence, and a diverged epoch, once at least
    `min_checkpoint_gap_s` have passed since the last save: a kill then repeats at most that long plus one
    cadence step, and a resumed trial's metrics are identical whichever checkpoint it resumes from (all
    randomness is drawn from (seed, epoch), train.py), so fewer checkpoints cost nothing in what resume gives.
    """
    if epoch >= epochs:
        return True
    if options.also_every is not None and epoch % options.also_every == 0:
        return True
    every = options.checkpoint_every or checkpoint_interval(epochs)
    on_cadence = epoch == epochs or diverged or epoch % every == 0
    if options.checkpoint_every is not None:
        return on_cadence
    return on_cadence and since_saved_s >= options.min_checkpoint_gap_s


def train_trial(config: dict[str, Any], data: CifarData, options: TrialOptions = TrialOptions()) -> None:
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint created" INFO line per epoch otherwise
    config = trial_config(config)  # a Repeater's copy number is that copy's training seed
    ctx = tune.get_context()
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    hide_gpus_without_share(gpu_ids, config.get("device", "auto"))
    trial_dir = trial_folder(options)
    trial_id = ctx.get_trial_id()
    resume_from = _load_checkpoint(tune.get_checkpoint())
    run_info = _read_run_info(trial_dir)  # an earlier start's, if any
    earlier = [(resume_from or {}).get("config", {}).get("precision"), run_info.get("config", {}).get("precision")]
    cfg = resolve_once(TrainConfig.from_dict(config), next((p for p in earlier if p in ("fp32", "bf16")), None),
                       bool(gpu_ids))
    cpus = ctx.get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    # A checkpoint saved by another trial is PBT's exploit: this trial goes on from the donor's state.
    donor = (resume_from or {}).get("trial_id")
    exploit = {"epoch": int(resume_from["epoch"]), "donor": donor} if donor not in (None, trial_id) else None
    _write_run_info(trial_dir, run_info.get("starts", []), cfg, options, gpu_ids, data_summary(data))
    splits = device_data(data, cfg.val_fraction, cfg.split_seed, pick_device(cfg.device))
    saved_at = time.monotonic()  # this run's start: a kill before its first checkpoint repeats what ran since

    def report(metrics: dict[str, Any], state: TrainState) -> None:
        nonlocal exploit, saved_at
        metrics = {**metrics, "device": cfg.device, "precision": cfg.precision,
                   "donor": exploit["donor"] if exploit else None}
        exploit = None  # only the first epoch after an exploit names its donor
        due = checkpoint_due(state.epoch, cfg.epochs, metrics["diverged"], options, time.monotonic() - saved_at)
        _report(metrics, {**state.state_dict(), "trial_id": trial_id, **splits.statistics()} if due else None)
        if due:
            saved_at = time.monotonic()

    _start_over_on_mismatch(lambda resume: train(cfg, splits, report, resume), resume_from, options.study)


def train_group(config: dict[str, Any], data: CifarData, options: TrialOptions = TrialOptions()) -> None:
    """A fused group (`config["members"]`: K configurations, see tune_cifar.fused) as one Tune trial.

    Each epoch is one Tune result: `members` maps each member still training to its metrics (results.py
    turns them into one trial per member), and the study's metric is the best member's, for Tune's own
    bookkeeping. One checkpoint holds the whole group, so resume and retries work per group.
    """
    from tune_cifar.fused import train_fused

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    ctx = tune.get_context()
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    hide_gpus_without_share(gpu_ids, config["members"][0].get("device", "auto"))
    trial_dir = trial_folder(options)
    resume_from = _load_checkpoint(tune.get_checkpoint())
    run_info = _read_run_info(trial_dir)  # an earlier start's, if any
    earlier = [((resume_from or {}).get("configs") or [{}])[0].get("precision"),
               (run_info.get("members") or [{}])[0].get("config", {}).get("precision")]
    precision = next((p for p in earlier if p in ("fp32", "bf16")), None)
    cfgs = [resolve_once(TrainConfig.from_dict(member), precision, bool(gpu_ids)) for member in config["members"]]
    torch.set_num_threads(max(1, int(ctx.get_trial_resources().required_resources.get("CPU", 1))))
    _write_run_info(trial_dir, run_info.get("starts", []), cfgs[0], options, gpu_ids, data_summary(data), members=cfgs)
    splits = device_data(data, cfgs[0].val_fraction, cfgs[0].split_seed, pick_device(cfgs[0].device))
    pending: dict[str, dict[str, Any]] = {}
    saved_at = time.monotonic()

    def report(k: int, metrics: dict[str, Any], state: Any) -> None:
        nonlocal saved_at
        pending[str(k)] = {**metrics, "device": cfgs[k].device, "precision": cfgs[k].precision}
        if k != state.reporting[-1]:
            return  # the group reports once per epoch, after its last member
        members = dict(pending)
        pending.clear()
        epoch = metrics["epoch"]
        sane = [m for m in members.values() if not m["diverged"]]
        best = max(sane or members.values(), key=lambda m: m.get("val_acc", float("-inf")))
        result = {"epoch": epoch, "val_acc": best["val_acc"], "val_loss": best["val_loss"], "members": members}
        due = checkpoint_due(epoch, cfgs[0].epochs, any(m["diverged"] for m in members.values()), options,
                             time.monotonic() - saved_at)
        _report(result, {**state.state_dict(), **splits.statistics()} if due else None)
        if due:
            saved_at = time.monotonic()

    _start_over_on_mismatch(lambda resume: train_fused(cfgs, splits, report, resume), resume_from, options.study)


def hide_gpus_without_share(gpu_ids: list[str], device: str) -> None:
    """A trial Ray gave no GPU sees none. Ray 2.60 no longer sets CUDA_VISIBLE_DEVICES="" for such tasks, so
    on a GPU node a CPU trial would see every GPU, and any CUDA call (an RNG state) would open a context on
    GPU 0, taking memory from the trials that own it. Set before this process first touches CUDA, which
    reads the variable once. An explicit `device="cuda"` is left to fail or run as the user asked."""
    if not gpu_ids and device != "cuda":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def _start_over_on_mismatch(run: Callable[[Any], None], resume_from: Any, study: str) -> None:
    """run(resume_from); a checkpoint that belongs to another configuration is said and set aside."""
    try:
        run(resume_from)
    except CheckpointMismatch as e:
        if resume_from is None:
            raise
        print(f"[{study}] checkpoint ignored, starting over: {e}", file=sys.stderr)
        run(None)


def _report(result: dict[str, Any], state_dict: dict[str, Any] | None) -> None:
    """One Tune result; with a checkpoint holding `state_dict` when one is given."""
    if state_dict is None:
        tune.report(result)
        return
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state_dict, os.path.join(tmp, CHECKPOINT_FILE))
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))


def resolve_once(cfg: TrainConfig, earlier_precision: str | None, has_gpu: bool) -> TrainConfig:
    """Device for this start (a restart may land on another node), precision once per trial.

    The first start resolves "auto" (bf16 on CUDA, fp32 on CPU) and records it in run_info.json
    and in every checkpoint; later starts of an "auto" trial keep that precision, so one trial never
    mixes bf16 and fp32 epochs. An explicit precision is never changed.
    """
    device = cfg.device
    if device == "auto":
        device = "cuda" if has_gpu and torch.cuda.is_available() else "cpu"
    precision = cfg.precision
    if precision == "auto" and earlier_precision:
        precision = earlier_precision
    if precision == "auto":
        precision = "bf16" if device == "cuda" else "fp32"
    return cfg.replace(device=device, precision=precision)


def trial_folder(options: TrialOptions) -> str:
    """The trial's folder on storage. run_info.json is written straight there, so Tune need not sync the
    trial's working folder (experiment.py), and a restart on another node still reads the earlier starts."""
    working = Path(tune.get_context().get_trial_dir())  # a local folder named as the one on storage
    return join(options.experiment_path, working.name) if options.experiment_path else str(working)


def _read_run_info(trial_dir: str) -> dict[str, Any]:
    try:
        return json.loads(read_text(join(trial_dir, "run_info.json")) or "{}")
    except (OSError, ValueError):
        return {}


def _load_checkpoint(checkpoint: tune.Checkpoint | None) -> dict[str, Any] | None:
    """The saved TrainState, or None (with a message) when the checkpoint cannot be read."""
    if checkpoint is None:
        return None
    try:
        with checkpoint.as_directory() as d:
            # weights_only: tensors and plain containers only. A checkpoint on shared storage is a pickle anyone
            # with write access could have replaced, and a full unpickle would run whatever code it names.
            return torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        print("checkpoint not loaded: torch.load(weights_only=True) refused it (it holds objects other than tensors "
              "and plain values: foreign, tampered or not a checkpoint); starting the trial over", file=sys.stderr)
        return None
    except Exception as e:  # truncated file, missing file: all mean "start over"
        first_line = (str(e).splitlines() or [""])[0]
        print(f"checkpoint unreadable ({type(e).__name__}: {first_line}); starting the trial over", file=sys.stderr)
        return None


def _write_run_info(trial_dir: str, starts: list[float], cfg: TrainConfig, options: TrialOptions,
                    gpu_ids: list[str], data: dict[str, Any], members: list[TrainConfig] | None = None) -> None:
    """What produced this trial, beside its results; restarts are appended to the earlier `starts` (PBT's
    exploits are in the results: the `donor` of the first epoch after each)."""
    ctx = tune.get_context()
    resources = ctx.get_trial_resources().required_resources
    info = {
        "study": options.study,
        "trial_id": ctx.get_trial_id(),
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "data": data,  # generated or the release, and its sizes (tune_cifar.data.data_summary)
        "resources": {"cpu": resources.get("CPU", 0), "gpu": resources.get("GPU", 0)},
        "gpu_ids": gpu_ids,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "start_time": starts[0] if starts else time.time(),
        "starts": starts + [time.time()],
        **provenance(),
    }
    if members is not None:  # a fused group: every member's id and resolved config
        info["members"] = [{"trial_id": f"{info['trial_id']}-{k}", "config": m.to_dict()} for k, m in enumerate(members)]
        del info["config"], info["seed"]
    write_atomic(join(trial_dir, "run_info.json"), json.dumps(info, indent=2, default=str))

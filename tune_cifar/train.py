"""The training loop: plain PyTorch, no Ray. One call trains one configuration.

    python -m tune_cifar.train --data-dir DIR --lr 0.05 --epochs 15   # one JSON line per epoch on stdout
    python -m tune_cifar.train --from RESULTS/STUDY/<trial folder>/run_info.json [--set FIELD=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from tune_cifar import rerun
from tune_cifar.config import ConfigError, TrainConfig, add_config_flags, config_from_args
from tune_cifar.data import CifarData, DataError, DeviceData, EpochPlan, data_summary, load_cifar, require_dataset
from tune_cifar.mixing import MixupPlan, draw_mixing, mixup, mixup_loss_and_hits  # noqa: F401 (re-exported)
from tune_cifar.models import build_for
from tune_cifar.schedules import PER_STEP, lr_at, schedule_lr  # noqa: F401 (lr_at re-exported)
from tune_cifar.schema import CHECKPOINT_FIELDS

_DEFAULTS = TrainConfig().to_dict()  # what a checkpoint saved before a field existed ran with


class CheckpointMismatch(RuntimeError):
    """A saved state belongs to another configuration (model, study values, seed)."""


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("invalid device='cuda': no CUDA device is visible; use --device cpu or auto")
    return torch.device(requested)


def resolve_runtime(cfg: TrainConfig) -> TrainConfig:
    """`device` and `precision` as they will run: "auto" becomes cuda/cpu and bf16 (cuda) / fp32 (cpu).

    Resolved once per run and saved in its checkpoints, so a run that restarts elsewhere keeps its
    arithmetic (a bf16 checkpoint is never continued in fp32, nor pooled with fp32 runs in analysis).
    """
    device = pick_device(cfg.device).type
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device == "cuda" else "fp32")
    return cfg.replace(device=device, precision=precision)


def set_fp32_matmul(precision: str) -> None:
    """fp32 means IEEE fp32 on CUDA too: PyTorch's cuDNN convolutions default to TF32 (10-bit mantissa).

    Set through the legacy flags: on torch >= 2.9 they set the newer `fp32_precision` ones to match, and
    both APIs stay readable. Setting only the newer ones leaves cuDNN's root flag at "none", after which
    reading `cudnn.allow_tf32`, `matmul.allow_tf32` or `get_float32_matmul_precision()`, or entering
    `cudnn.flags()`, raises "mix of the legacy and new APIs" (reproduced on 2.14; Inductor reads them:
    pytorch#166387, torch.compile crashing on 2.9-2.10).
    """
    tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def precision_state() -> dict[str, Any]:
    """The switches a run's arithmetic depends on, read back through both APIs (a mix would raise here)."""
    state = {"matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
             "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
             "float32_matmul_precision": torch.get_float32_matmul_precision(),
             "cudnn_deterministic": torch.backends.cudnn.deterministic,
             "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9
        state.update(matmul_fp32_precision=torch.backends.cuda.matmul.fp32_precision,
                     conv_fp32_precision=torch.backends.cudnn.conv.fp32_precision)  # "none" when TF32 is off
    return state


def set_determinism(deterministic: bool) -> None:
    """Pinned by every run, so a process that trains configurations in turn never inherits another's.

    On CUDA, cuDNN's weight-gradient kernels may sum in a different order from one call to the next;
    deterministic picks kernels that do not, and torch.use_deterministic_algorithms covers the rest (cuBLAS
    needs CUBLAS_WORKSPACE_CONFIG, read when this process makes its first cuBLAS handle). warn_only: an op
    without a deterministic CUDA kernel (adaptive_avg_pool2d's backward: resnet18, wide_resnet) warns
    instead of failing the trial, and that model's runs are not bit-exact (README, Performance).
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov)


class TrainState:
    """Everything a resumed run needs: model, optimiser (momentum buffers), epochs done, RNG states.

    The schedule is a pure function of the epoch, and shuffling, augmentation and mixup draw from
    generators seeded by (seed, epoch), so these are the only state there is.
    """

    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.cfg = cfg
        self.device = device
        torch.manual_seed(cfg.seed)
        self.model = build_for(cfg).to(device)  # its classifier has the dataset's classes
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model.parameters(), cfg)
        self.epoch = 0  # epochs completed

    def state_dict(self) -> dict[str, Any]:
        state = {
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":  # reading CUDA's RNG opens a context on every visible GPU
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("config", {}) if isinstance(state, dict) else {}
        # A field missing from a saved config is newer than the checkpoint, which ran with its default.
        saved = {k: saved.get(k, _DEFAULTS[k]) for k in CHECKPOINT_FIELDS}
        diff = [k for k in CHECKPOINT_FIELDS if saved[k] != getattr(self.cfg, k)]
        if diff:
            raise CheckpointMismatch(
                "checkpoint is from another configuration (" +
                ", ".join(f"{k}: saved {saved[k]!r} vs {getattr(self.cfg, k)!r}" for k in diff) + ")"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            # The saved groups hold the saver's momentum and weight decay; PBT continues a donor's state
            # with its own mutated values, so the config's win (the lr is set every epoch anyway).
            for group in self.optimizer.param_groups:
                group.update(momentum=self.cfg.momentum, weight_decay=self.cfg.weight_decay)
            self.epoch = int(state["epoch"])
            torch.set_rng_state(state["torch_rng"])
        except (KeyError, RuntimeError, TypeError, ValueError) as e:
            raise CheckpointMismatch(f"checkpoint does not fit this run ({type(e).__name__}: {e})") from None
        if self.device.type == "cuda":
            restore_cuda_rng(state.get("cuda_rng", []))


def restore_cuda_rng(states: list[torch.Tensor]) -> None:
    """The saved states of the GPUs visible here. A run trains on its first visible GPU, so a checkpoint
    saved where more were visible (a restart on a smaller node) keeps what matters; a CPU run touches none.

    Any failure is a CheckpointMismatch, so the trial starts over instead of crashing: torch raises
    IndexError for a device index it does not have (not one of the errors a state_dict load raises),
    RuntimeError for a state of another generator's size, TypeError for a saved value that is no tensor.
    """
    try:
        for index, rng in enumerate(list(states)[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(rng, index)
    except Exception as e:  # noqa: BLE001 (whatever torch raises here, the checkpoint does not fit)
        raise CheckpointMismatch(f"checkpoint's CUDA RNG states do not fit the GPUs here "
                                 f"({type(e).__name__}: {e})") from None


EpochCallback = Callable[[dict[str, Any], TrainState], None]


def evaluate(model: torch.nn.Module, data: DeviceData, split: str, cfg: TrainConfig,
             autocast: torch.autocast) -> tuple[float, float]:
    """True mean cross-entropy (never label-smoothed) and accuracy over a whole split."""
    model.eval()
    loss_sum = torch.zeros((), device=data.device, dtype=torch.float64)
    hits = torch.zeros((), device=data.device, dtype=torch.int64)
    count = 0
    with torch.no_grad(), autocast:
        for x, y in data.eval_batches(split, cfg.eval_batch_size):
            logits = model(_layout(x, cfg)).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            hits += (logits.argmax(1) == y).sum()
            count += len(y)
    return loss_sum.item() / count, hits.item() / count


def _layout(x: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    if cfg.channels_last:  # MobileNet steps ~1.5x faster in NHWC on cpu too (python -m tune_cifar.bench)
        return x.contiguous(memory_format=torch.channels_last)
    return x


class OutOfMemory(MemoryError):
    """The device ran out of memory; the message says which knobs give a trial more room."""


def is_oom(e: BaseException) -> bool:
    text = str(e)
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),  # torch >= 2.5
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
    return isinstance(e, oom_types) or (
        isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def train(cfg: TrainConfig, data: CifarData | DeviceData, on_epoch: EpochCallback | None = None,
          resume_from: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `cfg` from scratch or from a saved TrainState dict; return the last epoch's metrics."""
    try:
        return _train(cfg, data, on_epoch, resume_from)
    except (RuntimeError, MemoryError) as e:
        if not is_oom(e):
            raise
        in_use = (f", {torch.cuda.memory_reserved() / 2**30:.1f} GiB reserved by this process"
                  if torch.cuda.is_available() and torch.cuda.is_initialized() else "")
        raise OutOfMemory(
            f"out of {cfg.device} memory training {cfg.model} at batch_size={cfg.batch_size}{in_use}: give each "
            f"trial a larger share with --gpus-per-trial (fewer trials per GPU), lower --max-concurrent, or lower "
            f"the batch size (--set batch_size=64). [{str(e).splitlines()[0][:200]}]"
        ) from None


def _train(cfg: TrainConfig, data: CifarData | DeviceData, on_epoch: EpochCallback | None,
           resume_from: dict[str, Any] | None) -> dict[str, Any]:
    require_dataset(data.dataset, cfg.dataset)
    if isinstance(data, CifarData):
        data = DeviceData(data, cfg.val_fraction, cfg.split_seed, pick_device(cfg.device))
    device = data.device
    cfg = resolve_runtime(cfg.replace(device=device.type))
    state = TrainState(cfg, device)
    if resume_from is not None:
        state.load_state_dict(resume_from)
    set_determinism(cfg.deterministic)
    if device.type == "cuda":
        set_fp32_matmul(cfg.precision)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    step_model = torch.compile(state.model) if (cfg.compile and device.type == "cuda") else state.model

    metrics: dict[str, Any] = {}
    while state.epoch < cfg.epochs:
        epoch = state.epoch
        t0 = time.perf_counter()
        lr = schedule_lr(cfg, epoch, 0, steps_per_epoch(data.num_train, cfg.batch_size))  # at the epoch's first step
        set_lr(state.optimizer, lr)
        train_loss, train_acc = _train_epoch(step_model, state.optimizer, data, cfg, epoch, autocast)
        train_s = time.perf_counter() - t0
        val_loss, val_acc = evaluate(step_model, data, "val", cfg, autocast)
        state.epoch = epoch + 1
        diverged = not math.isfinite(train_loss)
        metrics = {
            "epoch": epoch + 1,  # 1-based: epochs completed
            "lr": lr,  # the hyperparameters in force this epoch (PBT may change them between epochs)
            "weight_decay": cfg.weight_decay,
            "momentum": cfg.momentum,
            "mixup_alpha": cfg.mixup_alpha if cfg.mix == "mixup" else 0.0,
            "train_loss": train_loss,
            "train_acc": train_acc,  # under mixup and cutmix: lambda-weighted against both labels
            "val_loss": val_loss,
            "val_acc": val_acc,
            "diverged": diverged,
        }
        if state.epoch == cfg.epochs or diverged:
            metrics["test_loss"], metrics["test_acc"] = evaluate(step_model, data, "test", cfg, autocast)
        metrics["images_per_s"] = data.num_train / train_s
        metrics["epoch_s"] = time.perf_counter() - t0
        if on_epoch is not None:
            on_epoch(metrics, state)
        if diverged:
            break
    return metrics


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    return math.ceil(num_train / batch_size)  # the last partial batch is a step


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr  # a Python float: setting it per step costs no device sync


def _train_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: DeviceData, cfg: TrainConfig,
                 epoch: int, autocast: torch.autocast) -> tuple[float, float]:
    """One pass over the training split; loss and accuracy accumulate on the device (one sync at the end)."""
    model.train()
    plan = EpochPlan.draw(data.num_train, cfg.seed, epoch).to(data.device)
    mix = draw_mixing(cfg, data.num_train, epoch)
    if mix is not None:
        mix = mix.to(data.device)
    per_step, steps = cfg.schedule in PER_STEP, steps_per_epoch(data.num_train, cfg.batch_size)
    loss_sum = torch.zeros((), device=data.device, dtype=torch.float64)
    hits = torch.zeros((), device=data.device, dtype=torch.float64)
    for step, (x, y) in enumerate(data.train_batches(plan, cfg.batch_size)):
        if per_step:
            set_lr(optimizer, schedule_lr(cfg, epoch, step, steps))
        with autocast:
            # Label smoothing is for the training loss only; evaluate() keeps plain cross-entropy so
            # val/test losses compare across configurations.
            if mix is None or not mix.mixes(step):
                logits = model(_layout(x, cfg)).float()
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                batch_hits = (logits.argmax(1) == y).sum()
            else:
                x, lam, perm = mix.apply(step, x, cfg.batch_size)
                logits = model(_layout(x, cfg)).float()
                loss, batch_hits = mixup_loss_and_hits(logits, y, y[perm], lam, cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().double() * len(y)
        hits += batch_hits.double()
    return loss_sum.item() / data.num_train, hits.item() / data.num_train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tune_cifar.train",
                                     description="Train one configuration without Ray; JSON metrics per epoch on stdout.")
    add_config_flags(parser)
    rerun.add_flags(parser)
    args = parser.parse_args(argv)
    try:
        if not args.rerun and (args.overrides or args.member is not None):
            raise ConfigError("--set and --member change a rerun's recorded configuration: give --from "
                              "RUN_INFO, or set a field with its own flag (--lr 0.1)")
        cfg = rerun.config_from_run_info(args, argv) if args.rerun else config_from_args(args)
        data = load_cifar(cfg.data_dir, cfg.download, cfg.dataset)
        if args.rerun:
            rerun.warn_if_other_data(args, data_summary(data))
        device = pick_device(cfg.device)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"training {cfg.model} on {device} for {cfg.epochs} epochs ({len(data.train_x)} images, "
          f"val fraction {cfg.val_fraction})", file=sys.stderr)

    def report(metrics: dict[str, Any], state: TrainState) -> None:
        print(json.dumps(metrics), flush=True)
        print(f"epoch {metrics['epoch']}/{cfg.epochs}  train_loss {metrics['train_loss']:.4f}  "
              f"val_acc {metrics['val_acc']:.4f}  {metrics['images_per_s']:.0f} img/s", file=sys.stderr)

    try:
        final = train(cfg, data, report)
    except OutOfMemory as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    return 1 if final.get("diverged") else 0


if __name__ == "__main__":
    sys.exit(main())

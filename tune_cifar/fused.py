"""K same-shape configurations trained as one fused model in one process (issue 13).

    results = train_fused([cfg_a, cfg_b, cfg_c], data, on_epoch)   # one metrics dict per member

A MobileNet trial at batch 128 keeps a GPU busy launching small kernels. Fused, each launch does the
work of K trials: member k's weights sit in rows [k*d0, (k+1)*d0) of every tensor, its images in
channels [3k, 3k+3) of the input, and each layer runs once for all members:

- Conv2d(groups=g) -> one conv with groups=K*g over weights (K*Cout, Cin/g, kh, kw), as HFTA (Wang et
  al., MLSys 2021) does; a depthwise conv stays depthwise, a dense one becomes K groups;
- BatchNorm2d(C) -> BatchNorm2d(K*C): statistics are per channel, so each member's are its own;
- Linear -> one baddbmm over (K, N, in) x (K, in, out).

The model's own `forward` runs unchanged over the (N, K*C, H, W) tensors. Leaf modules outside that
table raise ConfigError naming their type, and a probe compares the fused forward against each member's
own at build time, so a forward that mixes channels (a concat along channels, a channel shuffle) is
refused instead of training K entangled models.

Why the grouped-conv rewrite and not torch.func (vmap of functional_call over stack_module_state):
measured on this project's 2-core CPU (torch 2.14.1, MobileNet, batch 128 per member, channels_last,
fp32), one forward + backward + SGD step of all K members on resident tensors, best of 6 interleaved
rounds; other jobs shared the machine (load average 4.1 at start, 3.2 at end), so read the ratios,
not the last digit (`python -m tune_cifar.bench.fused --methods-only --steps 1 --repeats 6`):

    images/s, all members      K=1    K=2    K=4    K=8
    plain models, in turn       633    699    669    653   (one nn.Module + torch SGD per member)
    grouped conv (fusion.py)    611    390    264    228
    vmap                        512    259    195    125

The grouped rewrite beat vmap at every K (1.2x at K=1, 1.3-1.8x above), and at K=1 it runs the plain
model's own kernels (groups unchanged), so a lone member costs what train() does (0.97x per step).
On this CPU neither fusion beats stepping members in turn: oneDNN's dense 1x1 convolutions are faster
than grouped ones, and two cores are busy at batch 128 already. End to end (train_fused vs K train()
runs in this process vs K processes at once, second of 2 epochs of 3 steps timed, best of 2 rounds,
load average 0.8 rising to 9.5; `python -m tune_cifar.bench.fused --device cpu --steps 3`):

    images/s, all members      K=1    K=2    K=4    K=8
    fused (train_fused)         443    364    287    141
    sequential (train())        564    621    651    225
    packed (K processes)        507    541    331    301

(the K=1 fused/plain gap there is noise: interleaved A/B runs of train_fused([cfg]) against train(cfg)
gave 674 vs 643 and 729 vs 623 images/s, best of 12 and of 6 rounds.) The case for fusion is a GPU,
where one small trial is bound by kernel launches and Python (HFTA reports 2.4x for three MobileNetV2
on a V100): fused, each launch does K times the work, and the whole step can be one CUDA graph.
`python -m tune_cifar.bench.fused --device cuda --methods` measures that whenever a GPU is lent (not in
this session). vmap lowers convolutions to the same grouped kernels there, so it is not expected to
win on the GPU either; its row in the --methods table would say if it does.

Each member keeps, exactly as an independent train() of its config would:
- its initial weights (TrainState: torch.manual_seed(seed), then build_model);
- its data order, crops, flips and mixup draws (EpochPlan / MixupPlan with its own seed); a member
  without mixup runs the mixup formula with lambda = 1, which is the plain loss and accuracy exactly;
- its SGD: lr from its schedule each epoch (schedules.schedule_lr; per-step schedules are refused), its weight decay and momentum, as torch.optim.SGD
  (coupled weight decay, dampening 0, no Nesterov). One update over a flat buffer that holds every
  parameter, with per-element lr / weight decay / momentum tensors refreshed once per epoch: five
  elementwise kernels per step whatever K is, no host sync;
- its BatchNorm running statistics (momentum 0.1, unbiased running variance, as BatchNorm2d);
- its metrics, with train()'s keys; `images_per_s` is the member's own (the group's is K times that);
- its divergence: a member whose epoch train loss is not finite is reported diverged at that epoch
  (with its test metrics, as train() does), then frozen: torch.where keeps its parameters, momentum
  and BatchNorm statistics as they were (never a multiply by 0: NaN * 0 is NaN), it reports nothing
  more, and the others go on. The group stops when every member has diverged or finished.

Members agree with independent runs to rounding, not bit for bit: a grouped convolution may sum in
another order than a dense one, and this network amplifies rounding quickly (its fp32 gradients at
initialisation differ from fp64 ones by 1e-3..2e-2). Tested (tests/test_fused.py, 2 epochs of one step):
with channels_last, every metric within 1e-4 relative of train() (measured ~3e-6), parameters within
2% of the distance they travelled (BatchNorm statistics: 1e-5 of theirs); in NCHW the fused run is as far
from train() as train() is from itself in the other memory layout (epoch-2 train loss ~5e-3).
Members beside a diverged one compute bit for bit what they compute beside a healthy one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tune_cifar.config import ConfigError, TrainConfig
from tune_cifar.data import CifarData, DeviceData, EpochPlan, crop_flip, normalise, require_dataset
from tune_cifar.fusion import FlatViews, fuse_models, fused_sgd_
from tune_cifar.schema import CHECKPOINT_FIELDS
from tune_cifar.schedules import PER_STEP, schedule_lr
from tune_cifar.train import (CheckpointMismatch, MixupPlan, OutOfMemory, TrainState, is_oom, pick_device,
                              resolve_runtime, restore_cuda_rng, set_determinism, set_fp32_matmul)

# Fields every member of a group must share: one network shape, one data stream, one arithmetic.
GROUP_FIELDS = ("dataset", "model", "epochs", "batch_size", "split_seed", "val_fraction", "data_dir", "download",
                "device", "precision", "channels_last", "compile", "deterministic", "eval_batch_size")
# Fields each member has for itself.
MEMBER_FIELDS = ("lr", "schedule", "step_milestones", "step_gamma", "warmup_epochs", "weight_decay", "momentum",
                 "mixup_alpha", "seed")
# Every TrainConfig field train_fused honours. A field added to TrainConfig later is refused when it is
# not at its default, until it is handled here: the fused loop cannot silently drop, say, label smoothing.
SUPPORTED_FIELDS = GROUP_FIELDS + MEMBER_FIELDS
FORMAT = "tune_cifar.fused/1"
_DEFAULTS = TrainConfig().to_dict()


def unsupported_fields(cfg: TrainConfig) -> list[str]:
    """Names of fields set away from their default that the fused loop does not implement."""
    default = type(cfg)()
    refused = [f.name for f in fields(cfg)
               if f.name not in SUPPORTED_FIELDS and getattr(cfg, f.name) != getattr(default, f.name)]
    if cfg.schedule in PER_STEP:  # the fused loop sets each member's lr once per epoch
        refused.append("schedule")
    return refused


def compatible(cfgs: Sequence[TrainConfig]) -> list[str]:
    """Why these configs cannot train as one group; empty when they can.

    Compares the fields as written: "auto" and "cpu" count as different devices here (train_fused
    compares them after resolving, against the data's device).
    """
    if not cfgs:
        return ["no configurations"]
    reasons = []
    for name in GROUP_FIELDS:
        values = [getattr(c, name) for c in cfgs]
        if len(set(values)) > 1:
            reasons.append(f"{name} differs ({', '.join(sorted({repr(v) for v in values}))})")
    for i, cfg in enumerate(cfgs):
        for name in unsupported_fields(cfg):
            reasons.append(f"member {i}: {name}={getattr(cfg, name)!r} is not supported by the fused loop")
    return reasons


def group_configs(cfgs: Sequence[TrainConfig], max_members: int | None = None) -> list[list[int]]:
    """Indices of `cfgs` partitioned into fusable groups of at most `max_members`, in first-seen order.

    A config the fused loop cannot run at all (unsupported field) gets a group of its own, for train().
    """
    groups: dict[Any, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        key = ("alone", i) if unsupported_fields(cfg) else tuple(getattr(cfg, n) for n in GROUP_FIELDS)
        groups.setdefault(key, []).append(i)
    size = max_members or max(1, len(cfgs))
    return [members[s : s + size] for members in groups.values() for s in range(0, len(members), size)]


# ---------------------------------------------------------------------------------------------
# The group's state: what a checkpoint holds


class FusedState:
    """The fused model, its flat parameter/grad/momentum buffers, epochs done and divergence flags.

    `state_dict()` holds each member as the TrainState dict an independent run would save
    (`member_state(i)`), so a fused checkpoint can be continued fused, or split and continued by train().
    """

    def __init__(self, cfgs: Sequence[TrainConfig], device: torch.device):
        self.cfgs = list(cfgs)
        self.k = len(cfgs)
        self.device = device
        shells = [TrainState(cfg, torch.device("cpu")) for cfg in cfgs]  # train()'s initial weights, seed by seed
        self._template = shells[0]
        self.model = fuse_models([s.model for s in shells], cfgs[0].model).to(device)
        if cfgs[0].channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._param_names = [n for n, _ in self.model.named_parameters()]
        params = [p for _, p in self.model.named_parameters()]
        self.layout = FlatViews(params, self.k)
        self.flat = self.layout.alloc(params[0])
        for view, p in zip(self.layout.views(self.flat), params):
            view.copy_(p.detach())
        self.grad = self.layout.alloc(params[0])
        self.momentum_buf = self.layout.alloc(params[0])
        slots = zip(self._param_slots(), self.layout.views(self.flat), self.layout.views(self.grad))
        for (module, name), view, grad in slots:
            module._parameters[name] = nn.Parameter(view)  # an alias of the flat buffer
            module._parameters[name].grad = grad  # backward accumulates into the flat grad buffer
        named_bns = [(n, m) for n, m in self.model.named_modules()
                     if isinstance(m, nn.BatchNorm2d) and m.track_running_stats]
        self._bn_names = [n for n, _ in named_bns]
        self._bns = [m for _, m in named_bns]
        self.epoch = 0  # epochs completed by the group
        self.diverged_at: list[int | None] = [None] * self.k  # 1-based epoch at which each member diverged
        self._frozen_bn: dict[int, list[tuple[torch.Tensor, torch.Tensor, int]]] = {}
        self.hparams: dict[str, Any] = {}
        self._blocks: tuple[torch.Tensor, torch.Tensor] | None = None  # the flat buffer's member runs (FlatViews.blocks)
        self._spread: dict[str, tuple[list, torch.Tensor]] = {}  # name -> (per-member values, per-element tensor)
        self.active_members = torch.ones(self.k, dtype=torch.bool, device=device)
        self.reporting: tuple[int, ...] = ()  # members reporting at the epoch being reported (for callbacks)

    def _param_slots(self) -> list[tuple[nn.Module, str]]:
        return [(self.model.get_submodule(n.rpartition(".")[0]), n.rpartition(".")[2]) for n in self._param_names]

    @property
    def active(self) -> list[bool]:
        return [d is None for d in self.diverged_at]

    def set_epoch_hparams(self, lrs: Sequence[float]) -> None:
        """lr, weight decay, momentum and the active mask for the coming epoch (once per epoch).

        A value the members share stays a float (torch's own arithmetic, no per-element reads); values
        that differ become per-element tensors over the flat buffer, made on the device from K values and
        kept while they stay the same: an epoch refreshes only a changed lr (or a new divergence's mask),
        never the member index (the CPU-built (numel,) int64 index copied every epoch cost 0.36 s at K=2
        and 1.5 s at K=8 on a CPU, inside the timed window; 202 MiB at K=8).
        """
        per_member = {"lr": list(lrs), "weight_decay": [c.weight_decay for c in self.cfgs],
                      "momentum": [c.momentum for c in self.cfgs], "active": self.active}
        self.hparams = {}
        for name, values in per_member.items():
            if name == "active" and all(values):
                self.hparams[name] = None  # no masking pass
            elif name != "active" and len(set(values)) == 1:
                self.hparams[name] = float(values[0])
            else:
                self.hparams[name] = self._per_element(name, values)
        self.active_members = torch.tensor(self.active, device=self.flat.device)

    def _per_element(self, name: str, values: list) -> torch.Tensor:
        kept = self._spread.get(name)
        if kept is not None and kept[0] == values:
            return kept[1]
        if self._blocks is None:
            self._blocks = self.layout.blocks(self.flat.device)
        dtype = torch.bool if name == "active" else self.flat.dtype
        tensor = self.layout.spread(torch.tensor(values, dtype=dtype).to(self.flat.device), self._blocks)
        self._spread[name] = (list(values), tensor)
        return tensor

    def sgd_step(self) -> None:
        h = self.hparams
        fused_sgd_(self.flat, self.grad, self.momentum_buf, h["lr"], h["weight_decay"], h["momentum"], h["active"])

    # -- divergence: freeze a member's BatchNorm statistics (its parameters are masked every step)

    def freeze(self, k: int, epoch: int) -> None:
        self.diverged_at[k] = epoch
        self._frozen_bn[k] = [(self._bn_rows(bn, "running_mean", k).clone(),
                               self._bn_rows(bn, "running_var", k).clone(), int(bn.num_batches_tracked))
                              for bn in self._bns]

    def restore_frozen(self) -> None:
        with torch.no_grad():
            for k, saved in self._frozen_bn.items():
                for bn, (mean, var, _) in zip(self._bns, saved):
                    self._bn_rows(bn, "running_mean", k).copy_(mean)
                    self._bn_rows(bn, "running_var", k).copy_(var)

    def _bn_rows(self, bn: nn.BatchNorm2d, name: str, k: int) -> torch.Tensor:
        rows = bn.num_features // self.k
        return getattr(bn, name)[k * rows : (k + 1) * rows]

    # -- member <-> TrainState dicts

    def member_state(self, k: int) -> dict[str, Any]:
        """Member k as the dict TrainState(cfg_k).state_dict() would hold after the same epochs (copies)."""
        fused_sd = self.model.state_dict()
        frozen = self._frozen_bn.get(k)
        bn_index = {n: j for j, n in enumerate(self._bn_names)}
        model: dict[str, torch.Tensor] = {}
        for name, ref in self._template.model.state_dict().items():
            prefix, _, leaf = name.rpartition(".")
            value = fused_sd[name]
            if leaf == "num_batches_tracked":
                count = frozen[bn_index[prefix]][2] if frozen else int(value)
                model[name] = torch.tensor(count, dtype=ref.dtype)
                continue
            rows = ref.shape[0] if ref.dim() else 1
            model[name] = value[k * rows : (k + 1) * rows].reshape(ref.shape).clone()
        cfg = self.cfgs[k]
        epochs_done = self.diverged_at[k] or self.epoch
        group = dict(self._template.optimizer.state_dict()["param_groups"][0])
        group.update(lr=schedule_lr(cfg, max(epochs_done - 1, 0)), momentum=cfg.momentum,
                     weight_decay=cfg.weight_decay)
        opt_state: dict[int, dict[str, torch.Tensor]] = {}
        if self.epoch > 0 and cfg.momentum != 0:  # torch keeps no buffer before the first step, nor without momentum
            opt_state = {i: {"momentum_buffer": self.layout.member_slice(self.momentum_buf, i, k).clone()}
                         for i in range(len(self._param_names))}
        state = {"config": cfg.to_dict(), "epoch": epochs_done, "model": model,
                 "optimizer": {"state": opt_state, "param_groups": [group]}, "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":  # a CPU group never opens a CUDA context (train.TrainState)
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def state_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "configs": [c.to_dict() for c in self.cfgs], "epoch": self.epoch,
                "diverged_at": list(self.diverged_at), "members": [self.member_state(k) for k in range(self.k)]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointMismatch(f"not a fused group checkpoint (expected format {FORMAT!r})")
        members = state.get("members", [])
        if len(members) != self.k:
            raise CheckpointMismatch(f"checkpoint holds {len(members)} members, this group has {self.k}")
        for k, (member, cfg) in enumerate(zip(members, self.cfgs)):
            # a field missing from a saved config is newer than the checkpoint, which ran with its default
            saved = {**_DEFAULTS, **member.get("config", {})}
            diff = [f for f in CHECKPOINT_FIELDS if saved.get(f) != getattr(cfg, f)]
            if diff:
                raise CheckpointMismatch(f"member {k}: checkpoint is from another configuration (" + ", ".join(
                    f"{f}: saved {saved.get(f)!r} vs {getattr(cfg, f)!r}" for f in diff) + ")")
        try:
            self.epoch = int(state["epoch"])
            self.diverged_at = [None if d is None else int(d) for d in state["diverged_at"]]
            self._load_members(members)
            if self.device.type == "cuda":  # as TrainState: the visible GPUs' states, a misfit is a mismatch
                restore_cuda_rng(members[0].get("cuda_rng", []))
            self._frozen_bn = {}
            for k, d in enumerate(self.diverged_at):
                if d is not None:  # its BatchNorm statistics and step count as they were when it diverged
                    self.freeze(k, d)
                    counts = [int(members[k]["model"][f"{n}.num_batches_tracked"]) for n in self._bn_names]
                    self._frozen_bn[k] = [(m, v, c) for (m, v, _), c in zip(self._frozen_bn[k], counts)]
        except (KeyError, IndexError, RuntimeError, TypeError, ValueError) as e:
            raise CheckpointMismatch(f"checkpoint does not fit this group ({type(e).__name__}: {e})") from None

    @torch.no_grad()
    def _load_members(self, members: Sequence[dict[str, Any]]) -> None:
        target = self.model.state_dict()  # views of the live tensors
        names = list(self._template.model.state_dict())
        counting = next((k for k in range(self.k) if self.diverged_at[k] is None), 0)  # shared BN step counts
        for k, member in enumerate(members):
            model = member["model"]
            if set(model) != set(names):
                raise KeyError(f"member {k}: model keys differ from {self.cfgs[k].model}'s")
            for name in names:
                value = model[name]
                if name.endswith("num_batches_tracked"):
                    if k == counting:
                        target[name].copy_(value)
                    continue
                rows = value.shape[0] if value.dim() else 1
                target[name][k * rows : (k + 1) * rows].copy_(value.reshape(target[name][:rows].shape))
            opt = member["optimizer"]["state"]
            for i in range(len(self._param_names)):
                buf = opt.get(i, opt.get(str(i), {})).get("momentum_buffer")
                dst = self.layout.member_slice(self.momentum_buf, i, k)
                dst.copy_(buf) if buf is not None else dst.zero_()


# ---------------------------------------------------------------------------------------------
# The loop


FusedCallback = Callable[[int, dict[str, Any], FusedState], None]


def resolve_group(cfgs: Sequence[TrainConfig], device: torch.device) -> list[TrainConfig]:
    """Each config as it will run on `device`; ConfigError when they cannot train as one group."""
    if not cfgs:
        raise ConfigError("train_fused needs at least one configuration")
    refused = [f"member {i}: {name}={getattr(c, name)!r}" for i, c in enumerate(cfgs) for name in unsupported_fields(c)]
    if refused:
        raise ConfigError("the fused loop does not implement " + "; ".join(refused) + " (train these with train())")
    resolved = [resolve_runtime(c.replace(device=device.type)) for c in cfgs]
    reasons = compatible(resolved)
    if reasons:
        raise ConfigError("these configurations cannot train as one fused group: " + "; ".join(reasons))
    return resolved


def train_fused(cfgs: Sequence[TrainConfig], data: CifarData | DeviceData, on_epoch: FusedCallback | None = None,
                resume_from: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Train `cfgs` as one fused model; each member's last reported metrics, in order.

    on_epoch(i, metrics, state) runs for every member reporting at an epoch, in member order;
    `state.reporting` lists them, so a caller that checkpoints once per epoch does it when i is
    `state.reporting[-1]` (`state.state_dict()` is the group checkpoint to pass back as resume_from).
    """
    try:
        return _train_fused(cfgs, data, on_epoch, resume_from)
    except (RuntimeError, MemoryError) as e:
        if not is_oom(e):
            raise
        cfg = cfgs[0]
        raise OutOfMemory(f"out of {cfg.device} memory training {len(cfgs)} fused {cfg.model} at batch_size="
                          f"{cfg.batch_size}: fuse fewer members per group, or lower the batch size "
                          f"[{str(e).splitlines()[0][:200]}]") from None


def _train_fused(cfgs: Sequence[TrainConfig], data: CifarData | DeviceData, on_epoch: FusedCallback | None,
                 resume_from: dict[str, Any] | None) -> list[dict[str, Any]]:
    device = data.device if isinstance(data, DeviceData) else pick_device(cfgs[0].device if cfgs else "auto")
    cfgs = resolve_group(cfgs, device)  # refuses before any data moves
    require_dataset(data.dataset, cfgs[0].dataset)  # (the group shares one: GROUP_FIELDS)
    if isinstance(data, CifarData):
        data = DeviceData(data, cfgs[0].val_fraction, cfgs[0].split_seed, device)
    group_cfg = cfgs[0]
    state = FusedState(cfgs, data.device)
    if resume_from is not None:
        state.load_state_dict(resume_from)
    set_determinism(group_cfg.deterministic)
    if data.device.type == "cuda":
        set_fp32_matmul(group_cfg.precision)
    autocast = torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=group_cfg.precision == "bf16")
    step_model = (torch.compile(state.model) if (group_cfg.compile and data.device.type == "cuda")
                  else state.model)

    last: list[dict[str, Any]] = [{} for _ in cfgs]
    while state.epoch < group_cfg.epochs and any(state.active):
        epoch = state.epoch
        t0 = time.perf_counter()
        lrs = [schedule_lr(c, epoch) for c in cfgs]  # per-epoch schedules only (PER_STEP ones are refused)
        state.set_epoch_hparams(lrs)
        train_loss, train_acc = fused_train_epoch(step_model, state, data, epoch, autocast)
        train_s = time.perf_counter() - t0
        val_loss, val_acc = evaluate_fused(step_model, state.k, data, "val", group_cfg, autocast)
        state.epoch = epoch + 1
        reporting = [k for k in range(state.k) if state.active[k]]
        diverged = {k for k in reporting if not math.isfinite(train_loss[k])}
        state.restore_frozen()  # members frozen before this epoch: BatchNorm statistics as they were
        for k in diverged:
            state.freeze(k, epoch + 1)
        test = None
        if state.epoch == group_cfg.epochs or diverged:
            test = evaluate_fused(step_model, state.k, data, "test", group_cfg, autocast)
        state.reporting = tuple(reporting)
        for k in reporting:
            cfg = cfgs[k]
            metrics = {"epoch": epoch + 1, "lr": lrs[k], "weight_decay": cfg.weight_decay, "momentum": cfg.momentum,
                       "mixup_alpha": cfg.mixup_alpha, "train_loss": train_loss[k], "train_acc": train_acc[k],
                       "val_loss": val_loss[k], "val_acc": val_acc[k], "diverged": k in diverged}
            if test is not None and (state.epoch == group_cfg.epochs or k in diverged):
                metrics["test_loss"], metrics["test_acc"] = test[0][k], test[1][k]
            metrics["images_per_s"] = data.num_train / train_s  # this member's; the group trained K times as many
            metrics["epoch_s"] = time.perf_counter() - t0
            last[k] = metrics
            if on_epoch is not None:
                on_epoch(k, metrics, state)
    return last


@dataclass
class GroupPlan:
    """Every member's draws for one epoch, stacked (K, ...) and moved to the device once."""

    order: torch.Tensor  # (K, N) int64
    dy: torch.Tensor  # (K, N)
    dx: torch.Tensor  # (K, N)
    flip: torch.Tensor  # (K, N) bool
    lam: torch.Tensor | None  # (K, steps) float32; 1 for members without mixup; None when no member mixes
    perm: torch.Tensor | None  # (K, N) int64: per-batch permutations; the identity for members without mixup

    @classmethod
    def draw(cls, cfgs: Sequence[TrainConfig], num_train: int, batch_size: int, epoch: int,
             device: torch.device) -> "GroupPlan":
        plans = [EpochPlan.draw(num_train, c.seed, epoch) for c in cfgs]
        stacked = [torch.stack([getattr(p, f) for p in plans]).to(device) for f in ("order", "dy", "dx", "flip")]
        lam = perm = None
        if any(c.mixup_alpha > 0 for c in cfgs):
            starts = range(0, num_train, batch_size)
            identity = torch.cat([torch.arange(min(batch_size, num_train - s)) for s in starts])
            lams, perms = [], []
            for c in cfgs:
                if c.mixup_alpha > 0:
                    mix = MixupPlan.draw(c.mixup_alpha, num_train, batch_size, c.seed, epoch)
                    lams.append(mix.lam)
                    perms.append(mix.perm)
                else:
                    lams.append(torch.ones(len(starts)))
                    perms.append(identity)
            lam, perm = torch.stack(lams).to(device), torch.stack(perms).to(device)
        return cls(*stacked, lam, perm)


def fused_batches(data: DeviceData, plan: GroupPlan, batch_size: int):
    """Yield (x (b, K*3, 32, 32) member-major channels, y (K, b), y_mix (K, b), lam (K,) or None).

    Member k's images are exactly those DeviceData.train_batches and train()'s mixup give it.
    """
    k = plan.order.shape[0]
    members = torch.arange(k, device=data.device)[:, None]
    for step, start in enumerate(range(0, data.num_train, batch_size)):
        sl = slice(start, start + batch_size)
        idx = plan.order[:, sl]  # (K, b)
        b = idx.shape[1]
        x = crop_flip(data.train_x[idx.reshape(-1)], plan.dy[:, sl].reshape(-1), plan.dx[:, sl].reshape(-1),
                      plan.flip[:, sl].reshape(-1))
        x = normalise(x, data.mean, data.std).view(k, b, *x.shape[1:])  # (K, b, 3, 32, 32)
        y = data.train_y[idx]
        lam = None
        y_mix = y
        if plan.lam is not None:
            lam, perm = plan.lam[:, step], plan.perm[:, sl]
            lam5 = lam.view(k, 1, 1, 1, 1)
            x = lam5 * x + (1 - lam5) * x[members, perm]  # train.mixup per member
            y_mix = y.gather(1, perm)
        yield x.transpose(0, 1).reshape(b, -1, *x.shape[3:]), y, y_mix, lam


def member_losses(logits: torch.Tensor, y: torch.Tensor, y_mix: torch.Tensor,
                  lam: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-member mean (mixed) cross-entropy (K,) and (lambda-weighted) hits (K,) from logits (b, K*C)."""
    k, b = y.shape
    lg = logits.view(b, k, -1).transpose(0, 1)  # (K, b, C)
    ce = F.cross_entropy(lg.reshape(k * b, -1), y.reshape(-1), reduction="none").view(k, b).mean(1)
    pred = lg.argmax(2)
    hits = (pred == y).sum(1)
    if lam is None:
        return ce, hits
    ce_mix = F.cross_entropy(lg.reshape(k * b, -1), y_mix.reshape(-1), reduction="none").view(k, b).mean(1)
    return lam * ce + (1 - lam) * ce_mix, lam * hits + (1 - lam) * (pred == y_mix).sum(1)


def fused_step(model: nn.Module, state: FusedState, x: torch.Tensor, y: torch.Tensor, y_mix: torch.Tensor,
               lam: torch.Tensor | None, autocast: torch.autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step of every member: forward, backward, fused update. No host sync."""
    with autocast:
        logits = model(x).float()
        loss, hits = member_losses(logits, y, y_mix, lam)
    state.grad.zero_()
    # Diverged members get no gradient (where, not a product: their loss is NaN, and NaN * 0 is NaN).
    torch.where(state.active_members, loss, torch.zeros_like(loss)).sum().backward()
    state.sgd_step()
    return loss.detach(), hits


def fused_train_epoch(model: nn.Module, state: FusedState, data: DeviceData, epoch: int,
                      autocast: torch.autocast) -> tuple[list[float], list[float]]:
    """One pass for every member; per-member loss and accuracy accumulate on the device (one sync)."""
    model.train()
    cfg = state.cfgs[0]
    plan = GroupPlan.draw(state.cfgs, data.num_train, cfg.batch_size, epoch, data.device)
    loss_sum = torch.zeros(state.k, device=data.device, dtype=torch.float64)
    hits_sum = torch.zeros(state.k, device=data.device, dtype=torch.float64)
    for x, y, y_mix, lam in fused_batches(data, plan, cfg.batch_size):
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss, hits = fused_step(model, state, x, y, y_mix, lam, autocast)
        loss_sum += loss.double() * y.shape[1]
        hits_sum += hits.double()
    return (loss_sum / data.num_train).tolist(), (hits_sum / data.num_train).tolist()


def evaluate_fused(model: nn.Module, k: int, data: DeviceData, split: str, cfg: TrainConfig,
                   autocast: torch.autocast) -> tuple[list[float], list[float]]:
    """Every member's true mean cross-entropy and accuracy over a split (each sees the same images)."""
    model.eval()
    loss_sum = torch.zeros(k, device=data.device, dtype=torch.float64)
    hits = torch.zeros(k, device=data.device, dtype=torch.int64)
    count = 0
    with torch.no_grad(), autocast:
        for x, y in data.eval_batches(split, cfg.eval_batch_size):
            x = x.repeat(1, k, 1, 1)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            b = len(y)
            lg = model(x).float().view(b, k, -1).transpose(0, 1)  # (K, b, C)
            yk = y.expand(k, b)
            losses = F.cross_entropy(lg.reshape(k * b, -1), yk.reshape(-1), reduction="none").view(k, b)
            loss_sum += losses.double().sum(1)
            hits += (lg.argmax(2) == yk).sum(1)
            count += b
    return (loss_sum / count).tolist(), (hits.double() / count).tolist()

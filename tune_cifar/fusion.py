"""K same-shape networks as one, and one SGD step for all of them: the mechanics under tune_cifar.fused.

    fused = fuse_models([model_a, model_b])       # input (N, 2*3, 32, 32) -> output (N, 2*classes)
    flat = FlatViews(params, members=2)            # every parameter a view into one buffer
    fused_sgd_(flat_param, flat_grad, flat_buf, lr, weight_decay, momentum)

Member k owns rows [k*d0, (k+1)*d0) of every parameter and buffer, and channels [k*C, (k+1)*C) of
every activation. tune_cifar.fused explains the method and what was measured; this module holds the
layer rewrite and the flat-buffer optimiser, which know nothing of configurations or data.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tune_cifar.config import ConfigError


# ---------------------------------------------------------------------------------------------
# The fused network: member k owns rows [k*d0, (k+1)*d0) of every parameter and buffer


class FusedConv2d(nn.Module):
    """K convolutions as one with K times the groups; input and output (N, K*C, H, W)."""

    def __init__(self, convs: Sequence[nn.Conv2d]):
        super().__init__()
        c = convs[0]
        self.stride, self.padding, self.dilation, self.groups = c.stride, c.padding, c.dilation, c.groups * len(convs)
        self.weight = nn.Parameter(torch.cat([m.weight.detach() for m in convs]))  # (K*Cout, Cin/g, kh, kw)
        self.bias = nn.Parameter(torch.cat([m.bias.detach() for m in convs])) if c.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class FusedLinear(nn.Module):
    """K linear layers; input (..., K*in) member-major, output (..., K*out)."""

    def __init__(self, linears: Sequence[nn.Linear]):
        super().__init__()
        self.k, self.in_features, self.out_features = len(linears), linears[0].in_features, linears[0].out_features
        self.weight = nn.Parameter(torch.cat([m.weight.detach() for m in linears]))  # (K*out, in)
        self.bias = nn.Parameter(torch.cat([m.bias.detach() for m in linears])) if linears[0].bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.k == 1:  # the plain layer: a lone member runs the same kernel as train()
            return F.linear(x, self.weight, self.bias)
        lead = x.shape[:-1]
        xk = x.reshape(-1, self.k, self.in_features).transpose(0, 1)  # (K, M, in)
        w = self.weight.view(self.k, self.out_features, self.in_features).transpose(1, 2)  # (K, in, out)
        if self.bias is None:
            out = torch.bmm(xk, w)
        else:
            out = torch.baddbmm(self.bias.view(self.k, 1, self.out_features), xk, w)  # (K, M, out)
        return out.transpose(0, 1).reshape(*lead, self.k * self.out_features)


def _fused_batchnorm(bns: Sequence[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    b = bns[0]
    fused = nn.BatchNorm2d(b.num_features * len(bns), b.eps, b.momentum, b.affine, b.track_running_stats)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(b, name, None) is not None:
                getattr(fused, name).copy_(torch.cat([getattr(m, name) for m in bns]))
        if b.track_running_stats:
            fused.num_batches_tracked.copy_(b.num_batches_tracked)
    return fused


def _fuse_dropout(ms: Sequence[nn.Dropout]) -> nn.Module:
    if ms[0].p > 0:
        raise ConfigError(f"cannot fuse Dropout(p={ms[0].p}): its masks would not be those of independent runs")
    return nn.Identity()


# Layers with weights, and how K of them become one.
FUSERS: dict[type, Callable[[Sequence[Any]], nn.Module]] = {
    nn.Conv2d: FusedConv2d,
    nn.BatchNorm2d: _fused_batchnorm,
    nn.Linear: FusedLinear,
    nn.Dropout: _fuse_dropout,
}
# Layers without state that act on each channel alone, so they run unchanged on (N, K*C, H, W).
CHANNELWISE = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Identity, nn.AvgPool2d, nn.MaxPool2d,
               nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def fuse_models(models: Sequence[nn.Module], name: str = "model") -> nn.Module:
    """One module computing all `models` (same architecture) side by side, member-major along channels.

    Raises ConfigError naming the first module type it cannot fuse, or the model when the probe shows
    that its forward mixes members' channels.
    """
    fused = copy.deepcopy(models[0])
    for path, module in list(models[0].named_modules()):
        kind = type(module)
        if kind in FUSERS:
            if kind is nn.Conv2d and module.padding_mode != "zeros":
                raise ConfigError(f"cannot fuse {name}: {path} is Conv2d with padding_mode={module.padding_mode!r}")
            _set_submodule(fused, path, FUSERS[kind]([m.get_submodule(path) for m in models]))
        elif isinstance(module, CHANNELWISE) or kind in (nn.Sequential, nn.ModuleList):
            continue
        elif isinstance(module, nn.Flatten):
            if module.start_dim != 1:
                raise ConfigError(f"cannot fuse {name}: {path} is Flatten(start_dim={module.start_dim})")
        elif any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
            raise ConfigError(f"cannot fuse {name}: {path or 'the model'} is a {kind.__name__}, a layer with weights "
                              f"the fused loop has no rule for (it fuses {', '.join(t.__name__ for t in FUSERS)})")
        elif not any(True for _ in module.children()):
            raise ConfigError(f"cannot fuse {name}: {path} is a {kind.__name__}, which is not known to act on each "
                              f"channel alone")
        # else: a container with its own forward (MobileNet, BasicBlock); the probe checks it
    _probe(models, fused, name)
    return fused


def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


@torch.no_grad()
def _probe(models: Sequence[nn.Module], fused: nn.Module, name: str) -> None:
    """The fused forward must equal each member's forward (eval mode, 2 random images per member)."""
    was = [m.training for m in models], fused.training
    for m in (*models, fused):
        m.eval()
    try:
        gen = torch.Generator().manual_seed(0)
        xs = [torch.randn(2, 3, 32, 32, generator=gen) for _ in models]
        ref = torch.stack([m(x) for m, x in zip(models, xs)], 1)  # (2, K, classes)
        out = fused(torch.cat(xs, 1)).view(ref.shape)
    finally:
        for m, t in zip(models, was[0]):
            m.train(t)
        fused.train(was[1])
    if not torch.allclose(out, ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max())):
        raise ConfigError(f"cannot fuse {name}: its forward mixes the members' channels (a concat or reshape "
                          f"along channels?); the fused output differs from the members' own")


# ---------------------------------------------------------------------------------------------
# Flat storage: every parameter (and its grad, momentum) a view into one buffer, so that the
# optimiser is a handful of elementwise kernels over all members and layers at once


class FlatViews:
    """Tensors re-homed as views into one 1-D buffer, each keeping its shape and strides (NHWC too).

    Each tensor's dim 0 must be outermost in memory (true for contiguous and channels_last), so its
    segment holds member 0's elements first, then member 1's, ...
    """

    def __init__(self, tensors: Sequence[torch.Tensor], members: int):
        for t in tensors:
            dense = t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))
            if not dense or t.shape[0] % members or t.stride(0) * t.shape[0] != t.numel():
                raise ValueError(f"tensor of shape {tuple(t.shape)}, strides {t.stride()} cannot be stored member-major")
        self.members = members
        self.specs = [(tuple(t.shape), t.stride()) for t in tensors]
        self.offsets = [0]
        for t in tensors:
            self.offsets.append(self.offsets[-1] + t.numel())
        self.numel = self.offsets[-1]

    def alloc(self, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.numel, dtype=like.dtype, device=like.device)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [torch.as_strided(flat, shape, stride, off) for (shape, stride), off in zip(self.specs, self.offsets)]

    def member_index(self, device: torch.device) -> torch.Tensor:
        """(numel,) int64: which member owns each element."""
        sizes = torch.tensor([(b - a) // self.members for a, b in zip(self.offsets, self.offsets[1:])])
        owners = torch.arange(self.members).repeat(len(sizes))  # member of each (tensor, member) block
        return owners.repeat_interleave(sizes.repeat_interleave(self.members)).to(device)

    def blocks(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(owner, length), each (tensors * members,) int64 in memory order: the buffer is runs of one
        member's elements, run j owned by member owner[j] for length[j] elements."""
        sizes = torch.tensor([(b - a) // self.members for a, b in zip(self.offsets, self.offsets[1:])])
        owner = torch.arange(self.members).repeat(len(sizes))
        return owner.to(device), sizes.repeat_interleave(self.members).to(device)

    def spread(self, values: torch.Tensor, blocks: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """(numel,) one value per member (values (members,), on the blocks' device) over each member's elements;
        made on the device from K values (no (numel,) index, no host copy of numel elements)."""
        owner, length = blocks
        return values[owner].repeat_interleave(length, output_size=self.numel)

    def member_slice(self, flat: torch.Tensor, i: int, k: int) -> torch.Tensor:
        """Tensor i's rows of member k, in the member's own shape (a view)."""
        shape, _ = self.specs[i]
        rows = shape[0] // self.members
        return self.views(flat)[i][k * rows : (k + 1) * rows]


@torch.no_grad()
def fused_sgd_(param: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor, lr: float | torch.Tensor,
               weight_decay: float | torch.Tensor, momentum: float | torch.Tensor,
               active: torch.Tensor | None = None) -> None:
    """torch.optim.SGD(momentum, dampening=0, nesterov=False, coupled weight_decay), in place, per element.

    Each hyperparameter is a float shared by every member (then the arithmetic is torch's own, op for
    op) or a tensor broadcastable to `param` (per member or per element). `active`: None, or a bool
    tensor likewise; where False, param and buf keep their values (torch.where: a frozen member's
    NaN never reaches the others, as a product with 0 would). `grad` is overwritten. A zero `buf`
    makes the first step's buffer the gradient, as torch's clone on its first step does
    (momentum * 0 + d = d).
    """
    if active is None:  # the common case: 3-4 in-place passes, as torch's single-tensor SGD
        if isinstance(weight_decay, torch.Tensor):
            grad.addcmul_(weight_decay, param)
        elif weight_decay != 0:
            grad.add_(param, alpha=weight_decay)
        buf.mul_(momentum).add_(grad)
        if isinstance(lr, torch.Tensor):
            param.addcmul_(lr, buf, value=-1)
        else:
            param.add_(buf, alpha=-lr)
        return
    d = torch.addcmul(grad, weight_decay, param) if isinstance(weight_decay, torch.Tensor) else (
        grad.add(param, alpha=weight_decay) if weight_decay != 0 else grad)
    new_buf = buf.mul(momentum).add_(d)
    new_param = torch.addcmul(param, lr, new_buf, value=-1) if isinstance(lr, torch.Tensor) else (
        param.add(new_buf, alpha=-lr))
    buf.copy_(torch.where(active, new_buf, buf))
    param.copy_(torch.where(active, new_param, param))

import argparse
import dataclasses
import io
import math

import pytest
import torch
from torch import nn

from tune_cifar import models
from tune_cifar.config import ConfigError, TrainConfig
from tune_cifar.data import read_cifar100, write_synthetic
from tune_cifar.fused import FusedState, compatible, group_configs, resolve_group, train_fused, unsupported_fields
from tune_cifar.fusion import fuse_models, fused_sgd_
from tune_cifar.bench.fused import bench_fused, bench_methods, format_fused
from tune_cifar.train import CheckpointMismatch, TrainState, resolve_runtime, train

KEYS = ("epoch", "lr", "weight_decay", "momentum", "mixup_alpha", "train_loss", "train_acc", "val_loss", "val_acc",
        "diverged", "test_loss", "test_acc")

# One SGD step per epoch (batch = the 64 training images). Members agree with independent runs to
# rounding, not bit for bit (a grouped convolution may sum in another order than a dense one), and
# this network at initialisation amplifies rounding: its fp32 gradients differ from fp64 ones by
# 1e-3..2e-2 (L2), so any change of summation order moves the second step's parameters. Measured:
# train() against itself, NHWC vs NCHW, after these two steps: parameters apart by 40-60% of the
# distance they travelled, epoch-2 train loss by 2e-3..5e-3, val loss by 4e-5. In NHWC (the default)
# oneDNN's grouped and dense kernels sum alike here and fused members match train() to ~3e-6 in
# every metric, 2% of the distance travelled in parameters, 1e-5 in BatchNorm statistics; in NCHW the
# fused run is as far from train() as train() is from itself in the other layout.
BASE = TrainConfig(epochs=2, batch_size=64, device="cpu", val_fraction=0.2, eval_batch_size=64)
MEMBERS = [BASE.replace(lr=0.05, schedule="cosine", seed=1),
           BASE.replace(lr=0.02, weight_decay=5e-4, mixup_alpha=0.2, seed=2),
           BASE.replace(lr=0.1, schedule="cosine", momentum=0.8, weight_decay=1e-4, mixup_alpha=0.4, seed=3)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    write_synthetic(out, num_train=80, num_test=40, seed=0)  # 64 train, 16 val, 40 test
    return read_cifar100(out)


def copy_state(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def run_fused(cfgs, data, resume_from=None):
    """(per-member metric rows, group checkpoints by epoch, final member states)."""
    rows, groups = [[] for _ in cfgs], {}
    finals = {}

    def on_epoch(i, metrics, state):
        rows[i].append(metrics)
        if i == state.reporting[-1]:
            groups[metrics["epoch"]] = copy_state(state.state_dict())
        finals["state"] = state

    last = train_fused(cfgs, data, on_epoch, resume_from)
    assert last == [r[-1] if r else {} for r in rows]
    return rows, groups, [finals["state"].member_state(i) for i in range(len(cfgs))]


def run_plain(cfg, data):
    rows, final = [], {}
    train(cfg, data, lambda m, s: (rows.append(m), final.update(model=copy_state(s.model.state_dict()))))
    return rows, final["model"]


def assert_metrics_close(fused_rows, plain_rows, rel=1e-4):
    assert [r["epoch"] for r in fused_rows] == [r["epoch"] for r in plain_rows]
    for f, p in zip(fused_rows, plain_rows):
        assert set(f) == set(p)
        for key in KEYS:
            if key in p:
                assert f[key] == pytest.approx(p[key], rel=rel, abs=1e-12), (p["epoch"], key)


@pytest.fixture(scope="module", params=[True, False], ids=["channels_last", "nchw"])
def layout_runs(request, data):
    members = MEMBERS if request.param else MEMBERS[1:]  # NCHW: two members keep the test short
    cfgs = [c.replace(channels_last=request.param) for c in members]
    return cfgs, run_fused(cfgs, data), [run_plain(c, data) for c in cfgs]


def distance(a, b, keys):
    return torch.cat([(a[n].double() - b[n].double()).flatten() for n in keys]).norm().item()


def test_members_equal_independent_runs(layout_runs):
    cfgs, (rows, _, states), plain = layout_runs
    nhwc = cfgs[0].channels_last
    for i, (plain_rows, plain_model) in enumerate(plain):
        if nhwc:
            assert_metrics_close(rows[i], plain_rows)
        else:  # as exact as train() is to itself across layouts (see above)
            assert_metrics_close(rows[i][:1], plain_rows[:1])
            for key, rel in (("val_loss", 1e-4), ("test_loss", 1e-4), ("train_loss", 2e-2)):
                assert rows[i][1][key] == pytest.approx(plain_rows[1][key], rel=rel), key
        assert rows[i][-1]["lr"] == pytest.approx(0.5 * cfgs[i].lr if cfgs[i].schedule == "cosine" else cfgs[i].lr)
        fused_model = states[i]["model"]
        assert fused_model.keys() == plain_model.keys()
        init = TrainState(cfgs[i], torch.device("cpu")).model.state_dict()
        params = [n for n, _ in TrainState(cfgs[i], torch.device("cpu")).model.named_parameters()]
        stats = [n for n in init if "running" in n]
        travelled = distance(plain_model, init, params)
        assert distance(fused_model, plain_model, params) < (0.1 if nhwc else 1.0) * travelled
        assert distance(fused_model, plain_model, stats) < (1e-4 if nhwc else 2e-2) * distance(plain_model, init, stats)
        assert all(torch.equal(fused_model[n], plain_model[n]) for n in init if n.endswith("num_batches_tracked"))


def test_member_state_continues_unfused(layout_runs, data):
    cfgs, (rows, groups, _), _ = layout_runs
    member = groups[1]["members"][1]  # the mixup member after epoch 1, as a TrainState dict
    TrainState(resolve_runtime(cfgs[1]), torch.device("cpu")).load_state_dict(member)  # accepted as is
    continued = []
    train(cfgs[1], data, lambda m, s: continued.append(m), resume_from=member)
    assert_metrics_close(continued, rows[1][1:])


def test_a_diverging_member_is_frozen_and_leaves_the_others_untouched(data):
    cfgs = [c.replace(batch_size=16) for c in MEMBERS]  # 4 steps per epoch: lr 1e12 blows up within epoch 1
    blowup = cfgs[1].replace(lr=1e12)
    plain_rows, _ = run_plain(blowup, data)
    assert [r["epoch"] for r in plain_rows] == [1] and plain_rows[0]["diverged"]
    ref_rows, _, ref_states = run_fused(cfgs, data)
    rows, groups, states = run_fused([cfgs[0], blowup, cfgs[2]], data)
    # Same K, same kernels: the healthy members compute exactly what they compute beside a healthy member.
    for i in (0, 2):
        assert rows[i] == [{**r, "images_per_s": f["images_per_s"], "epoch_s": f["epoch_s"]}
                           for r, f in zip(ref_rows[i], rows[i])]
        for name, value in ref_states[i]["model"].items():
            assert torch.equal(states[i]["model"][name], value), name
    assert [r["epoch"] for r in rows[1]] == [1]  # reported diverged at epoch 1, nothing after
    assert rows[1][0]["diverged"] and not math.isfinite(rows[1][0]["train_loss"])
    assert {"test_loss", "test_acc"} <= set(rows[1][0]) and not rows[0][0]["diverged"]
    assert groups[2]["diverged_at"] == [None, 1, None]
    frozen_then, frozen_now = groups[1]["members"][1], states[1]
    assert frozen_now["epoch"] == 1
    for name, value in frozen_then["model"].items():  # parameters and BN statistics as they were at epoch 1
        torch.testing.assert_close(frozen_now["model"][name], value, rtol=0, atol=0, equal_nan=True, msg=name)
    for i, s in frozen_then["optimizer"]["state"].items():
        torch.testing.assert_close(frozen_now["optimizer"]["state"][i]["momentum_buffer"], s["momentum_buffer"],
                                   rtol=0, atol=0, equal_nan=True)
    resumed, _, resumed_states = run_fused([cfgs[0], blowup, cfgs[2]], data, resume_from=groups[1])
    assert [[r["epoch"] for r in member] for member in resumed] == [[2], [], [2]]  # the frozen one stays silent
    for i in (0, 2):
        assert {k: resumed[i][0].get(k) for k in KEYS} == {k: rows[i][1].get(k) for k in KEYS}
    for name, value in frozen_then["model"].items():
        torch.testing.assert_close(resumed_states[1]["model"][name], value, rtol=0, atol=0, equal_nan=True, msg=name)


def test_group_stops_when_every_member_has_diverged(data):
    cfgs = [MEMBERS[0].replace(lr=1e12, epochs=3, batch_size=16), MEMBERS[2].replace(lr=1e12, epochs=3, batch_size=16)]
    rows, groups, _ = run_fused(cfgs, data)
    assert [[r["epoch"] for r in member] for member in rows] == [[1], [1]]
    assert list(groups) == [1] and groups[1]["diverged_at"] == [1, 1]


def test_group_resume_reproduces_the_uninterrupted_run(data):
    cfgs = [c.replace(batch_size=24) for c in MEMBERS[1:]]  # 3 steps per epoch, mixup in both
    full, groups, final = run_fused(cfgs, data)
    resumed, _, final_resumed = run_fused(cfgs, data, resume_from=groups[1])
    for a, b in zip(full, resumed):
        assert [r["epoch"] for r in b] == [2]
        for x, y in zip(a[1:], b):
            assert {k: x.get(k) for k in KEYS} == {k: y.get(k) for k in KEYS}
    for a, b in zip(final, final_resumed):
        for name, value in a["model"].items():
            assert torch.equal(b["model"][name], value), name
        for i, s in a["optimizer"]["state"].items():
            assert torch.equal(b["optimizer"]["state"][i]["momentum_buffer"], s["momentum_buffer"])
    with pytest.raises(CheckpointMismatch, match="member 0: .*seed: saved 2 vs 7"):
        train_fused([cfgs[0].replace(seed=7), cfgs[1]], data, resume_from=groups[1])


def test_fused_sgd_equals_torch_sgd():
    gen = torch.Generator().manual_seed(0)
    lr, wd, mom = [0.05, 0.5, 0.01, 0.1], [0.0, 5e-4, 1e-2, 1e-4], [0.9, 0.0, 0.5, 0.99]
    k = len(lr)
    start = torch.randn(k, 6, 5, generator=gen)
    grads = [torch.randn(k, 6, 5, generator=gen) for _ in range(4)]
    grads[2][3] = float("nan")  # member 3 is frozen from step 2 on: its NaN must stay out of everything
    param, buf = start.clone(), torch.zeros_like(start)
    col = lambda v, dtype=torch.float32: torch.tensor(v, dtype=dtype).view(k, 1, 1)  # noqa: E731
    for step, g in enumerate(grads):
        active = col([True, True, True, step < 2], torch.bool)
        fused_sgd_(param, g, buf, col(lr), col(wd), col(mom), active)
    for i in range(k):
        p = start[i].clone().requires_grad_()
        opt = torch.optim.SGD([p], lr=lr[i], momentum=mom[i], weight_decay=wd[i])
        for g in grads[: 4 if i < 3 else 2]:
            p.grad = g[i].clone()
            opt.step()
        torch.testing.assert_close(param[i], p.detach(), rtol=1e-6, atol=1e-7)
        if mom[i]:
            torch.testing.assert_close(buf[i], opt.state[p]["momentum_buffer"], rtol=1e-6, atol=1e-7)


def test_configs_that_differ_in_shape_never_share_a_group():
    cfgs = [BASE, BASE.replace(lr=0.1, seed=3), BASE.replace(batch_size=128), BASE.replace(channels_last=False)]
    assert compatible(cfgs[:2]) == []
    assert any(r.startswith("batch_size differs") for r in compatible(cfgs[:3]))
    assert group_configs(cfgs) == [[0, 1], [2], [3]]
    assert group_configs(cfgs[:2] * 3, max_members=4) == [[0, 1, 2, 3], [4, 5]]
    with pytest.raises(ConfigError, match="batch_size differs"):
        train_fused(cfgs[1:3], None)


def test_a_field_the_fused_loop_does_not_know_is_refused(data):
    @dataclasses.dataclass(frozen=True)
    class Later(TrainConfig):  # a field added to TrainConfig after the fused loop was written
        label_smoothing: float = 0.0

    assert unsupported_fields(Later()) == []
    later = Later(**{**BASE.to_dict(), "label_smoothing": 0.1})
    assert unsupported_fields(later) == ["label_smoothing"]
    assert "member 1: label_smoothing=0.1 is not supported" in " ".join(compatible([Later(), later]))
    with pytest.raises(ConfigError, match="label_smoothing=0.1"):
        train_fused([BASE, later], data)


class WithLayerNorm(nn.Module):
    def __init__(self, num_classes=100, **options):  # build_model passes dropout / drop_path
        super().__init__()
        self.conv, self.norm, self.fc = nn.Conv2d(3, 4, 3), nn.LayerNorm(30), nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.norm(self.conv(x)).mean((2, 3)))


class ChannelMixing(nn.Module):
    def __init__(self, num_classes=100):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).flip(1).mean((2, 3)))  # reverses the channels: across members once fused


def test_unfusable_models_are_refused_by_name(monkeypatch, data):
    with pytest.raises(ConfigError, match="norm is a LayerNorm"):
        fuse_models([WithLayerNorm(), WithLayerNorm()], "toy")
    with pytest.raises(ConfigError, match="cannot fuse toy: its forward mixes"):
        fuse_models([ChannelMixing(), ChannelMixing()], "toy")
    with pytest.raises(ConfigError, match="Dropout"):
        fuse_models([nn.Sequential(nn.Dropout(0.2))] * 2)
    monkeypatch.setitem(models.MODELS, "resnet18", WithLayerNorm)
    with pytest.raises(ConfigError, match="cannot fuse resnet18: norm is a LayerNorm"):
        train_fused([BASE.replace(model="resnet18")] * 2, data)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_registered_model_fuses_and_splits_back(name):
    cfgs = [TrainConfig(model=name, seed=s, device="cpu") for s in (4, 5)]
    state = FusedState(cfgs, torch.device("cpu"))  # the probe inside compares fused and member forwards
    for i, cfg in enumerate(cfgs):
        own = TrainState(cfg, torch.device("cpu")).model.state_dict()
        split = state.member_state(i)["model"]
        assert all(torch.equal(split[n], v) for n, v in own.items())


def test_bench_fused_tiny_run_has_every_figure():
    args = argparse.Namespace(k=[1, 2], model="mobilenet", batch_size=8, steps=1, repeats=1, skip_pack=False,
                              methods=False)
    result = bench_fused(args, torch.device("cpu"))
    assert [r["k"] for r in result["rows"]] == [1, 2]
    for row in result["rows"]:
        for kind in ("fused", "sequential", "packed"):
            assert row[f"{kind}_images_per_s"] > 0 and row[f"{kind}_peak_memory_mib"] > 0
        assert row["graph_images_per_s"] is None  # cpu: no CUDA graph
        assert row["fused_vs_packed"] == pytest.approx(row["fused_images_per_s"] / row["packed_images_per_s"])
    assert result["fused_speedup"] > 0 and result["fused_k1_vs_plain"] > 0
    assert result["methods"] is None and result["machine"]["device"] == "cpu"
    table = format_fused(result)
    assert "fused_speedup" in table and len(table.splitlines()) == 6  # heading, legend, columns, K=1, K=2, summary


def test_fusion_method_steps_run_and_are_timed():
    args = argparse.Namespace(k=[1], model="mobilenet", batch_size=4, steps=1, repeats=1)
    rows = bench_methods(args, torch.device("cpu"))["rows"]
    assert rows[0]["k"] == 1 and all(rows[0][f"{m}_images_per_s"] > 0 for m in ("plain", "grouped", "vmap"))


def test_a_cpu_group_never_touches_cuda(data, monkeypatch):
    """On a GPU node a CPU group sees CUDA as available; its checkpoints must not open a CUDA context."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("get_rng_state", "get_rng_state_all", "set_rng_state", "set_rng_state_all"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, _name=name, **k: calls.append(_name))
    cfgs = [BASE.replace(epochs=1, seed=1), BASE.replace(epochs=1, seed=2, lr=0.02)]
    _, groups, states = run_fused(cfgs, data)
    assert calls == [] and not any("cuda_rng" in m for m in groups[1]["members"] + states)


def test_per_member_hparams_are_made_on_the_device_once_and_only_a_changed_lr_is_refreshed(monkeypatch):
    # Before issue 20 every epoch rebuilt the (numel,) member index on the CPU and copied it to the device.
    from tune_cifar.fusion import FlatViews

    cfgs = [BASE.replace(seed=i, lr=0.05 * (i + 1), weight_decay=(0.0, 5e-4, 1e-4)[i]) for i in range(3)]
    state = FusedState(resolve_group(cfgs, torch.device("cpu")), torch.device("cpu"))
    owner = state.layout.member_index(torch.device("cpu"))  # the reference: which member owns each element
    built = []
    real_blocks = FlatViews.blocks
    monkeypatch.setattr(FlatViews, "blocks", lambda self, device: built.append(device) or real_blocks(self, device))
    monkeypatch.setattr(FlatViews, "member_index", lambda *a: pytest.fail("member index rebuilt in an epoch"))
    seen = []
    for epoch in range(3):
        lrs = [c.lr * (0.5 ** epoch) for c in cfgs]
        state.set_epoch_hparams(lrs)
        h = state.hparams
        assert torch.equal(h["lr"], torch.tensor(lrs)[owner]) and h["lr"].dtype == state.flat.dtype
        assert torch.equal(h["weight_decay"], torch.tensor([c.weight_decay for c in cfgs])[owner])
        assert h["momentum"] == 0.9 and h["active"] is None  # shared: a float; all active: no mask
        seen.append((h["lr"], h["weight_decay"]))
    assert len(built) == 1  # the member runs, once
    assert seen[0][1] is seen[1][1] is seen[2][1]  # weight decay did not change: the same tensor, not rebuilt
    assert seen[0][0] is not seen[1][0]
    state.diverged_at[1] = 1
    state.set_epoch_hparams(lrs)
    assert torch.equal(state.hparams["active"], (owner != 1))

import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook

from tune_cifar.config import TrainConfig
from tune_cifar.data import read_cifar100, write_synthetic
from tune_cifar.mixing import CutmixPlan, cutmix_boxes, draw_mixing
from tune_cifar.schedules import onecycle_lr
from tune_cifar.train import CheckpointMismatch, MixupPlan, lr_at, mixup, mixup_loss_and_hits, train
from tune_cifar.train import make_optimizer

METRICS = {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "diverged", "images_per_s", "epoch_s"}


@pytest.mark.parametrize("epochs", [1, 7, 300])
def test_cosine_equals_cosine_annealing_lr(epochs):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=0)
    for epoch in range(epochs):
        assert lr_at(0.05, "cosine", epoch, epochs) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12)
        opt.step()
        sched.step()


def test_constant_schedule_is_constant():
    assert {lr_at(0.05, "constant", e, 15) for e in range(15)} == {0.05}


def test_mixup_is_the_convex_combination_and_loss():
    x = torch.randn(4, 3, 2, 2)
    perm = torch.tensor([2, 0, 3, 1])
    lam = torch.tensor(0.3)
    torch.testing.assert_close(mixup(x, lam, perm), 0.3 * x + 0.7 * x[perm])
    logits = torch.randn(4, 10)
    y, y2 = torch.tensor([1, 2, 3, 4]), torch.tensor([1, 0, 0, 4])
    loss, hits = mixup_loss_and_hits(logits, y, y2, lam)
    torch.testing.assert_close(loss, 0.3 * F.cross_entropy(logits, y) + 0.7 * F.cross_entropy(logits, y2))
    pred = logits.argmax(1)
    assert hits.item() == pytest.approx(0.3 * (pred == y).sum().item() + 0.7 * (pred == y2).sum().item())


def test_mixup_plan_draws_beta_and_per_batch_permutations():
    plan = MixupPlan.draw(0.2, num_examples=20_000, batch_size=128, seed=0, epoch=0)
    assert plan.perm.shape == (20_000,)
    assert sorted(plan.perm[-(20_000 % 128):].tolist()) == list(range(20_000 % 128))  # partial last batch
    assert sorted(plan.perm[:128].tolist()) == list(range(128))
    lam = plan.lam.double()
    assert len(lam) == math.ceil(20_000 / 128)
    assert abs(lam.mean().item() - 0.5) < 0.06 and ((lam < 0.1) | (lam > 0.9)).float().mean() > 0.4  # U-shaped


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    write_synthetic(out, num_train=200, num_test=40, seed=0)
    return read_cifar100(out)


def _run(cfg, data, resume_from=None):
    rows, states = [], {}

    def on_epoch(metrics, state):
        rows.append(metrics)
        states[metrics["epoch"]] = torch.load(_roundtrip(state.state_dict()), weights_only=True)  # a real copy

    train(cfg, data, on_epoch, resume_from)
    return rows, states


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("alpha,schedule", [(0.0, "cosine"), (0.2, "constant")])
def test_resume_after_epoch_k_reproduces_uninterrupted_run(small_data, alpha, schedule):
    cfg = TrainConfig(epochs=3, batch_size=64, mixup_alpha=alpha, schedule=schedule, weight_decay=5e-4, device="cpu")
    full, states = _run(cfg, small_data)
    assert [r["epoch"] for r in full] == [1, 2, 3]
    assert METRICS <= set(full[0]) and "test_acc" not in full[0]
    assert {"test_loss", "test_acc"} <= set(full[-1])
    resumed, _ = _run(cfg, small_data, resume_from=states[1])
    assert [r["epoch"] for r in resumed] == [2, 3]
    for a, b in zip(full[1:], resumed):
        for key in ("lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"):
            assert a.get(key) == b.get(key), key


@pytest.mark.parametrize("field,value", [("model", "resnet18"), ("batch_size", 32), ("seed", 1), ("split_seed", 1),
                                         ("val_fraction", 0.25), ("schedule", "cosine"), ("precision", "bf16")])
def test_checkpoint_of_another_network_data_stream_or_precision_is_refused(small_data, field, value):
    cfg = TrainConfig(epochs=1, batch_size=64, device="cpu")
    _, states = _run(cfg, small_data)
    saved = states[1]["config"][field]
    with pytest.raises(CheckpointMismatch, match=f"{field}: saved {saved!r} vs {value!r}"):
        train(cfg.replace(epochs=2, **{field: value}), small_data, resume_from=states[1])


def test_a_checkpoint_continues_under_new_lr_weight_decay_momentum_and_mixup(small_data):
    """What PBT's exploit needs: the donor's weights and momentum, the clone's own hyperparameters."""
    cfg = TrainConfig(epochs=2, batch_size=64, device="cpu")
    _, states = _run(cfg, small_data)
    mutated = cfg.replace(lr=0.02, weight_decay=1e-4, momentum=0.8, mixup_alpha=0.3)
    rows, after = _run(mutated, small_data, resume_from=states[1])
    assert [r["epoch"] for r in rows] == [2]
    assert (rows[0]["lr"], rows[0]["weight_decay"], rows[0]["momentum"], rows[0]["mixup_alpha"]) == (0.02, 1e-4, 0.8, 0.3)
    group = after[2]["optimizer"]["param_groups"][0]
    assert (group["lr"], group["weight_decay"], group["momentum"]) == (0.02, 1e-4, 0.8)
    # and it continued from the saved weights: the first parameter moved by one epoch of SGD from there
    name = next(iter(states[1]["model"]))
    assert not torch.equal(after[2]["model"][name], states[1]["model"][name])


def test_divergence_ends_the_run_with_a_flag(small_data):
    cfg = TrainConfig(epochs=4, batch_size=64, lr=1e12, device="cpu")
    rows, _ = _run(cfg, small_data)
    assert rows[-1]["diverged"] is True
    assert len(rows) < 4 and math.isnan(rows[-1]["train_loss"])
    assert "test_acc" in rows[-1]


@pytest.mark.slow
def test_end_to_end_training_learns_generated_data(tmp_path):
    write_synthetic(tmp_path, num_train=1600, num_test=200, seed=0)
    proc = subprocess.run(
        [sys.executable, "-m", "tune_cifar.train", "--data-dir", str(tmp_path), "--epochs", "5",
         "--no-download", "--device", "cpu"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[-1]["val_acc"] > 0.05  # chance is 0.01 over 100 classes
    assert rows[-1]["test_acc"] > 0.05
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 1
    assert "epoch 5/5" in proc.stderr


def test_cli_bad_input_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tune_cifar.train", "--data-dir", str(tmp_path), "--lr", "-1"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: invalid lr=-1.0: must be > 0"
    proc = subprocess.run([sys.executable, "-m", "tune_cifar.train", "--data-dir", str(tmp_path), "--no-download"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "no CIFAR-100 in" in proc.stderr


# ---------------------------------------------------------------------------------------------
# Issue 12: label smoothing, cutmix, Nesterov, per-step schedules


def test_label_smoothing_is_the_smoothed_cross_entropy_and_composes_with_mixup():
    torch.manual_seed(0)
    logits, y, y2, lam, eps = torch.randn(6, 10), torch.arange(6), torch.tensor([3, 3, 0, 9, 1, 2]), 0.3, 0.1
    smoothed = lambda t: (1 - eps) * F.one_hot(t, 10) + eps / 10  # the definition (Szegedy et al. 2016)
    assert F.cross_entropy(logits, y, label_smoothing=eps).item() == pytest.approx(
        -(smoothed(y) * logits.log_softmax(1)).sum(1).mean().item(), rel=1e-6)
    loss, _ = mixup_loss_and_hits(logits, y, y2, torch.tensor(lam), label_smoothing=eps)
    torch.testing.assert_close(loss, lam * F.cross_entropy(logits, y, label_smoothing=eps)
                               + (1 - lam) * F.cross_entropy(logits, y2, label_smoothing=eps))
    mixed_target = lam * smoothed(y) + (1 - lam) * smoothed(y2)  # CE is linear in the target
    assert loss.item() == pytest.approx(-(mixed_target * logits.log_softmax(1)).sum(1).mean().item(), rel=1e-6)
    plain, _ = mixup_loss_and_hits(logits, y, y2, torch.tensor(lam))
    assert abs(plain.item() - loss.item()) > 1e-3


def test_cutmix_pastes_the_box_from_the_permuted_batch():
    x = torch.arange(1.0, 5.0).view(4, 1, 1, 1).expand(4, 2, 8, 8).clone()  # image i is all i + 1
    perm = torch.tensor([1, 2, 3, 0])
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:5, 1:7] = True  # the box (y0, y1, x0, x1) = (2, 5, 1, 7): 3 x 6 = 18 of 64 pixels
    plan = CutmixPlan(mixed=(True,), box=torch.tensor([[2, 5, 1, 7]]), lam=torch.tensor([1 - 18 / 64]), perm=perm)
    out, lam, used = plan.apply(0, x, batch_size=4)
    for i in range(4):
        assert (out[i][:, inside] == perm[i] + 1).all() and (out[i][:, ~inside] == i + 1).all()
        pasted_share = (out[i] != i + 1).float().mean().item()
        assert pasted_share == pytest.approx(1 - lam.item())  # labels weighted by the pasted area
    assert torch.equal(used, perm) and torch.equal(x[:, 0, 0, 0], torch.arange(1.0, 5.0))  # input untouched


def test_cutmix_boxes_and_label_weights_by_hand():
    lam = np.array([0.75, 0.75, 1.0, 0.0, 0.5])
    cy, cx = np.array([16, 0, 10, 16, 3]), np.array([16, 31, 10, 16, 30])
    boxes, kept = cutmix_boxes(lam, cy, cx, 32, 32)
    assert boxes.tolist() == [
        [8, 24, 8, 24],  # side 32 * sqrt(0.25) = 16, centred
        [0, 8, 23, 32],  # the same box at a corner, clipped: 8 x 9 pixels pasted
        [10, 10, 10, 10],  # lambda 1: nothing pasted
        [0, 32, 0, 32],  # lambda 0: the whole image pasted
        [0, 14, 19, 32],  # side floor(32 * sqrt(0.5)) = 22, half 11, clipped on two sides: 14 x 13
    ]
    assert kept == pytest.approx([0.75, 1 - 72 / 1024, 1.0, 0.0, 1 - 182 / 1024])


def test_cutmix_plan_is_drawn_per_epoch_and_its_weights_match_its_boxes():
    plan = CutmixPlan.draw(1.0, 0.5, num_examples=20_000, batch_size=50, seed=0, epoch=3)  # 400 batches
    box = plan.box
    assert ((box >= 0) & (box <= 32)).all() and (box[:, 1] >= box[:, 0]).all() and (box[:, 3] >= box[:, 2]).all()
    area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])
    torch.testing.assert_close(plan.lam, 1 - area.float() / 1024)
    assert 0.4 < np.mean(plan.mixed) < 0.6  # cutmix_prob 0.5
    # Beta(1, 1) draws average 0.5; clipping boxes at the border (uniform centres, as Yun et al.) only
    # removes pasted area, which leaves about 0.69 of the image its own here
    assert 0.55 < plan.lam.double().mean().item() < 0.8
    assert sorted(plan.perm[:50].tolist()) == list(range(50))
    again, other = (CutmixPlan.draw(1.0, 0.5, 20_000, 50, 0, e) for e in (3, 4))
    assert torch.equal(again.box, box) and torch.equal(again.perm, plan.perm) and again.mixed == plan.mixed
    assert not torch.equal(other.box, box)


def test_mixing_draws_only_what_the_config_turns_on():
    n, bs = 1000, 128
    assert draw_mixing(TrainConfig(), n, 0) is None
    assert draw_mixing(TrainConfig(mix="none", mixup_alpha=0.2), n, 0) is None
    mix = draw_mixing(TrainConfig(mixup_alpha=0.2, batch_size=bs), n, 5)
    ref = MixupPlan.draw(0.2, n, bs, seed=0, epoch=5)  # the report-era draws, unchanged
    assert torch.equal(mix.lam, ref.lam) and torch.equal(mix.perm, ref.perm)
    cut = draw_mixing(TrainConfig(mix="cutmix", cutmix_alpha=1.0, mixup_alpha=0.2, batch_size=bs), n, 5)
    assert isinstance(cut, CutmixPlan) and not torch.equal(cut.perm, ref.perm)  # a stream of its own


def test_nesterov_reaches_the_optimiser():
    cfg = TrainConfig(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    grads = [torch.tensor([0.5, 0.25]), torch.tensor([-1.0, 2.0]), torch.tensor([0.3, 0.3])]
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = make_optimizer([p], cfg)
    want, buf = p.detach().clone(), None
    for g in grads:  # Sutskever et al.'s Nesterov momentum as PyTorch writes it, coupled weight decay
        p.grad = g.clone()
        opt.step()
        d = g + 0.01 * want
        buf = d if buf is None else 0.9 * buf + d
        want = want - 0.1 * (d + 0.9 * buf)
        torch.testing.assert_close(p.detach(), want)
    q = torch.tensor([1.0, -2.0], requires_grad=True)
    plain = make_optimizer([q], cfg.replace(nesterov=False))
    q.grad = grads[0].clone()
    plain.step()
    d = grads[0] + 0.01 * torch.tensor([1.0, -2.0])
    torch.testing.assert_close(q.detach(), torch.tensor([1.0, -2.0]) - 0.1 * d)  # plain momentum: buf = d
    assert not torch.allclose(q.detach(), torch.tensor([1.0, -2.0]) - 0.1 * 1.9 * d)  # Nesterov's first step


def test_label_smoothing_changes_the_training_loss_but_not_the_reported_val_loss(small_data):
    from tune_cifar.data import DeviceData, normalise

    cfg = TrainConfig(epochs=1, batch_size=64, label_smoothing=0.3, device="cpu")
    split = DeviceData(small_data, cfg.val_fraction, cfg.split_seed, torch.device("cpu"))
    seen = {}

    def check(metrics, state):
        state.model.eval()
        with torch.no_grad():
            logits = state.model(normalise(split.val_x, split.mean, split.std))
        seen["plain"] = F.cross_entropy(logits, split.val_y).item()
        seen["smoothed"] = F.cross_entropy(logits, split.val_y, label_smoothing=0.3).item()
        seen["val_loss"] = metrics["val_loss"]

    smoothed_run = train(cfg, small_data, check)
    assert seen["val_loss"] == pytest.approx(seen["plain"], rel=1e-5)
    assert abs(seen["smoothed"] - seen["plain"]) > 1e-3
    plain_run = train(cfg.replace(label_smoothing=0.0), small_data)
    assert abs(smoothed_run["train_loss"] - plain_run["train_loss"]) > 1e-4


def test_onecycle_cutmix_smoothing_dropout_nesterov_resume_exactly(small_data):
    """A run interrupted after epoch 1 and resumed from its saved state equals the uninterrupted one."""
    cfg = TrainConfig(epochs=2, batch_size=64, schedule="onecycle", mix="cutmix", cutmix_prob=0.7,
                      label_smoothing=0.1, dropout=0.2, nesterov=True, weight_decay=5e-4, device="cpu")
    steps = 3  # 160 training images in batches of 64
    flags = [f for e in range(2) for f in CutmixPlan.draw(1.0, 0.7, 160, 64, 0, e).mixed]
    assert True in flags[steps:] and False in flags[steps:]  # the resumed epoch cut-mixes some batches, not all
    seen = []
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append({k: opt.param_groups[0][k] for k in ("lr", "momentum", "nesterov")}))
    try:
        full, states = _run(cfg, small_data)
    finally:
        hook.remove()
    assert [s["lr"] for s in seen] == pytest.approx([onecycle_lr(cfg.lr, t, 2 * steps) for t in range(2 * steps)])
    assert {(s["momentum"], s["nesterov"]) for s in seen} == {(0.9, True)}  # onecycle leaves momentum alone
    assert [r["lr"] for r in full] == pytest.approx([onecycle_lr(cfg.lr, e * steps, 2 * steps) for e in range(2)])
    resumed, _ = _run(cfg, small_data, resume_from=states[1])
    assert [r["epoch"] for r in resumed] == [2]
    for key in ("lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"):
        assert full[1].get(key) == resumed[0].get(key), key


def test_a_checkpoint_saved_before_the_issue_12_fields_resumes_with_their_defaults(small_data):
    new = ("dropout", "drop_path", "step_milestones", "step_gamma", "warmup_epochs", "nesterov", "label_smoothing",
           "mix", "cutmix_alpha", "cutmix_prob")
    cfg = TrainConfig(epochs=2, batch_size=64, device="cpu")
    _, states = _run(cfg.replace(epochs=1), small_data)
    old = {**states[1], "config": {k: v for k, v in states[1]["config"].items() if k not in new}}
    assert train(cfg, small_data, resume_from=old)["epoch"] == 2
    with pytest.raises(CheckpointMismatch, match="label_smoothing: saved 0.0 vs 0.1"):
        train(cfg.replace(label_smoothing=0.1), small_data, resume_from=old)


def test_resuming_takes_momentum_and_weight_decay_from_the_config_not_the_checkpoint():
    """PBT continues a donor's state with its own mutated values (schema.MUTABLE_FIELDS)."""
    from tune_cifar.train import TrainState

    donor = TrainState(TrainConfig(weight_decay=5e-4, momentum=0.9), torch.device("cpu"))
    clone = TrainState(TrainConfig(weight_decay=1e-4, momentum=0.8), torch.device("cpu"))
    clone.load_state_dict(donor.state_dict())
    assert {(g["weight_decay"], g["momentum"]) for g in clone.optimizer.param_groups} == {(1e-4, 0.8)}


@pytest.fixture
def cuda_watched(monkeypatch):
    """A GPU node as a CPU trial sees it: CUDA looks available; every CUDA RNG call is recorded, none runs."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name in ("get_rng_state", "get_rng_state_all", "set_rng_state", "set_rng_state_all"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, _name=name, **k: calls.append(_name))
    return calls


def test_a_cpu_run_never_touches_cuda_and_resumes_a_checkpoint_saved_on_two_gpus(small_data, cuda_watched):
    cfg = TrainConfig(epochs=2, batch_size=64, device="cpu")
    full, states = _run(cfg, small_data)
    assert "cuda_rng" not in states[1]
    from_gpus = {**states[1], "cuda_rng": [torch.zeros(16, dtype=torch.uint8)] * 2}  # saved where 2 GPUs were visible
    resumed, _ = _run(cfg, small_data, resume_from=from_gpus)
    assert [r["epoch"] for r in resumed] == [2] and resumed[0]["val_acc"] == full[1]["val_acc"]
    assert cuda_watched == []

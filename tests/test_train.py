import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tune_cifar.config import TrainConfig
from tune_cifar.data import read_cifar100, write_synthetic
from tune_cifar.train import CheckpointMismatch, MixupPlan, lr_at, mixup, mixup_loss_and_hits, train

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
        states[metrics["epoch"]] = torch.load(_roundtrip(state.state_dict()), weights_only=False)  # a real copy

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

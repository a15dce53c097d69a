"""Each schedule against the PyTorch scheduler it imitates, stepped beside it, value for value."""

import warnings

import pytest
import torch
from torch.optim import lr_scheduler

from tune_cifar.config import TrainConfig
from tune_cifar.schedules import PER_STEP, lr_at, milestone_epochs, onecycle_lr, schedule_lr

LR = 0.05


def _torch_lrs(make_scheduler, steps):
    """The lr of each of `steps` optimiser steps under a PyTorch scheduler stepped after each one."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR's and step()-order deprecation notices
        sched = make_scheduler(opt)
        lrs = []
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return lrs, opt


def _ours(steps_or_epochs, **cfg):
    c = TrainConfig(lr=LR, **cfg)
    return [schedule_lr(c, e) for e in range(steps_or_epochs)]


@pytest.mark.parametrize("epochs", [1, 7, 300])
def test_cosine_equals_cosine_annealing_lr(epochs):
    want, _ = _torch_lrs(lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=epochs, eta_min=0), epochs)
    assert _ours(epochs, schedule="cosine", epochs=epochs) == pytest.approx(want, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("epochs,milestones", [
    (200, [60, 120, 160]),  # pytorch-cifar100's MultiStepLR
    (300, [90, 180, 240]),
    (15, [5, 9, 12]),  # 4.5 rounds up
    (2, [1, 1, 2]),  # 0.6 and 1.2 both round to 1: MultiStepLR then applies gamma twice at epoch 1
])
def test_step_default_is_the_pytorch_cifar100_multistep(epochs, milestones):
    want, _ = _torch_lrs(lambda o: lr_scheduler.MultiStepLR(o, milestones=milestones, gamma=0.2), epochs)
    assert _ours(epochs, schedule="step", epochs=epochs) == pytest.approx(want, rel=1e-12)


def test_step_with_explicit_epochs_and_gamma():
    want, _ = _torch_lrs(lambda o: lr_scheduler.MultiStepLR(o, milestones=[3, 5], gamma=0.1), 8)
    got = _ours(8, schedule="step", epochs=8, step_milestones="3, 5", step_gamma=0.1)
    assert got == pytest.approx(want, rel=1e-12)
    assert got[2] == LR and got[3] == pytest.approx(LR * 0.1) and got[7] == pytest.approx(LR * 0.01)


def test_milestones_parse_percentages_exactly_and_reject_nonsense():
    assert milestone_epochs("30%,60%,80%", 200) == (60, 120, 160)
    assert milestone_epochs("30%,60%,80%", 300) == (90, 180, 240)
    assert milestone_epochs("30%,60%,80%", 15) == (5, 9, 12)  # 4.5 rounds up; 12 exactly
    assert milestone_epochs("60,50%", 100) == (60, 50)
    for bad in ("", "abc", "0", "-3", "0%", "101%", "30%,,60%"):
        with pytest.raises(ValueError, match="neither an epoch"):
            milestone_epochs(bad, 100)


@pytest.mark.parametrize("epochs,warmup", [(10, 3), (300, 5), (7, 1)])
def test_warmup_cosine_equals_linear_then_cosine_annealing(epochs, warmup):
    def reference(opt):
        ramp = lr_scheduler.LinearLR(opt, start_factor=1 / (warmup + 1), end_factor=1.0, total_iters=warmup)
        cosine = lr_scheduler.CosineAnnealingLR(opt, T_max=epochs - warmup, eta_min=0)
        return lr_scheduler.SequentialLR(opt, [ramp, cosine], milestones=[warmup])

    want, _ = _torch_lrs(reference, epochs)
    got = _ours(epochs, schedule="warmup_cosine", epochs=epochs, warmup_epochs=warmup)
    assert got == pytest.approx(want, rel=1e-12)
    assert got[0] == pytest.approx(LR / (warmup + 1)) and got[warmup] == LR  # the ramp ends at lr exactly


def test_warmup_edge_cases():
    assert _ours(9, schedule="warmup_cosine", epochs=9, warmup_epochs=0) == _ours(9, schedule="cosine", epochs=9)
    # an --epochs override below the warm-up: the run never leaves the ramp
    assert _ours(2, schedule="warmup_cosine", epochs=2, warmup_epochs=5) == pytest.approx([LR / 6, 2 * LR / 6])


@pytest.mark.parametrize("epochs,steps", [(3, 7), (20, 13), (1, 5), (2, 1)])
def test_onecycle_equals_one_cycle_lr_per_step(epochs, steps):
    # cycle_momentum=False: we keep SGD's momentum fixed (TrainConfig.momentum), so only the lr is compared.
    total = epochs * steps
    want, opt = _torch_lrs(lambda o: lr_scheduler.OneCycleLR(o, max_lr=LR, total_steps=total, cycle_momentum=False),
                           total)
    cfg = TrainConfig(lr=LR, schedule="onecycle", epochs=epochs)
    got = [schedule_lr(cfg, e, s, steps) for e in range(epochs) for s in range(steps)]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert opt.param_groups[0]["momentum"] == 0.9
    if total >= 10:
        assert got[0] == pytest.approx(LR / 25) and max(got) == pytest.approx(LR, rel=1e-2)  # peak between steps
        assert got[-1] == pytest.approx(LR / 25 / 1e4, rel=1e-2)


def test_onecycle_with_its_momentum_cycle_would_not_keep_momentum():
    """Why we say so: OneCycleLR's default moves momentum 0.95 -> 0.85; ours leaves it to TrainConfig."""
    _, opt = _torch_lrs(lambda o: lr_scheduler.OneCycleLR(o, max_lr=LR, total_steps=10), 3)
    assert opt.param_groups[0]["momentum"] != 0.9
    assert onecycle_lr(LR, 0, 10) == pytest.approx(LR / 25)


def test_only_onecycle_is_stepped_per_optimiser_step():
    assert PER_STEP == ("onecycle",)
    cfg = TrainConfig(lr=LR, schedule="warmup_cosine", epochs=10, warmup_epochs=2)
    assert {schedule_lr(cfg, 4, s, 9) for s in range(9)} == {schedule_lr(cfg, 4)}  # per epoch: step ignored


def test_lr_at_keeps_its_report_era_signature():
    assert lr_at(0.05, "cosine", 3, 10) == schedule_lr(TrainConfig(lr=0.05, schedule="cosine", epochs=10), 3)
    assert lr_at(0.1, "step", 60, 200) == pytest.approx(0.02)

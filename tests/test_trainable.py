"""The trainable's checkpoint cadence (a pure function of the epoch and the time since the last save)."""

import pytest

from tune_cifar.trainable import (
    MIN_CHECKPOINT_GAP_S,
    TrialOptions,
    checkpoint_due,
    checkpoint_interval,
)


def saved_epochs(epochs: int, options: TrialOptions, epoch_s: float, diverge_at: int | None = None) -> list[int]:
    """The epochs a run saves when every epoch takes `epoch_s` seconds, as the trainable calls checkpoint_due."""
    saved, since = [], 0.0
    for epoch in range(1, epochs + 1):
        since += epoch_s
        diverged = epoch == diverge_at
        if checkpoint_due(epoch, epochs, diverged, options, since):
            saved.append(epoch)
            since = 0.0
        if diverged:
            break
    return saved


@pytest.mark.parametrize("epochs,every", [(1, 1), (15, 1), (30, 1), (31, 2), (300, 10), (301, 11)])
def test_the_epoch_cadence_is_at_most_about_30_per_trial(epochs, every):
    assert checkpoint_interval(epochs) == every


def test_checkpoint_every_is_exact_whatever_the_epochs_take():
    assert saved_epochs(6, TrialOptions(checkpoint_every=3), epoch_s=0.01) == [3, 6]
    assert saved_epochs(7, TrialOptions(checkpoint_every=3), epoch_s=0.01) == [3, 6, 7]  # and the last
    assert saved_epochs(3, TrialOptions(checkpoint_every=1), epoch_s=0.01) == [1, 2, 3]  # the old default
    assert saved_epochs(10, TrialOptions(checkpoint_every=4), epoch_s=0.01, diverge_at=5) == [4, 5]


def test_a_short_trial_saves_nothing_but_what_its_scheduler_clones():
    assert saved_epochs(15, TrialOptions(), epoch_s=2.0) == []
    assert saved_epochs(15, TrialOptions(also_every=5), epoch_s=2.0) == [5, 10, 15]  # PBT's perturbation epochs
    assert saved_epochs(6, TrialOptions(checkpoint_every=4, also_every=3), epoch_s=2.0) == [3, 4, 6]


def test_slow_epochs_keep_the_epoch_cadence():
    assert saved_epochs(15, TrialOptions(), epoch_s=MIN_CHECKPOINT_GAP_S) == list(range(1, 16))
    assert saved_epochs(300, TrialOptions(), epoch_s=100.0) == list(range(10, 301, 10))
    assert saved_epochs(10, TrialOptions(), epoch_s=400.0, diverge_at=4) == [1, 2, 3, 4]


def test_fast_epochs_save_on_the_cadence_at_most_once_per_gap():
    # 8 s epochs, every 10th epoch on the cadence: the first one at least 300 s after the last save
    assert saved_epochs(300, TrialOptions(), epoch_s=8.0) == list(range(40, 300, 40))
    assert saved_epochs(20, TrialOptions(min_checkpoint_gap_s=0.0), epoch_s=0.01) == list(range(1, 21))


@pytest.mark.parametrize("epochs", [5, 15, 300])
@pytest.mark.parametrize("epoch_s", [0.5, 8.0, 60.0, 299.0, 301.0, 1000.0])
def test_the_default_bounds_both_storage_traffic_and_repeated_work(epochs, epoch_s):
    options = TrialOptions()
    saved = saved_epochs(epochs, options, epoch_s)
    assert len(saved) * options.min_checkpoint_gap_s <= epochs * epoch_s  # at most one save per gap of run time
    assert len(saved) <= 30 + 1
    # A kill repeats at most one gap plus one cadence step of epochs: the run between two saves, or since the last.
    every = checkpoint_interval(epochs)
    for a, b in zip([0] + saved, saved + [epochs]):
        assert (b - a) * epoch_s <= options.min_checkpoint_gap_s + every * epoch_s

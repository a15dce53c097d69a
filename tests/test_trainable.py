"""The trainable's checkpoint cadence (a pure function of the epoch and the time since the last save), and
what it accepts as a checkpoint."""

import os

import pytest
import torch
from ray import tune

from tune_cifar.config import TrainConfig
from tune_cifar.train import TrainState
from tune_cifar.trainable import (
    CHECKPOINT_FILE,
    MIN_CHECKPOINT_GAP_S,
    TrialOptions,
    _load_checkpoint,
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


def test_a_short_trial_saves_its_final_epoch_and_what_its_scheduler_clones():
    assert saved_epochs(15, TrialOptions(), epoch_s=2.0) == [15]  # the time floor never skips the final epoch
    assert saved_epochs(1, TrialOptions(), epoch_s=0.01) == [1]
    assert saved_epochs(15, TrialOptions(), epoch_s=2.0, diverge_at=3) == []  # it never reached its final epoch
    assert saved_epochs(15, TrialOptions(also_every=4), epoch_s=2.0) == [4, 8, 12, 15]  # PBT's perturbation epochs
    assert saved_epochs(6, TrialOptions(checkpoint_every=4, also_every=3), epoch_s=2.0) == [3, 4, 6]


def test_slow_epochs_keep_the_epoch_cadence():
    assert saved_epochs(15, TrialOptions(), epoch_s=MIN_CHECKPOINT_GAP_S) == list(range(1, 16))
    assert saved_epochs(300, TrialOptions(), epoch_s=100.0) == list(range(10, 301, 10))
    assert saved_epochs(10, TrialOptions(), epoch_s=400.0, diverge_at=4) == [1, 2, 3, 4]


def test_fast_epochs_save_on_the_cadence_at_most_once_per_gap():
    # 8 s epochs, every 10th epoch on the cadence: the first one at least 300 s after the last save
    assert saved_epochs(300, TrialOptions(), epoch_s=8.0) == [*range(40, 300, 40), 300]  # and the final one
    assert saved_epochs(20, TrialOptions(min_checkpoint_gap_s=0.0), epoch_s=0.01) == list(range(1, 21))


@pytest.mark.parametrize("epochs", [5, 15, 300])
@pytest.mark.parametrize("epoch_s", [0.5, 8.0, 60.0, 299.0, 301.0, 1000.0])
def test_the_default_bounds_both_storage_traffic_and_repeated_work(epochs, epoch_s):
    options = TrialOptions()
    saved = saved_epochs(epochs, options, epoch_s)
    assert saved[-1] == epochs  # a finished trial keeps its final weights
    # besides that one, at most one save per gap of run time
    assert (len(saved) - 1) * options.min_checkpoint_gap_s <= epochs * epoch_s
    assert len(saved) <= 30 + 1
    # A kill repeats at most one gap plus one cadence step of epochs: the run between two saves, or since the last.
    every = checkpoint_interval(epochs)
    for a, b in zip([0] + saved, saved + [epochs]):
        assert (b - a) * epoch_s <= options.min_checkpoint_gap_s + every * epoch_s


class Payload:
    """What a tampered checkpoint on shared storage could hold: unpickling it calls os.mkdir(marker)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def saved_checkpoint(folder, state) -> tune.Checkpoint:
    folder.mkdir()
    torch.save(state, folder / CHECKPOINT_FILE)
    return tune.Checkpoint.from_directory(str(folder))


def test_a_pickle_payload_in_a_checkpoint_is_refused_in_one_line_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    state = {**TrainState(TrainConfig(device="cpu"), torch.device("cpu")).state_dict(), "extra": Payload(str(marker))}
    assert _load_checkpoint(saved_checkpoint(tmp_path / "ckpt", state)) is None  # the trial starts over
    assert not marker.exists()
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not loaded" in err and "starting the trial over" in err


def test_the_projects_own_checkpoints_load_through_the_safe_path(tmp_path):
    state = TrainState(TrainConfig(device="cpu", seed=3), torch.device("cpu"))
    state.epoch = 2
    loaded = _load_checkpoint(saved_checkpoint(tmp_path / "ckpt", state.state_dict()))
    assert loaded["epoch"] == 2 and loaded["config"] == state.cfg.to_dict()
    assert all(torch.equal(loaded["model"][k], v) for k, v in state.model.state_dict().items())

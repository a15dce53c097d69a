"""CheckpointPruner: a PBT study's checkpoints kept by folder, never one still named (tune_cifar/pruning.py)."""

from types import SimpleNamespace

import pyarrow.fs
import pytest
from ray import tune

from tune_cifar.pruning import CheckpointPruner


def _folders(root, trial, n):
    made = []
    for i in range(n):
        folder = root / trial / f"checkpoint_{i:06d}"
        folder.mkdir(parents=True)
        (folder / "state.pt").write_bytes(b"x")
        made.append(tune.Checkpoint(str(folder), filesystem=pyarrow.fs.LocalFileSystem()))
    return made


def _on_disk(root, trial):
    return sorted(p.name for p in (root / trial).iterdir())


def test_a_folder_registered_twice_counts_once_and_is_never_deleted_while_newest(tmp_path):
    a = SimpleNamespace(trial_id="a", checkpoint=None)
    c0, c1, c2, c3 = _folders(tmp_path, "a", 4)
    pruner = CheckpointPruner(keep=2)
    # the registrations Tune makes under PBT: each folder twice (the member's report and PBT's save)
    for ckpt in (c0, c0, c1, c1, c2, c2):
        pruner.on_checkpoint(iteration=0, trials=[a], trial=a, checkpoint=ckpt)
        a.checkpoint = ckpt
    assert pruner.repeats == 3
    # Tune's count (num_to_keep=2 over 6 entries) would have deleted c1, which its newer entry still names
    assert _on_disk(tmp_path, "a") == ["checkpoint_000001", "checkpoint_000002", "checkpoint_000003"]  # 3: not yet saved
    pruner.on_checkpoint(iteration=0, trials=[a], trial=a, checkpoint=c3)
    assert _on_disk(tmp_path, "a") == ["checkpoint_000002", "checkpoint_000003"]


def test_a_folder_another_trial_still_names_is_kept_past_the_count(tmp_path):
    donor = SimpleNamespace(trial_id="donor", checkpoint=None)
    d0, d1, d2 = _folders(tmp_path, "donor", 3)
    # a clone exploited the donor's first checkpoint and has not saved its own yet: its latest is d0
    clone = SimpleNamespace(trial_id="clone", checkpoint=d0)
    pruner = CheckpointPruner(keep=1)
    for ckpt in (d0, d1, d2):
        pruner.on_checkpoint(iteration=0, trials=[donor, clone], trial=donor, checkpoint=ckpt)
        donor.checkpoint = ckpt
    assert _on_disk(tmp_path, "donor") == ["checkpoint_000000", "checkpoint_000002"]
    # once the clone has saved its own, the donor's old folder goes at the donor's next save
    (c0,) = _folders(tmp_path, "clone", 1)
    pruner.on_checkpoint(iteration=0, trials=[donor, clone], trial=clone, checkpoint=c0)
    clone.checkpoint = c0
    (d3,) = [tune.Checkpoint(str(tmp_path / "donor" / "checkpoint_000003"), filesystem=d0.filesystem)]
    (tmp_path / "donor" / "checkpoint_000003").mkdir()
    pruner.on_checkpoint(iteration=0, trials=[donor, clone], trial=donor, checkpoint=d3)
    assert _on_disk(tmp_path, "donor") == ["checkpoint_000003"]
    assert _on_disk(tmp_path, "clone") == ["checkpoint_000000"]


def test_what_a_clone_held_back_goes_when_the_experiment_ends(tmp_path):
    donor = SimpleNamespace(trial_id="donor", checkpoint=None)
    d0, d1 = _folders(tmp_path, "donor", 2)
    clone = SimpleNamespace(trial_id="clone", checkpoint=d0)
    pruner = CheckpointPruner(keep=1)
    for ckpt in (d0, d1):
        pruner.on_checkpoint(iteration=0, trials=[donor, clone], trial=donor, checkpoint=ckpt)
        donor.checkpoint = ckpt
    assert _on_disk(tmp_path, "donor") == ["checkpoint_000000", "checkpoint_000001"]
    (c0,) = _folders(tmp_path, "clone", 1)
    pruner.on_checkpoint(iteration=0, trials=[donor, clone], trial=clone, checkpoint=c0)
    clone.checkpoint = c0
    pruner.on_experiment_end(trials=[donor, clone])
    assert _on_disk(tmp_path, "donor") == ["checkpoint_000001"] and _on_disk(tmp_path, "clone") == ["checkpoint_000000"]


def test_a_folder_already_gone_is_not_an_error(tmp_path):
    a = SimpleNamespace(trial_id="a", checkpoint=None)
    c0, c1 = _folders(tmp_path, "a", 2)
    pruner = CheckpointPruner(keep=1)
    pruner.on_checkpoint(iteration=0, trials=[a], trial=a, checkpoint=c0)
    (tmp_path / "a" / "checkpoint_000000" / "state.pt").unlink()
    (tmp_path / "a" / "checkpoint_000000").rmdir()
    pruner.on_checkpoint(iteration=0, trials=[a], trial=a, checkpoint=c1)
    assert _on_disk(tmp_path, "a") == ["checkpoint_000001"]
    with pytest.raises(ValueError, match="at least 1"):
        CheckpointPruner(keep=0)


def test_a_folder_never_registered_goes_like_any_older_one_and_a_newer_one_stays(tmp_path):
    # PBT paused the member after its worker wrote checkpoint_000001 for a report the driver then dropped; Tune's
    # index had moved on (a repeated registration), so the member went on at checkpoint_000002
    a = SimpleNamespace(trial_id="a", checkpoint=None)
    c0, c1, c2, c3, c4 = _folders(tmp_path, "a", 5)
    pruner = CheckpointPruner(keep=2)
    for ckpt in (c0, c0, c2, c3):
        pruner.on_checkpoint(iteration=0, trials=[a], trial=a, checkpoint=ckpt)
        a.checkpoint = ckpt
    # c1, never registered, went with c0 (pruning by registrations would keep it for ever); c4 may be being
    # written: kept
    assert _on_disk(tmp_path, "a") == ["checkpoint_000002", "checkpoint_000003", "checkpoint_000004"]
    pruner.on_experiment_end(trials=[a])  # no worker writes any more: only the two newest stay
    assert _on_disk(tmp_path, "a") == ["checkpoint_000003", "checkpoint_000004"]


def test_a_driver_resumed_with_a_fresh_pruner_still_prunes_what_the_killed_one_kept(tmp_path):
    a = SimpleNamespace(trial_id="a", checkpoint=None)
    made = _folders(tmp_path, "a", 4)
    a.checkpoint = made[2]  # restored: Tune's latest is checkpoint_000002, and the resumed run saves 000003
    pruner = CheckpointPruner(keep=2)
    pruner.on_checkpoint(iteration=0, trials=[a], trial=a, checkpoint=made[3])
    assert _on_disk(tmp_path, "a") == ["checkpoint_000002", "checkpoint_000003"]

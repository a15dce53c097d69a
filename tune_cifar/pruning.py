"""Keeping a PBT study's checkpoints to a few per trial without deleting one that is still named.

Tune's own pruning (CheckpointConfig(num_to_keep=N)) counts registrations, not folders, and under PBT one
folder is registered twice: when a top member reaches a perturbation point, PBT asks it to save, and a
function trainable's save returns the checkpoint it last reported (ray.tune FunctionTrainable.save_checkpoint),
which the trial's own report registers as well. When Tune then prunes the older of the two entries it deletes
the folder the newer one still names: the trial's latest checkpoint, or the one a clone is about to restore
from, is gone, and pruning the second entry later fails ("Error handling checkpoint", FileNotFoundError).
Seen in Ray 2.60: a PBT member lost from results.parquet (tests/test_search.py checks PBT runs end whole).

So a PBT study runs with num_to_keep=None (Tune deletes nothing) and this callback prunes instead, by the
folders on disk rather than by what was registered, because some folders are never registered: a member's
worker writes the checkpoint of its next report before the driver has read the last one, and when PBT pauses
the member there (to clone a donor) that report is dropped; Tune's index for the member's next folder has
moved on past it by then whenever a registration was repeated (each registration counts one), so the dropped
folder stays, unnamed and never overwritten. Seen on CI: 5 folders where 4 were kept.
"""

from __future__ import annotations

import logging
import posixpath
import re
from typing import Any

import pyarrow.fs
from ray import tune

log = logging.getLogger(__name__)

FOLDER = re.compile(r"checkpoint_(\d+)$")


class CheckpointPruner(tune.Callback):
    """Keeps, in each trial's folder, the `keep` newest checkpoint folders up to the one being registered (by
    Tune's index, which only grows, across restores and resumes too), every newer one (a worker may be writing
    it), and any that a trial's latest checkpoint names (a clone's latest is its donor's folder until it saves
    its own); deletes the rest, registered or not."""

    def __init__(self, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, not {keep}")
        self.keep = keep
        self.seen: set[str] = set()
        self.repeats = 0  # registrations of a folder already registered: what Tune's own pruning gets wrong
        self.folders: dict[str, str] = {}  # trial id -> the folder its checkpoints are written in
        self.filesystem: pyarrow.fs.FileSystem | None = None

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: tune.Checkpoint, **info: Any) -> None:
        if checkpoint.path in self.seen:
            self.repeats += 1
        self.seen.add(checkpoint.path)
        self.filesystem = checkpoint.filesystem
        parent = posixpath.dirname(checkpoint.path.rstrip("/"))
        self.folders[trial.trial_id] = parent
        # (this trial's own latest is about to be this one: Tune calls back before it registers the checkpoint)
        named = {checkpoint.path} | {t.checkpoint.path for t in trials if t is not trial and t.checkpoint is not None}
        self._prune(parent, named, upto=_index(checkpoint.path))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """What a clone held back when its owner last saved, and what a dropped report left, go now (no clone is
        waiting and no worker is writing any more)."""
        if self.filesystem is None:
            return  # no checkpoint was registered in this driver's run
        named = {t.checkpoint.path for t in trials if t.checkpoint is not None}
        for t in trials:
            if t.checkpoint is not None and t.trial_id not in self.folders:
                self.folders[t.trial_id] = posixpath.dirname(t.checkpoint.path.rstrip("/"))
        for parent in self.folders.values():
            self._prune(parent, named, upto=None)

    def _prune(self, parent: str, named: set[str], upto: int | None) -> None:
        try:
            listed = self.filesystem.get_file_info(pyarrow.fs.FileSelector(parent, allow_not_found=True))
        except OSError as e:
            log.warning("could not list the checkpoints in %s: %s", parent, e)
            return
        found = sorted((_index(i.path), i.path) for i in listed
                       if i.type == pyarrow.fs.FileType.Directory and FOLDER.search(i.path))
        settled = [path for index, path in found if upto is None or index <= upto]
        for path in settled[:-self.keep]:
            if path in named:
                continue
            try:
                self.filesystem.delete_dir(path)
            except FileNotFoundError:
                pass  # removed by hand, or by a driver that ran before a resume
            except OSError as e:  # a storage hiccup costs disk, not the run
                log.warning("could not delete the old checkpoint %s: %s", path, e)


def _index(path: str) -> int:
    return int(FOLDER.search(path.rstrip("/")).group(1))

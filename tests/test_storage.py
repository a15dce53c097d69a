"""The one atomic writer and the path helpers, on local paths and through pyarrow (file:// URIs)."""

import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from tune_cifar.storage import (StorageError, check_writable, is_nonempty_folder, join, list_files, read_text,
                                trial_path, write_atomic)


def test_write_atomic_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = Path(write_atomic(tmp_path / "report.md", "old"))

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr("tune_cifar.storage.os.replace", boom)
    with pytest.raises(OSError):
        write_atomic(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_write_atomic_fsyncs_before_the_rename(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("tune_cifar.storage.os.fsync", lambda fd: calls.append("fsync"))
    real_replace = __import__("os").replace
    monkeypatch.setattr("tune_cifar.storage.os.replace", lambda a, b: (calls.append("replace"), real_replace(a, b)))
    write_atomic(tmp_path / "a" / "b.bin", b"\x00\x01")
    assert calls == ["fsync", "replace"] and (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"


def test_uris_go_through_pyarrow_and_create_their_folders(tmp_path):
    uri = join(f"file://{tmp_path}", "deep", "er", "study.json")
    assert uri == f"file://{tmp_path}/deep/er/study.json"
    assert read_text(uri) is None
    write_atomic(uri, "{}")
    assert read_text(uri) == "{}" and (tmp_path / "deep" / "er" / "study.json").read_text() == "{}"
    assert not is_nonempty_folder(f"file://{tmp_path}")  # object stores have no folders to check
    assert is_nonempty_folder(tmp_path) and not is_nonempty_folder(tmp_path / "missing")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_get_the_permissions_the_umask_gives(tmp_path, umask):
    """Colleagues on shared NFS or a web-served folder read results and reports as they read any file."""
    from analysis.report import main
    from test_analysis_fixtures import write_study

    write_study(tmp_path, "lr", {"lr": [0.01, 0.05]}, epochs=2)
    old = os.umask(umask)
    try:
        results = Path(write_atomic(tmp_path / "lr" / "results.bin", b"\x00"))  # as experiment.py writes results.parquet
        assert main([str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    finally:
        os.umask(old)
    written = [results, tmp_path / "report" / "report.md", tmp_path / "report" / "report.html",
               tmp_path / "report" / "tables" / "summary.csv", tmp_path / "report" / "figures" / "lr_overlay.png"]
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == \
        {p.name: oct(0o666 & ~umask) for p in written}


def test_trial_paths_come_from_the_experiments_uri_not_tunes_stripped_path():
    # Tune's Trial.path for s3://bucket/runs/lr is bucket/runs/lr/<trial>: read as a local path, relative
    assert trial_path("s3://bucket/runs/lr", "bucket/runs/lr/train_0001") == "s3://bucket/runs/lr/train_0001"
    assert trial_path("/abs/lr", "/abs/lr/train_0001") == "/abs/lr/train_0001"


def test_the_epoch_record_goes_to_the_experiments_uri_whatever_tune_calls_the_trial(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from tune_cifar.progress import EpochRecorder

    cwd = tmp_path / "driver"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    recorder = EpochRecorder(f"file://{tmp_path}/store/lr")
    trial = SimpleNamespace(trial_id="t1", path="store/lr/train_t1")  # scheme and root gone, as Tune gives it
    recorder.on_trial_result(0, [], trial, {"epoch": 1, "val_acc": 0.5, "trial_id": "t1"})
    recorder.on_trial_result(0, [], trial, {"epoch": 2, "val_acc": 0.6, "trial_id": "t1"})
    saved = json.loads((tmp_path / "store" / "lr" / "train_t1" / "epochs.json").read_text())
    assert [r["epoch"] for r in saved] == [1, 2] and list(cwd.rglob("*")) == []
    again = EpochRecorder(f"file://{tmp_path}/store/lr")  # a resumed driver continues that record
    again.on_trial_result(0, [], trial, {"epoch": 3, "val_acc": 0.7, "trial_id": "t1"})
    saved = json.loads((tmp_path / "store" / "lr" / "train_t1" / "epochs.json").read_text())
    assert [r["epoch"] for r in saved] == [1, 2, 3]


def test_list_files_lists_the_same_tree_by_path_and_by_uri(tmp_path):
    write_atomic(tmp_path / "a" / "b.json", "{}")
    write_atomic(tmp_path / "c.txt", "x")
    assert list_files(tmp_path) == list_files(f"file://{tmp_path}") == ["a/b.json", "c.txt"]


def test_the_writable_check_writes_a_probe_and_leaves_nothing(tmp_path):
    (tmp_path / "keep").write_text("precious")
    check_writable(tmp_path / "new" / "deeper")
    check_writable(f"file://{tmp_path}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]
    with pytest.raises(StorageError, match=r"storage path /proc/x is not writable \("):
        check_writable("/proc/x")  # (root passes os.access there; a real write fails)
    with pytest.raises(StorageError, match="keep/sub is not writable"):
        check_writable(tmp_path / "keep" / "sub")
    with pytest.raises(StorageError, match="options in the URI are not supported; give the endpoint as AWS_"):
        check_writable("s3://bucket/runs?endpoint_override=127.0.0.1:9000")


def test_analysis_reads_a_uri_as_it_reads_the_folder(tmp_path):
    from analysis import load
    from analysis.loading import AnalysisError
    from test_analysis_fixtures import write_root

    root = write_root(tmp_path / "results")
    pd.testing.assert_frame_equal(load(f"file://{root}"), load(root))
    (root / "lr" / "results.parquet").write_bytes(b"not parquet")
    with pytest.raises(AnalysisError, match=f"file://{root}/lr/results.parquet: unreadable results.parquet"):
        load(f"file://{root}")

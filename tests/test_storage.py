"""The one atomic writer and the path helpers, on local paths and through pyarrow (file:// URIs)."""

import os
import stat
from pathlib import Path

import pytest

from tune_cifar.storage import is_nonempty_folder, join, read_text, write_atomic


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

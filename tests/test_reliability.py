"""Faults provoked for real (SIGKILL, SIGINT, corrupt files, divergence) and bad input at the CLI."""

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import search_spaces
from conftest import assert_lr_statuses, run_cli
from tune_cifar.config import TrainConfig
from tune_cifar.data import read_cifar100, write_synthetic
from tune_cifar.run import write_smoke
from tune_cifar.train import CheckpointMismatch, train

pytestmark = pytest.mark.slow


def _result_lines(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_a_trial_killed_epochs_after_its_checkpoint_resumes_there_with_identical_metrics(ray_session, tmp_path,
                                                                                           monkeypatch):
    """--checkpoint-every 2 on 4 epochs saves epochs 2 and 4. The worker is killed once epoch 3 is recorded:
    Tune restarts the trial from epoch 2's checkpoint, the epochs after it run again, and every epoch's
    metrics equal an uninterrupted run's. (It replaced, in stop 26, a test that killed a worker of the
    3-trial lr smoke study with --checkpoint-every 1: this one asks the same and more, per epoch, in a third
    of the time.)"""
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "onelr.py").write_text(
        'DESCRIPTION = "one trial"\nBASE = dict(epochs=4)\nSPACE = {"lr": [0.05]}\n')
    monkeypatch.setattr(search_spaces, "__path__", [*search_spaces.__path__, str(tmp_path / "spaces")])
    experiment = tmp_path / "r" / "onelr"
    killed = {}

    def kill_after_epoch_3():
        """Freeze the worker (SIGSTOP) as soon as our record shows epoch 3, then kill it only if nothing past
        epoch 3 is recorded and epoch 2's is the only checkpoint; a frozen worker cannot move on meanwhile."""
        deadline = time.time() + 300
        while time.time() < deadline:
            for record in experiment.glob("*/epochs.json"):
                info = _json(record.parent / "run_info.json")
                if info is None or max((r["epoch"] for r in _json(record) or []), default=0) < 3:
                    continue
                os.kill(info["pid"], signal.SIGSTOP)
                records = {r["epoch"]: r for r in _json(record)}
                saved = [c.name for c in record.parent.glob("checkpoint_*")]
                if max(records) == 3 and saved == ["checkpoint_000000"]:
                    killed.update(trial=record.parent, at=time.time(), records=records)
                    os.kill(info["pid"], signal.SIGKILL)
                else:
                    os.kill(info["pid"], signal.SIGCONT)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_epoch_3)
    killer.start()
    code, out = run_cli("onelr", "--smoke", "--epochs", "4", "--checkpoint-every", "2", "--gpus-per-trial", "0",
                        "--storage-path", tmp_path / "r")
    killer.join()
    assert code == 0, out
    assert killed, "the worker was not stopped after epoch 3"
    trial = killed["trial"]
    assert len(_json(trial / "run_info.json")["starts"]) == 2  # restarted once
    assert torch.load(trial / "checkpoint_000000" / "state.pt", weights_only=True)["epoch"] == 2
    df = pd.read_parquet(experiment / "results.parquet")
    assert df["status"].tolist() == ["finished"] * 4 and df["epoch"].tolist() == [1, 2, 3, 4]
    after = {r["epoch"]: r for r in _json(trial / "epochs.json")}
    before = killed["records"]
    assert all(after[e] == before[e] for e in (1, 2))  # not run again: the restart began after epoch 2
    assert all(after[e]["timestamp"] > killed["at"] for e in (3, 4))  # run again after the kill

    write_smoke(tmp_path / "data")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a trial with 1 CPU trains on 1 thread
    reference = []
    try:
        cfg = TrainConfig.from_dict({**_json(trial / "params.json"), "device": "cpu"})
        train(cfg, read_cifar100(tmp_path / "data"), lambda metrics, state: reference.append(metrics))
    finally:
        torch.set_num_threads(threads)
    keys = ("train_loss", "train_acc", "val_loss", "val_acc")
    for uninterrupted in reference:
        e = uninterrupted["epoch"]
        for key in keys + (("test_loss", "test_acc") if e == 4 else ()):
            assert after[e][key] == pytest.approx(uninterrupted[key], rel=1e-6, abs=1e-9), (e, key)
            if e in before:  # an epoch that ran twice gave the same figures both times
                assert before[e][key] == after[e][key], (e, key)


def test_ctrl_c_leaves_an_experiment_that_resume_finishes_even_with_a_corrupt_checkpoint(tmp_path, isolated_ray):
    cmd = [sys.executable, "-m", "tune_cifar.run", "lr", "--smoke", "--epochs", "3", "--max-concurrent", "1",
           "--gpus-per-trial", "0", "--checkpoint-every", "1", "--storage-path", str(tmp_path)]
    experiment = tmp_path / "lr"
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=isolated_ray.env)
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None:
        if any(_result_lines(p) for p in experiment.glob("*/result.json")):
            break
        time.sleep(0.2)
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, err[-3000:]
    assert "interrupted: " in err and "--resume" in err
    assert not (experiment / "results.parquet").exists()

    unfinished = [p.parent for p in experiment.glob("*/result.json")
                  if not any(r.get("epoch") == 3 for r in _result_lines(p))]
    assert unfinished
    for state in (d for t in unfinished for d in t.glob("checkpoint_*/state.pt")):
        state.write_bytes(state.read_bytes()[:100])  # truncated: unreadable
    cut = max(unfinished, key=lambda t: len(_result_lines(t / "result.json")))
    text = (cut / "result.json").read_text()
    (cut / "result.json").write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])  # a line cut in two

    proc = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600, env=isolated_ray.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint unreadable" in proc.stderr
    df = pd.read_parquet(experiment / "results.parquet")
    assert df["trial_id"].nunique() == 3
    assert_lr_statuses(df)
    assert df.groupby("trial_id")["epoch"].apply(list).tolist() == [[1, 2, 3]] * 3


def test_checkpoint_of_another_model_is_refused_by_name(tmp_path):
    write_synthetic(tmp_path, 60, 10)
    data = read_cifar100(tmp_path)
    saved = {}
    train(TrainConfig(model="resnet18", epochs=1, batch_size=32, device="cpu"), data,
          lambda m, s: saved.update(s.state_dict()))
    with pytest.raises(CheckpointMismatch, match="model: saved 'resnet18' vs 'mobilenet'"):
        train(TrainConfig(epochs=2, batch_size=32, device="cpu"), data, resume_from=saved)
    with pytest.raises(CheckpointMismatch, match="does not fit"):
        train(TrainConfig(model="resnet18", epochs=2, batch_size=32, device="cpu"), data,
              resume_from={**saved, "model": {"conv1.weight": torch.zeros(1)}})


def test_a_diverging_trial_ends_as_diverged_and_the_study_goes_on(ray_session, tmp_path, monkeypatch):
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "hotlr.py").write_text(
        'DESCRIPTION = "a sane lr and one that diverges"\nBASE = dict(epochs=3)\nSPACE = {"lr": [0.05, 1e12]}\n')
    monkeypatch.setattr(search_spaces, "__path__", [*search_spaces.__path__, str(tmp_path / "spaces")])
    code, out = run_cli("hotlr", "--smoke", "--epochs", "3", "--gpus-per-trial", "0", "--storage-path", tmp_path / "r")
    assert code == 0, out
    df = pd.read_parquet(tmp_path / "r" / "hotlr" / "results.parquet")
    assert df.groupby("config/lr")["status"].first().to_dict() == {0.05: "finished", 1e12: "diverged"}
    hot = df[df["config/lr"] == 1e12]
    assert hot["diverged"].iloc[-1] and hot["epoch"].max() < 3  # stopped early, flagged
    assert df[df["config/lr"] == 0.05]["epoch"].max() == 3  # the other trial went on
    assert "winner (val_acc, max): lr=0.05" in out

    from analysis.report import main as report_main

    assert report_main([str(tmp_path / "r"), "--out", str(tmp_path / "report")]) == 0
    assert "diverged" in (tmp_path / "report" / "report.md").read_text()


def _bad_data_dirs(root: Path) -> dict[str, tuple[Path, str]]:
    empty = root / "empty"
    empty.mkdir()
    truncated = root / "truncated"
    write_synthetic(truncated, 20, 5)
    train_file = truncated / "cifar-100-python" / "train"
    train_file.write_bytes(train_file.read_bytes()[:500])
    shaped = root / "shaped"
    write_synthetic(shaped, 20, 5)
    with open(shaped / "cifar-100-python" / "test", "wb") as f:
        pickle.dump({"data": np.zeros((5, 1024), np.uint8), "fine_labels": [0] * 5}, f)
    return {"missing": (root / "nowhere", "no CIFAR-100 in"), "empty": (empty, "no CIFAR-100 in"),
            "truncated": (truncated, "truncated"), "wrong shape": (shaped, "expected uint8 of shape (N, 3072)")}


def test_bad_input_is_one_line_exit_2_and_overwrites_nothing(tmp_path):
    storage = tmp_path / "results"
    (storage / "lr").mkdir(parents=True)
    (storage / "lr" / "keep.txt").write_text("precious")
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    cases = [
        (["lr", "--set", "lr=0"], "invalid lr=0.0: must be > 0"),
        (["lr", "--set", "weight_decay=-1e-4"], "invalid weight_decay=-0.0001"),
        (["lr", "--set", "mixup_alpha=-0.2"], "invalid mixup_alpha=-0.2"),
        (["lr", "--set", "bogus=1"], "unknown config key(s) bogus"),
        (["lr", "--seeds", "0"], "--seeds must be >= 1"),
        (["lr", "--epochs", "0"], "--epochs must be >= 1"),
        (["lr", "--gpus-per-trial", "2.5"], "--gpus-per-trial must be a fraction"),
        (["nope"], "unknown study 'nope'"),
        (["lr", "--storage-path", str(not_a_folder / "sub")], "is not writable"),
    ]
    fresh = tmp_path / "fresh"  # bad data alone: a foreign experiment folder would be refused first
    for name, (folder, needle) in _bad_data_dirs(tmp_path).items():
        cases.append((["lr", "--no-download", "--data-dir", str(folder), "--storage-path", str(fresh)], needle))
    for argv, needle in cases:
        if "--storage-path" not in argv:
            argv = [*argv, "--storage-path", str(storage)]
        proc = subprocess.run([sys.executable, "-m", "tune_cifar.run", *argv], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"})  # Ray never starts
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (argv, proc.stderr)
        assert needle in lines[0], (argv, lines)
    assert (storage / "lr" / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in (storage / "lr").iterdir()) == ["keep.txt"]
    assert not (fresh / "lr").exists()


OOM_SCRIPT = """
import resource, sys
from tune_cifar.config import TrainConfig
from tune_cifar.data import read_cifar100
from tune_cifar.train import OutOfMemory, train
data = read_cifar100(sys.argv[1])
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 600 * 2**20, resource.RLIM_INFINITY))  # 600 MB more, no further
try:
    train(TrainConfig(model="resnet18", batch_size=512, epochs=1, device="cpu"), data)
except OutOfMemory as e:
    print("OOM:", e)
"""


def test_out_of_memory_names_memory_and_what_to_change(tmp_path):
    write_synthetic(tmp_path, 640, 10)
    proc = subprocess.run([sys.executable, "-c", OOM_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.stdout.startswith("OOM: out of cpu memory training resnet18 at batch_size=512"), proc.stderr[-2000:]
    assert "--gpus-per-trial" in proc.stdout and "batch_size" in proc.stdout


def test_a_failing_trial_does_not_stop_the_others(ray_session, tmp_path, monkeypatch):
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "somecuda.py").write_text(  # no CUDA here: the cuda trial fails at start
        'DESCRIPTION = "cpu vs cuda"\nBASE = dict(epochs=2)\nSPACE = {"device": ["cpu", "cuda"]}\n')
    monkeypatch.setattr(search_spaces, "__path__", [*search_spaces.__path__, str(tmp_path / "spaces")])
    code, out = run_cli("somecuda", "--smoke", "--epochs", "2", "--gpus-per-trial", "0", "--max-failures", "0",
                        "--storage-path", tmp_path / "r")
    assert code == 1, out
    df = pd.read_parquet(tmp_path / "r" / "somecuda" / "results.parquet")
    assert df.loc[df["config/device"] == "cpu", "epoch"].tolist() == [1, 2]
    errored = [p for p in (tmp_path / "r" / "somecuda").glob("*/error.txt")]
    assert len(errored) == 1 and "no CUDA device is visible" in errored[0].read_text()

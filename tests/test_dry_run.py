"""The dry run is the run: one planning function (experiment.plan_run) refuses for both, and what the dry
run shows is what a start would run, with the study's settings at the run's length (issue 19.10-12, 16)."""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import search_spaces
from conftest import BEYOND, IsolatedRay, free_port, ray_cli, run_checked
from tune_cifar import data as cifar_data
from tune_cifar import run as cli
from tune_cifar.config import ConfigError
from tune_cifar.experiment import (ExperimentError, RunOptions, check_experiment_folder, fused_groups, param_space,
                                   plan_run, study_record)
from tune_cifar.studies import load_study, scaled_settings, study_order


class Started(Exception):
    """The command got past every refusal: it was about to read data or start Ray."""


def _cli(argv, monkeypatch):
    """(exit code, stdout, stderr) of python -m tune_cifar.run in this process; a start ends at Started."""
    def started(*a, **k):
        raise Started

    for name in ("write_smoke", "_start_ray"):
        monkeypatch.setattr(cli, name, started)
    for name in ("read_cifar", "download_cifar"):  # (load_cifar reads and downloads through these)
        monkeypatch.setattr(cifar_data, name, started)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in argv])
        except Started:
            code = "started"
    return code, out.getvalue(), err.getvalue()


def _refusals(tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    smoke = [  # (argv, a piece of the one error line); each with --smoke
        # 19.10: one source for each setting
        (["lr", "--set", "epochs=3"], "--set epochs=3: epochs has an option of its own, its one source; use --epochs"),
        (["lr", "--set", "epochs=3", "--scheduler", "asha", "--grace-period", "4"], "use --epochs N instead"),
        (["lr", "--set", "epochs=3", "--epochs", "7"], "use --epochs N instead"),
        (["lr", "--set", "device=cuda", "--device", "cpu"], "device has an option of its own, its one source; use --device"),
        (["lr", "--set", "data_dir=/elsewhere"], "use --data-dir instead"),
        (["lr", "--set", "download=false"], "use --no-download instead"),
        (["lr", "--set", "weight_decay=1e-4", "--set", "weight_decay=0"], "--set weight_decay given twice (1e-4 and 0)"),
        # 19.11: what the real run refused, or silently ignored
        (["all", "--search", "optuna"], "the 'all' chain runs its studies as their own grids"),
        (["lr", "--set", "seed=7", "--seeds", "2"], "--set seed=7 with --seeds 2: --seeds runs every configuration "
                                                    "with seeds 0..1"),
        (["lr", "--set", "lr=0.1"], "--set lr=0.1 fixes lr, which the 'lr' study varies ([0.01, 0.05, 0.5])"),
        (["all", "--set", "weight_decay=1e-4"], "which the 'all' chain's 'wd' step varies"),
        (["lr", "--grace-period", "2"], "--grace-period is a setting of ASHA, and this run's scheduler is fifo"),
        (["lr", "--reduction-factor", "2"], "--reduction-factor is a setting of ASHA"),
        (["lr", "--scheduler", "asha", "--perturbation-interval", "2"], "--perturbation-interval is a setting of PBT, "
                                                                        "and this run's scheduler is asha"),
        (["lr", "--num-samples", "3"], "--search grid runs every grid point once"),
        (["wd", "--set", "lr=inf"], "invalid lr=inf: must be a finite number"),
        (["joint", "--search", "grid"], "--search grid needs lists"),
        (["lr", "--scheduler", "pbt", "--search", "optuna"], "cannot be combined with --search optuna"),
        (["lr", "--scheduler", "asha", "--grace-period", "5"], "--grace-period must be at least 1 and below"),
        (["joint", "--seeds", "2"], "--seeds 2 with --search optuna"),
        (["joint", "--epochs", "1"], "the ASHA scheduler acts between epochs, so it needs at least 2"),
        (["lrs", "--fuse", "2", "--scheduler", "asha"], "--fuse trains a grid's configurations together"),
        (["lr", "--fuse", "0"], "--fuse must be >= 1"),
        (["lr", "--seeds", "0"], "--seeds must be >= 1"),
        (["lr", "--set", "lr=0"], "invalid lr=0.0: must be > 0"),
        (["lr", "--storage-path", not_a_folder / "sub"], "is not writable"),
        # seeds are integers in [0, 2**32-1]: what numpy, torch and the samplers take
        (["joint", "--search-seed", "-1"], "--search-seed -1: must be an integer in [0, 2**32-1]"),
        (["lr", "--search", "random", "--num-samples", "1", "--search-seed", "-3"], "--search-seed -3: must be"),
        (["lr", "--search-seed", str(2**32)], f"--search-seed {2**32}: must be an integer in [0, 2**32-1]"),
        (["lr", "--set", "seed=-1"], "invalid seed=-1: must be an integer in [0, 2**32-1]"),
        (["lr", "--set", f"split_seed={2**32}"], f"invalid split_seed={2**32}: must be an integer in [0, 2**32-1]"),
    ]
    for folder in ("held/lr", "held/all/lr", "alien/lr"):
        (tmp_path / folder).mkdir(parents=True)
    for folder in ("held/lr", "held/all/lr"):
        (tmp_path / folder / "study.json").write_text(json.dumps({"study": "lr", "seeds": 3}))
    (tmp_path / "alien" / "lr" / "keep.txt").write_text("precious")
    smoke += [  # the experiment folder: refused before Ray starts too
        (["lr", "--storage-path", tmp_path / "held"], "already holds another experiment (space"),
        (["all", "--storage-path", tmp_path / "held"], "already holds another experiment (space"),
        (["lr", "--storage-path", tmp_path / "alien"], "exists and is not an experiment of ours"),
        (["lr", "--resume", "--storage-path", tmp_path / "nothing"], "nothing to resume at"),
    ]
    return [([*argv, "--smoke"], needle) for argv, needle in smoke] + [
        (["lr", "--no-download", "--data-dir", empty], "no CIFAR-100 in")]


def test_every_refusal_is_the_same_for_the_dry_run_and_a_real_start(tmp_path, monkeypatch):
    storage = tmp_path / "results"
    for argv, needle in _refusals(tmp_path):
        if "--storage-path" not in argv:
            argv = [*argv, "--storage-path", storage]
        real, dry = _cli(argv, monkeypatch), _cli([*argv, "--dry-run"], monkeypatch)
        assert real[0] == 2, (argv, real)  # refused, before the data is read or Ray starts
        lines = real[2].strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (argv, lines)
        assert dry == real, (argv, dry, real)  # the same exit, the same line, nothing printed
    assert not storage.exists() and not (tmp_path / "nothing").exists()
    assert sorted(str(p.relative_to(tmp_path)) for d in ("held", "alien") for p in (tmp_path / d).rglob("*")
                  if p.is_file()) == [
        "alien/lr/keep.txt", "held/all/lr/study.json", "held/lr/study.json"]


def test_what_the_dry_run_accepts_a_real_start_accepts(tmp_path, monkeypatch):
    for argv in (["lr", "--smoke", "--set", "seed=7"], ["joint", "--smoke"],
                 ["joint", "--smoke", "--search-seed", str(2**32 - 1), "--set", f"split_seed={2**32 - 1}"],
                 ["all", "--smoke", "--seeds", "2"],
                 ["lr", "--smoke", "--scheduler", "asha", "--grace-period", "2", "--reduction-factor", "3"]):
        argv = [*argv, "--storage-path", tmp_path / "r"]
        assert _cli([*argv, "--dry-run"], monkeypatch)[0] == 0, argv
        assert _cli(argv, monkeypatch)[0] == "started", argv


def test_the_dry_run_shows_the_seed_a_set_seed_runs_with(tmp_path):
    code, out = _main_out(tmp_path, "lr", "--set", "seed=7", "--dry-run")
    table = out.split("trial  seed")[1].strip().splitlines()[1:]  # below the header
    assert code == 0 and [row.split()[1] for row in table] == ["7", "7", "7"]
    study, opts = load_study("lr"), RunOptions(extra=(("seed", 7),))
    assert param_space(study, opts, {}, plan_run(study, opts).steps[0].search)["seed"] == 7  # what the run trains
    groups = fused_groups(study, RunOptions(extra=(("seed", 7),), fuse=3), {})
    assert [m["seed"] for g in groups for m in g] == [7, 7, 7]


def _main_out(storage, *argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main([*argv, "--storage-path", str(storage)])
    return code, out.getvalue()


def test_a_resume_refusal_names_each_setting_that_differs(tmp_path):
    study = load_study("lr")
    res = {"cpu": 1.0, "gpu": 0.0}

    def record(opts):
        return study_record(study, opts, {}, res, None, plan_run(study, opts).steps[0].search)

    (tmp_path / "study.json").write_text(json.dumps(record(RunOptions(epochs=5))))
    with pytest.raises(ExperimentError) as e:
        check_experiment_folder(str(tmp_path), record(RunOptions(epochs=3)), resume=True)
    assert "(epochs 5 there, 3 here)" in str(e.value)
    with pytest.raises(ExperimentError) as e:
        check_experiment_folder(str(tmp_path), record(RunOptions(epochs=5, seeds=2, extra=(("momentum", 0.8),))),
                                resume=True)
    assert "(seeds 1 there, 2 here; momentum 0.9 there, 0.8 here)" in str(e.value)
    with pytest.raises(ExperimentError) as e:  # without --resume too
        check_experiment_folder(str(tmp_path), record(RunOptions(epochs=3)), resume=False)
    assert "already holds another experiment (epochs 5 there, 3 here)" in str(e.value)


def test_every_listed_study_dry_runs_at_the_smokes_length_with_its_settings_scaled(tmp_path):
    for name in study_order():
        code, out = _main_out(tmp_path, name, "--smoke", "--dry-run")
        assert code == 0 and "x 5 epochs" in out, name
    _, out = _main_out(tmp_path, "joint", "--smoke", "--dry-run")
    assert "(grace 1, reduction 4)" in out and "grace_period 15 -> 1" in out  # the study's 15 of 300 epochs
    _, out = _main_out(tmp_path, "schedules", "--smoke", "--dry-run")
    assert "warmup_epochs 5 -> 1" in out and "warmup_epochs=1," in out
    _, out = _main_out(tmp_path, "joint", "--epochs", "30", "--dry-run")
    assert "(grace 2, reduction 4)" in out
    _, out = _main_out(tmp_path, "joint", "--smoke", "--grace-period", "2", "--dry-run")  # the user's own: as given
    assert "(grace 2, reduction 4)" in out and "grace_period 15" not in out
    _, out = _main_out(tmp_path, "schedules", "--smoke", "--set", "warmup_epochs=3", "--dry-run")
    assert "warmup_epochs=3," in out


def test_epoch_counted_settings_scale_from_the_studys_own_epochs(tmp_path, monkeypatch):
    (tmp_path / "stepped.py").write_text(
        "DESCRIPTION = 'step milestones in epochs'\nBASE = dict(epochs=300, schedule='step', warmup_epochs=10,\n"
        "            step_milestones='60,50%,240')\nSPACE = {'lr': [0.01, 0.05], 'weight_decay': [0.0, 1e-4]}\n"
        "SCHEDULER, PERTURBATION_INTERVAL = 'pbt', 30\n")
    monkeypatch.setattr(search_spaces, "__path__", [*search_spaces.__path__, str(tmp_path)])
    study = load_study("stepped")
    assert scaled_settings(study, 300) == {}
    assert scaled_settings(study, 10) == {"perturbation_interval": (30, 1), "warmup_epochs": (10, 1),
                                          "step_milestones": ("60,50%,240", "2,50%,8")}
    assert scaled_settings(study, 2)["step_milestones"] == ("60,50%,240", "1,50%,1")  # below the run's epochs
    assert scaled_settings(study, 600)["perturbation_interval"] == (30, 60)
    step = plan_run(study, RunOptions(epochs=10)).steps[0]
    assert (step.search.perturbation_interval, step.base.warmup_epochs, step.base.step_milestones) == (1, 1, "2,50%,8")
    with pytest.raises(ConfigError, match="the PBT scheduler acts between epochs, so it needs at least 2"):
        plan_run(study, RunOptions(epochs=1))


# --- through Tune: every study starts at the smoke's length -----------------------------------------


@pytest.mark.slow
def test_every_listed_study_starts_with_smoke_and_reports_a_first_epoch(tmp_path):
    """Each study no other test runs (_not_run_elsewhere) as a newcomer first runs it, `--smoke` and nothing
    else, killed at its first epoch's result.

    One Ray head for all (a driver joins it in ~1 s, where starting one costs ~5 s); a killed driver's
    trials end with it, and IsolatedRay.kill stops the head and anything left.
    """
    ray = IsolatedRay(tmp_path)
    port = free_port()
    try:
        run_checked([ray_cli(), "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
                     "--include-dashboard=false", "--disable-usage-stats"], env=ray.env, timeout=120)
        failures = []
        for name in _not_run_elsewhere():
            storage, log = tmp_path / name, tmp_path / f"{name}.log"
            cmd = [sys.executable, "-m", "tune_cifar.run", name, "--smoke", "--address", f"127.0.0.1:{port}",
                   "--max-concurrent", "1", "--cpus-per-trial", "2", "--storage-path", str(storage)]
            driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"), env=ray.env)
            try:
                deadline = time.time() + 600  # a hang guard: ResNet-18 (depth) took 161 s at a load of 12 on 2 cores
                while time.time() < deadline and driver.poll() is None and not _first_results(storage):
                    time.sleep(0.5)
            finally:
                if driver.poll() is None:
                    os.kill(driver.pid, signal.SIGKILL)
                driver.wait()
            first = _first_results(storage)
            if not first or '"epoch": 1' not in first[0].read_text():
                failures.append((name, driver.returncode, log.read_text()[-1500:]))
        assert not failures, failures
    finally:
        ray.kill()


def _not_run_elsewhere() -> list[str]:
    """The listed studies no other test runs through Tune: the smoke chain (conftest.smoke_all) runs `all` and
    its steps, test_run.py's beyond_the_report the seven studies past the report (one smoke epoch each), so
    starting them again here cost ~150 s of a 29-minute suite and checked nothing new (stop 26)."""
    covered = {"all", *load_study("all").chain, *BEYOND}
    return [name for name in study_order() if name not in covered]


def _first_results(storage):
    return [p for p in storage.glob("**/result.json") if p.stat().st_size]


def _saved_experiment(folder, name, opts, chain=None):
    """study.json as run_study writes it for `name` run with `opts` (no study needs to run)."""
    study = load_study(name)
    step = plan_run(study, opts).steps[0]
    folder.mkdir(parents=True)
    (folder / "study.json").write_text(json.dumps(study_record(step.study, opts, {}, {"cpu": 1.0, "gpu": 0.0}, chain,
                                                               step.search), default=str))


def _size_line(out, name):
    return next(line for line in out.split(f"{name}: ", 1)[1].splitlines() if line.strip().startswith("search "))


def test_a_resume_dry_run_shows_the_saved_experiments_options(tmp_path):
    smoke = (("batch_size", cli.SMOKE["batch_size"]),)
    # started with --epochs 2: a resume that leaves --epochs out runs 2 epochs, and the dry run says so
    _saved_experiment(tmp_path / "two" / "lr", "lr", RunOptions(epochs=2, extra=smoke))
    code, out = _main_out(tmp_path / "two", "lr", "--smoke", "--resume", "--dry-run")
    assert code == 0 and "3 trials x 2 epochs" in _size_line(out, "lr"), out
    # started with ASHA: the resume is ASHA, not the study's grid/FIFO
    _saved_experiment(tmp_path / "asha" / "lr", "lr",
                      RunOptions(epochs=4, extra=smoke, plan=(("scheduler", "asha"), ("grace_period", 1))))
    code, out = _main_out(tmp_path / "asha", "lr", "--smoke", "--resume", "--dry-run")
    line = _size_line(out, "lr")
    assert code == 0 and "asha" in line.lower() and "3 trials x 4 epochs" in line, out
    assert "(grace 1, reduction 4)" in line, out
    # a chain: each step whose folder holds a study.json takes its saved options, a step not begun this command's
    _saved_experiment(tmp_path / "chain" / "all" / "lr", "lr", RunOptions(epochs=2, extra=smoke), chain="all")
    code, out = _main_out(tmp_path / "chain", "all", "--smoke", "--resume", "--dry-run")
    second = load_study("all").chain[1]
    assert code == 0 and "x 2 epochs" in _size_line(out, "lr") and "x 5 epochs" in _size_line(out, second), out
    _saved_experiment(tmp_path / "chain" / "all" / second, second, RunOptions(epochs=3, extra=smoke), chain="all")
    code, out = _main_out(tmp_path / "chain", "all", "--smoke", "--resume", "--dry-run")
    third = load_study("all").chain[2]
    assert code == 0 and "x 2 epochs" in _size_line(out, "lr") and "x 3 epochs" in _size_line(out, second) \
        and "x 5 epochs" in _size_line(out, third), out
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["study.json"] * 4  # nothing written

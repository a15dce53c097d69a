"""The console scripts (pyproject's [project.scripts]) and the flag help of `python -m tune_cifar.train`."""

import importlib
import os
import sys
import tomllib
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest

from tune_cifar.config import CHOICES, TrainConfig, field_comments
from tune_cifar.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]


def scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def resolve(target: str):
    # (the venv's installed metadata is another checkout's, so the targets are resolved as pip's wrapper does)
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def test_scripts_are_the_two_commands_and_point_at_their_modules_mains():
    assert scripts() == {"tune-cifar": "tune_cifar.run:main", "tune-cifar-report": "analysis.report:main"}
    from analysis.report import main as report_main
    from tune_cifar.run import main as run_main

    assert resolve(scripts()["tune-cifar"]) is run_main
    assert resolve(scripts()["tune-cifar-report"]) is report_main


@pytest.mark.parametrize("name, says", [("tune-cifar", "lr: Learning rate"), ("tune-cifar-report", None)])
def test_a_script_called_as_pip_calls_it_reads_sys_argv_and_names_itself(name, says, monkeypatch, capsys):
    func = resolve(scripts()[name])
    if says:  # sys.exit(main()) with no arguments: main reads the command line from sys.argv
        monkeypatch.setattr(sys, "argv", [f"/venv/bin/{name}", "--list"])
        assert func() == 0
        assert says in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", [f"/venv/bin/{name}", "--help"])
    with pytest.raises(SystemExit) as exit_:
        func()
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {name} ")


def test_the_module_keeps_its_own_name_in_usage(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["/repo/tune_cifar/run.py", "--help"])
    with pytest.raises(SystemExit):
        resolve(scripts()["tune-cifar"])()
    assert capsys.readouterr().out.startswith("usage: python -m tune_cifar.run ")


def test_every_config_field_has_a_comment_for_its_help():
    comments = field_comments()
    assert set(comments) == {f.name for f in fields(TrainConfig)}
    assert all(len(text.split()) >= 3 for text in comments.values()), comments
    assert comments["weight_decay"] == "SGD's coupled L2 coefficient"  # beside the field
    assert comments["drop_path"].startswith("Stochastic depth, resnet18 only: block i of n drops")  # lines above it
    assert comments["drop_path"].endswith("0 = off.")
    assert "#" not in comments["step_milestones"] and comments["step_milestones"].endswith("% of `epochs`")


def help_of(capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        train_main(["--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse's line wrapping undone


def test_train_help_gives_each_flag_its_meaning_default_and_choices(capsys):
    text = help_of(capsys)
    assert "--weight-decay FLOAT SGD's coupled L2 coefficient (default: 0.0)" in text
    assert "--step-milestones STR \"step\": epochs (0-based, decay from there on) or % of `epochs` " \
           "(default: 30%,60%,80%)" in text
    assert "--nesterov, --no-nesterov SGD's Nesterov momentum" in text and "(default: --no-nesterov)" in text
    assert "(default: --channels-last)" in text
    assert "--model {mobilenet,mobilenetv2,resnet18} a name registered in tune_cifar.models (default: mobilenet)" in text
    for f in fields(TrainConfig):  # every flag says its default right after its comment
        assert f"{field_comments()[f.name]} (default: " in text, f.name


def test_train_refuses_a_name_outside_the_choices(capsys):
    assert set(CHOICES) <= {f.name for f in fields(TrainConfig)}
    with pytest.raises(SystemExit) as exit_:
        train_main(["--schedule", "linear"])
    assert exit_.value.code == 2
    assert "invalid choice: 'linear'" in capsys.readouterr().err


def test_rerun_flags_without_from_are_refused_not_ignored(capsys):
    from tune_cifar import train

    for argv in (["--set", "lr=0.5"], ["--member", "3"]):
        assert train.main([*argv, "--data-dir", "/nonexistent", "--no-download", "--epochs", "1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --set and --member change a rerun's"), err


def test_the_regenerate_hint_writes_a_cifar10_smoke_trials_data_again():
    from tune_cifar.rerun import regenerate_hint

    smoke10 = {"generated": True, "train_images": 1000, "test_images": 200, "classes": 10}
    hint = regenerate_hint(smoke10, "cifar10")
    assert "synthetic --dataset cifar10 --out DIR --train 1000 --test 200 --classes 10 --noise 30" in hint
    hint100 = regenerate_hint({**smoke10, "classes": 40})
    assert "--dataset" not in hint100 and "--classes 40" in hint100


def test_a_local_ray_is_started_with_usage_statistics_off(monkeypatch):
    import ray

    from tune_cifar import run

    seen = {}
    monkeypatch.delenv("RAY_USAGE_STATS_ENABLED", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(env=os.environ.get("RAY_USAGE_STATS_ENABLED")))
    run._start_ray(None)
    assert seen == {"env": "0"}  # Ray's default is on: it would send a report to usage-stats.ray.io


def test_the_ray_dashboard_is_off_unless_asked_and_its_address_is_printed(monkeypatch, capsys):
    import ray

    from tune_cifar import run

    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw) or SimpleNamespace(dashboard_url="127.0.0.1:8265"))
    run._start_ray(None)
    run._start_ray(None, dashboard=True)
    assert [c["include_dashboard"] for c in calls] == [False, True]
    assert capsys.readouterr().err.count("Ray dashboard: http://127.0.0.1:8265") == 1
    # joining a cluster, there is no local dashboard to start: one line, before anything runs
    assert run.main(["lr", "--dashboard", "--address", "10.0.0.1:6379", "--dry-run"]) == 2
    assert "--dashboard starts a local Ray's dashboard" in capsys.readouterr().err


def test_the_live_views_name_the_experiment_folder_and_the_optuna_database(tmp_path):
    from tune_cifar.experiment import live_views

    both = live_views(str(tmp_path / "r" / "joint"), str(tmp_path / "r" / "joint" / "optuna.db"),
                      installed={"tensorboard", "optuna_dashboard"})
    assert both == [f"watch: tensorboard --logdir {tmp_path / 'r' / 'joint'}",
                    f"watch: optuna-dashboard sqlite:///{tmp_path / 'r' / 'joint' / 'optuna.db'}"]
    # a relative path is made absolute (the command is run from anywhere); a missing tool says how to get it
    (line,) = live_views("results/lr", None, installed=set())
    assert line.startswith(f"watch: tensorboard --logdir {Path('results/lr').absolute()}") and "[dashboards]" in line

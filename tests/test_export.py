"""Final weights kept (issue 21, item 1), exported and loaded back (item 2), and the commands a finished study
prints (item 7): through python -m tune_cifar.run and python -m tune_cifar.export, on the smoke data."""

import json
import re
import shlex
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from tune_cifar import export, results
from tune_cifar.config import TrainConfig
from tune_cifar.data import DeviceData, read_cifar100
from tune_cifar.experiment import next_steps
from tune_cifar.models import load_exported
from tune_cifar.studies import load_study

pytestmark = pytest.mark.slow


def trial_folders(experiment: Path) -> dict[str, Path]:
    return {json.loads(p.read_text())["trial_id"]: p.parent for p in experiment.glob("*/run_info.json")}


def last_rows(experiment: Path) -> pd.DataFrame:
    return results.last_rows(pd.read_parquet(experiment / "results.parquet")).set_index("trial_id")


def test_every_trial_that_reached_its_final_epoch_kept_it(smoke_kept):
    experiment, code, out = smoke_kept
    assert code == 0, out
    last = last_rows(experiment)
    for trial_id, folder in trial_folders(experiment).items():
        saved = sorted(c.name for c in folder.glob("checkpoint_*"))
        if last.loc[trial_id, "epoch"] < 2:  # diverged (NaN) in epoch 1: stopped before its final epoch
            assert saved == [], trial_id  # seconds-long: the 5-minute floor skipped its epochs
            continue
        assert saved == ["checkpoint_000000"], trial_id  # the final epoch only: the floor skipped epoch 1
        state = torch.load(folder / saved[0] / "state.pt", weights_only=True)
        assert state["epoch"] == 2 and state["trial_id"] == trial_id
        assert len(state["normalisation_mean"]) == len(state["normalisation_std"]) == 3


def test_the_best_trial_exports_and_reloads_with_the_test_metrics_it_reported(smoke_kept, smoke_data, tmp_path, capsys):
    experiment, code, out = smoke_kept
    winner = re.search(r"winner \(val_acc, max\): weight_decay=(\S+)", out).group(1)  # what the runner printed
    assert export.main([str(experiment), "--best", "--out", str(tmp_path / "model.pt")]) == 0
    assert f"weight_decay={winner}" in capsys.readouterr().out

    model = load_exported(tmp_path / "model.pt")
    trial_id = model.info["source"]["trial_id"]
    row = last_rows(experiment).loc[trial_id]
    assert row["status"] == "finished" and row["config/weight_decay"] == float(winner)
    info = json.loads((trial_folders(experiment)[trial_id] / "run_info.json").read_text())
    assert model.config == info["config"]  # the full resolved config (device cpu, precision fp32)
    assert model.info["provenance"]["trial"]["git_revision"] == info["git_revision"]
    assert model.info["provenance"]["export"]["versions"]["torch"] == info["versions"]["torch"]
    data = read_cifar100(smoke_data)
    split = DeviceData(data, 0.2, 0, torch.device("cpu"))
    assert torch.equal(model.mean, split.mean) and torch.equal(model.std, split.std)  # the training split's

    logits = model.logits(data.test_x).double()
    labels = torch.as_tensor(data.test_y)
    assert model.accuracy(data.test_x, data.test_y) == row["test_acc"] == model.metrics["test_acc"]
    # the loss pins the logits themselves (an accuracy near chance could match by luck)
    assert F.cross_entropy(logits, labels).item() == pytest.approx(row["test_loss"], rel=1e-6)


def test_export_refuses_unknown_trials_existing_files_and_trials_without_weights(smoke_kept, tmp_path, capsys):
    experiment, _, _ = smoke_kept
    out = tmp_path / "model.pt"
    assert export.main([str(experiment), "--trial", "nope", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no trial 'nope'") and err.count("\n") == 1 and not out.exists()
    assert all(t in err for t in trial_folders(experiment))  # it names the trials there are

    out.write_bytes(b"mine")
    assert export.main([str(experiment), "--best", "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.read_bytes() == b"mine"
    assert export.main([str(experiment), "--best", "--out", str(out), "--force"]) == 0
    assert load_exported(out).metrics["epoch"] == 2

    bare = tmp_path / "copy" / "wd"  # the results without their checkpoints, as a study run before issue 21 left them
    shutil.copytree(experiment, bare, ignore=shutil.ignore_patterns("checkpoint_*"))
    assert export.main([str(bare), "--best", "--out", str(tmp_path / "none.pt")]) == 2
    err = capsys.readouterr().err
    assert "kept no weights" in err and err.count("\n") == 1 and not (tmp_path / "none.pt").exists()


def test_a_finished_study_prints_commands_that_work(smoke_kept, tmp_path, monkeypatch):
    experiment, _, out = smoke_kept
    lines = out[out.index(f"results in {experiment}"):].splitlines()
    assert any(f"python -m analysis.report {experiment}" in line for line in lines)
    command = next(line for line in lines if "python -m tune_cifar.export" in line).split("#")[0]
    monkeypatch.chdir(tmp_path)  # its --out is relative
    assert export.main(shlex.split(command)[3:]) == 0
    assert load_exported(tmp_path / "wd-best.pt").config["epochs"] == 2
    study = load_study("lr")
    assert "tensorboard --logdir results/lr" in next_steps("results", study, tensorboard=True)
    assert "tensorboard" not in next_steps("results", study, tensorboard=False)


def test_a_fused_member_exports_its_own_weights(smoke_fused, smoke_data, tmp_path):
    experiment, code, out = smoke_fused
    assert code == 0, out
    (group, folder), = trial_folders(experiment).items()
    members = json.loads((folder / "run_info.json").read_text())["members"]
    last = last_rows(experiment)
    data = read_cifar100(smoke_data)
    labels = torch.as_tensor(data.test_y)
    weights = []
    for k, member in enumerate(members):
        path = tmp_path / f"member{k}.pt"
        assert export.main([str(experiment), "--trial", f"{group}-{k}", "--out", str(path)]) == 0
        model = load_exported(path)
        assert model.config == member["config"] and TrainConfig.from_dict(model.config).weight_decay == \
            last.loc[f"{group}-{k}", "config/weight_decay"]
        logits = model.logits(data.test_x).double()
        # evaluated alone, not in the fused network: equal to rounding (tune_cifar/fused.py)
        assert F.cross_entropy(logits, labels).item() == pytest.approx(last.loc[f"{group}-{k}", "test_loss"], rel=1e-4)
        assert abs((logits.argmax(1) == labels).double().mean().item() - last.loc[f"{group}-{k}", "test_acc"]) <= 1 / 200
        weights.append(model.model.state_dict()["linear.weight"])
    assert not torch.equal(weights[0], weights[1])  # each member's own rows of the fused tensors


def test_export_reads_an_experiment_on_s3(smoke_kept, s3_bucket, tmp_path):
    experiment, _, _ = smoke_kept
    for path in experiment.rglob("*"):
        if path.is_file():
            s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=f"runs/wd/{path.relative_to(experiment)}",
                                        Body=path.read_bytes())
    uri = f"{s3_bucket.uri}/runs/wd"
    assert export.main([uri, "--best", "--out", f"{s3_bucket.uri}/model.pt"]) == 0
    assert export.main([uri, "--best", "--out", f"{s3_bucket.uri}/model.pt"]) == 2  # not overwritten either
    assert export.main([str(experiment), "--best", "--out", str(tmp_path / "local.pt")]) == 0
    there, here = load_exported(f"{s3_bucket.uri}/model.pt"), load_exported(tmp_path / "local.pt")
    assert there.metrics == here.metrics and there.info["source"]["experiment"] == uri
    assert torch.equal(there.model.state_dict()["linear.weight"], here.model.state_dict()["linear.weight"])


def test_the_smoke_chains_winner_exports_from_the_study_that_trained_it(smoke_all, smoke_data, tmp_path, capsys):
    """The README's quick start: `export results/all --best` is the chain's last study's winner; a reused trial's
    weights are the earlier study's, which trained it."""
    storage, code, out = smoke_all
    assert code == 0, out
    assert export.main([str(storage / "all"), "--best", "--out", str(tmp_path / "model.pt")]) == 0
    printed = capsys.readouterr().out
    chain = json.loads((storage / "all" / "chain.json").read_text())
    last = last_rows(storage / "all" / chain["order"][-1])
    won = chain["winners"][chain["order"][-1]]
    best = last[(last["status"] == "finished")
                & pd.concat([last[f"config/{k}"] == v for k, v in won.items()], axis=1).all(axis=1)]
    model = load_exported(tmp_path / "model.pt")
    asked = model.info["source"]["asked_for"]
    assert asked in best.index and model.metrics["test_acc"] == best.loc[asked, "test_acc"]
    if best.loc[asked, results.REUSED_FROM]:  # at the smoke sizes, mixup "off" is the wd winner's run
        study, trial_id = best.loc[asked, results.REUSED_FROM].split("/")
        assert model.info["source"] == {**model.info["source"], "study": study, "trial_id": trial_id}
        assert "reused" in printed
    data = read_cifar100(smoke_data)
    assert model.accuracy(data.test_x, data.test_y) == model.metrics["test_acc"]
    print(f"quick start: exported {asked}, reloaded test_acc {model.accuracy(data.test_x, data.test_y)}")

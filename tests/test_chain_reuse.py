"""The chain reuses a run an earlier study already made: same configuration, epochs, seed and data."""

import json

import pandas as pd
import pytest

from conftest import run_cli
from tune_cifar import results
from tune_cifar.experiment import RunOptions, reuse, search_plan
from tune_cifar.studies import load_study

SMOKE = RunOptions(epochs=5, data_dir="<generated>", extra=(("batch_size", 64),))


def _ran(study, opts, carried, val_acc=0.5):
    """An earlier study's frame: each planned trial finished, as results_frame makes it."""
    from tune_cifar.experiment import planned_trials

    frames = []
    for n, cfg in enumerate(planned_trials(study, opts, carried, search_plan(study, opts))):
        records = [{"epoch": e, "val_acc": val_acc, "val_loss": 1.0, "train_loss": 1.0, "train_acc": 0.5,
                    "test_loss": 1.0, "test_acc": 0.5, "epoch_s": 10.0, "diverged": False, "timestamp": float(n * 10 + e),
                    "device": "cpu", "precision": "fp32"} for e in range(1, cfg.epochs + 1)]
        frames.append(results.trial_frame(study.name, f"{study.name}_{n}", cfg.to_dict(), records, errored=False,
                                          ended=True, resources={"cpu": 1.0, "gpu": 0.5}))
    return results.combine(frames)


def test_a_chained_trial_is_reused_only_when_configuration_epochs_seed_and_data_are_the_same():
    lr, lrs = load_study("lr"), load_study("lrs")
    earlier = {"lr": _ran(lr, SMOKE, {})}
    source = earlier["lr"].groupby("trial_id").first()
    winner = source.index[source["config/lr"] == 0.05][0]
    to_train, sources = reuse(lrs, SMOKE, {"lr": 0.05}, search_plan(lrs, SMOKE), earlier)
    assert [c.schedule for c in to_train] == ["cosine"] and sources == [("lr", winner)]  # constant at lr 0.05
    for differs in (RunOptions(epochs=6, data_dir="<generated>", extra=(("batch_size", 64),)),  # epochs
                    RunOptions(epochs=5, data_dir="/other", extra=(("batch_size", 64),)),  # data
                    RunOptions(epochs=5, data_dir="<generated>", extra=(("batch_size", 64), ("seed", 3)))):  # seed
        to_train, sources = reuse(lrs, differs, {"lr": 0.05}, search_plan(lrs, differs), earlier)
        assert sources == [] and len(to_train) == 2, differs
    # a crashed source is not reused
    crashed = earlier["lr"].assign(status="error")
    assert reuse(lrs, SMOKE, {"lr": 0.05}, search_plan(lrs, SMOKE), {"lr": crashed})[1] == []
    # the reused rows are the source's, marked, under the new study and their own trial id
    rows = results.reused_rows("lrs", ("lr", winner), earlier)
    assert set(rows["study"]) == {"lrs"} and set(rows[results.REUSED_FROM]) == {f"lr/{winner}"}
    assert rows["val_acc"].tolist() == earlier["lr"].loc[earlier["lr"]["trial_id"] == winner, "val_acc"].tolist()


def test_a_reused_trial_costs_nothing_in_the_analysis():
    import analysis
    from analysis.budget import budget

    lr, lrs = load_study("lr"), load_study("lrs")
    earlier = {"lr": _ran(lr, SMOKE, {})}
    winner = earlier["lr"].loc[earlier["lr"]["config/lr"] == 0.05, "trial_id"].iloc[0]
    mine = _ran(lrs, SMOKE, {"lr": 0.05}, val_acc=0.6)
    mine = results.combine([mine[mine["config/schedule"] == "cosine"], results.reused_rows("lrs", ("lr", winner), earlier)])
    df = pd.concat([earlier["lr"].assign(experiment="all/lr"), mine.assign(experiment="all/lrs")], ignore_index=True)
    t = analysis.trials(df).set_index("trial_id")
    copy = f"{winner}-from-lr"
    assert t.loc[copy, "gpu_hours"] == 0 and t.loc[winner, "gpu_hours"] == pytest.approx(5 * 10 * 0.5 / 3600)
    assert t.loc[copy, "epochs_trained"] == 0 and t.loc[copy, "reused_from"] == f"lr/{winner}"
    s = analysis.summary(df)  # in its own study it is a configuration like any other, counted once
    assert s.loc[s["experiment"] == "all/lrs", "n_seeds"].tolist() == [1, 1]
    assert s.loc[s["experiment"] == "all/lrs", "n_reused"].tolist() == [1, 0]  # constant, then cosine
    from analysis.tables import study_tables

    lrs_tables = study_tables(s[s["experiment"] == "all/lrs"], "lrs")
    assert "1/1 seeds reused from an earlier study's run" in lrs_tables[0].frame["status"].tolist()
    meta = {"all/lr": {"chain": "all", "space": {"lr": []}}, "all/lrs": {"chain": "all", "space": {"schedule": []}}}
    spent = budget(df, meta)
    assert spent["trial_epochs"].max() == 4 * 5  # 3 lr trials and 1 lrs trial trained, not 5
    assert spent["gpu_hours"].max() == pytest.approx(4 * 5 * 10 * 0.5 / 3600)


def test_list_and_dry_run_show_what_the_chain_reuses():
    code, out = run_cli("--list")
    assert code == 0
    chain = out[out.index("all: "):]
    assert "step mixup: varies mixup_alpha in [0.2, 0.0]" in chain
    assert "reuses 1 trial(s), not trained again (mixup_alpha=0.0 is a run the wd study already made): " \
           "300 trial-epochs saved" in chain
    assert "1,845 trial-epochs (1,545 trained, 300 reused)" in chain
    code, out = run_cli("all", "--smoke", "--seeds", "2", "--dry-run")
    assert code == 0
    assert "reuses 2 trial(s), not trained again (schedule=constant is a run the lr study already made): " \
           "10 trial-epochs saved" in out
    assert "(mixup_alpha=0.0 is a run the wd study already made)" in out
    assert "all: 18 trials, 90 trial-epochs in all (70 trained, 20 reused from earlier steps)" in out


@pytest.mark.slow
def test_the_smoke_chain_reuses_the_runs_it_already_made(smoke_all):
    storage, code, out = smoke_all
    assert code == 0, out
    chain = json.loads((storage / "all" / "chain.json").read_text())
    frames = {name: pd.read_parquet(storage / "all" / name / "results.parquet") for name in chain["order"]}
    lr, lrs, wd, mixup = (frames[n].groupby("trial_id").first() for n in chain["order"])
    # lrs' constant schedule at the carried lr is the lr study's winning trial; mixup off is wd's winner
    for mine, earlier, name, key, value in [(lrs, lr, "lr", "schedule", "constant"),
                                            (mixup, wd, "wd", "mixup_alpha", 0.0)]:
        copy = mine[mine[f"config/{key}"] == value]
        assert len(copy) == 1 and copy["reused_from"].iloc[0].startswith(f"{name}/")
        source = copy["reused_from"].iloc[0].split("/", 1)[1]
        assert earlier.loc[source, f"config/{next(iter(chain['winners'][name]))}"] == \
            next(iter(chain["winners"][name].values()))
        assert copy["val_acc"].iloc[0] == earlier.loc[source, "val_acc"]
        assert mine.loc[mine[f"config/{key}"] != value, "reused_from"].isna().all()  # the other was trained
        record = json.loads((storage / "all" / mine["study"].iloc[0] / "study.json").read_text())
        assert record["reused"] == {copy.index[0]: copy["reused_from"].iloc[0]}
    # Tune trained 7 trials, not 9: the reused ones have no trial folder of their own
    assert sum(1 for p in (storage / "all").glob("*/*/params.json")) == 7


def test_a_reused_trial_is_read_from_its_source_when_only_trial_folders_are_left(tmp_path):
    """A reused trial has no folder of its own: the folder loader takes its rows from the source trial."""
    import json

    import analysis
    from test_analysis_fixtures import write_study

    chain = tmp_path / "all"
    write_study(chain, "wd", {"weight_decay": [0.0001, 0.0005]}, chain="all")
    mixup = write_study(chain, "mixup", {"mixup_alpha": [0.2]}, chain="all", carried={"weight_decay": 0.0001})
    record = json.loads((mixup / "study.json").read_text())
    (mixup / "study.json").write_text(json.dumps({**record, "reused": {"wd_00000_0-from-wd": "wd/wd_00000_0"}}))
    df = analysis.load(tmp_path)
    copy = df[(df["experiment"] == "all/mixup") & (df["trial_id"] == "wd_00000_0-from-wd")]
    source = df[(df["experiment"] == "all/wd") & (df["trial_id"] == "wd_00000_0")]
    assert len(copy) == len(source) == 4 and set(copy["reused_from"]) == {"wd/wd_00000_0"}
    assert copy["val_acc"].tolist() == source["val_acc"].tolist() and set(copy["study"]) == {"mixup"}
    t = analysis.trials(df).set_index(["experiment", "trial_id"])
    assert t.loc[("all/mixup", "wd_00000_0-from-wd"), "epochs_trained"] == 0
    assert t.loc[("all/mixup", "wd_00000_0-from-wd"), "gpu_hours"] == 0

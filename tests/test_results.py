"""results.py: reading Tune's result files without losing records, statuses, and the empty-trial row."""

import json

import pytest

from tune_cifar.experiment import RunOptions, resources, resume_options, ExperimentError
from tune_cifar.results import combine, parse_result_lines, trial_frame, trial_status, trials_without_results
from tune_cifar.trainable import resolve_once
from tune_cifar.config import TrainConfig


def _line(epoch, **extra):
    return json.dumps({"epoch": epoch, "val_acc": 0.1 * epoch, "training_iteration": epoch, "config": {"lr": 0.1},
                       **extra})


def test_a_line_cut_by_a_kill_and_then_appended_to_keeps_the_record_after_it():
    text = "\n".join([_line(1), _line(2)[:25] + _line(2, val_acc=0.25), _line(3)]) + "\n"
    records = parse_result_lines(text)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[1]["val_acc"] == 0.25  # the appended record, not the cut one
    assert parse_result_lines(_line(1) + "\n" + _line(2)[:30]) == [json.loads(_line(1))]  # a cut last line


@pytest.mark.parametrize("done,diverged,errored,ended,expected", [
    (5, False, False, True, "finished"), (2, True, False, True, "diverged"), (3, False, True, True, "error"),
    (3, False, False, True, "stopped_early"), (3, False, False, False, "incomplete"), (None, False, False, False,
                                                                                         "incomplete"),
    (5, False, True, True, "finished"), (2, True, True, True, "error")])  # retried through to the end; crashed
def test_statuses(done, diverged, errored, ended, expected):
    assert trial_status(done, 5, diverged, errored, ended) == expected


def test_a_trial_without_readable_epochs_is_one_row_with_its_status():
    config = TrainConfig(epochs=3).to_dict()
    empty = trial_frame("lr", "t0", config, [], errored=True, ended=True, resources={"cpu": 1, "gpu": 0})
    full = trial_frame("lr", "t1", config, [json.loads(_line(e, device="cpu", precision="fp32")) for e in (1, 2, 3)],
                       errored=False, ended=True, resources={"cpu": 1, "gpu": 0})
    df = combine([empty, full])
    assert trials_without_results(df) == ["t0"]
    assert df.groupby("trial_id")["status"].first().to_dict() == {"t0": "error", "t1": "finished"}
    assert df.loc[df["trial_id"] == "t0", "val_acc"].isna().all() and df["trial_id"].value_counts()["t0"] == 1
    # the precision and device the trial reported replace the config's "auto"
    assert set(df.loc[df["trial_id"] == "t1", "config/precision"]) == {"fp32"}
    assert set(df.loc[df["trial_id"] == "t0", "config/precision"]) == {"auto"}


def test_cpu_trials_ask_for_no_gpu_on_a_cluster_with_gpus():
    assert resources(RunOptions(device="cpu"), cluster_gpus=8) == {"cpu": 1.0, "gpu": 0.0}
    assert resources(RunOptions(device="auto"), cluster_gpus=8) == {"cpu": 1.0, "gpu": 0.25}
    assert resources(RunOptions(device="auto"), cluster_gpus=0)["gpu"] == 0.0
    assert resources(RunOptions(device="cuda", gpus_per_trial=1.0), cluster_gpus=8)["gpu"] == 1.0


def test_resume_takes_the_saved_options_applies_some_and_refuses_the_rest_by_name():
    saved = {"options": {"seeds": 2, "max_concurrent": 4, "max_failures": 2, "checkpoint_every": 1,
                         "cpus_per_trial": 1.0, "gpus_per_trial": None, "epochs": None, "device": "auto"}}
    saved["search"] = {"search": "optuna", "num_samples": 6, "scheduler": "asha", "search_seed": 3}
    opts = resume_options(saved, RunOptions(resume=True, plan=(("num_samples", 6),)), given=set())
    assert (opts.seeds, opts.max_concurrent) == (2, 4)  # not given: the experiment's own
    assert dict(opts.plan) == saved["search"]  # the search too
    opts = resume_options(saved, RunOptions(resume=True, max_failures=5, checkpoint_every=3),
                          given={"max_failures", "checkpoint_every"})
    assert (opts.max_failures, opts.checkpoint_every, opts.seeds) == (5, 3, 2)  # applied
    with pytest.raises(ExperimentError, match=r"--max-concurrent 1 differs from the experiment's 4"):
        resume_options(saved, RunOptions(resume=True, max_concurrent=1), given={"max_concurrent"})
    with pytest.raises(ExperimentError, match=r"--cpus-per-trial 2.0 differs"):
        resume_options(saved, RunOptions(resume=True, cpus_per_trial=2.0), given={"cpus_per_trial"})


def test_precision_is_resolved_once_per_trial():
    auto = TrainConfig(precision="auto", device="auto")
    first = resolve_once(auto, None, has_gpu=False)
    assert (first.device, first.precision) == ("cpu", "fp32")
    # a restart of a trial that began in bf16 (on a GPU node) keeps bf16 even where there is no GPU
    again = resolve_once(auto, "bf16", has_gpu=False)
    assert (again.device, again.precision) == ("cpu", "bf16")
    assert resolve_once(TrainConfig(precision="fp32"), "bf16", has_gpu=False).precision == "fp32"  # explicit stays


def _trial(trial_id, lr, epochs, val_acc, val_loss, status_epochs=None, early_val_loss=3.0, **extra):
    """One trial through the runner's recording path (trial_frame): `epochs` epochs, the given final metrics."""
    config = TrainConfig(epochs=epochs, lr=lr).to_dict()
    records = [{"epoch": e, "lr": lr, "train_loss": 2.0, "train_acc": 0.5,
                "val_loss": val_loss if e == epochs else early_val_loss,
                "val_acc": val_acc if e == epochs else val_acc / 2, "diverged": False, "epoch_s": 10.0,
                **({"test_loss": val_loss, "test_acc": val_acc} if e == epochs else {}), **extra}
               for e in range(1, (status_epochs or epochs) + 1)]
    return trial_frame("lr", trial_id, config, records, errored=False, ended=True, resources={"cpu": 1, "gpu": 0})


def test_an_exploded_but_finite_loss_is_diverged_and_never_wins(tmp_path):
    import analysis
    from tune_cifar.ranking import EXPLODED_LOSS
    from tune_cifar.results import final_table, winner

    # the 1-epoch run the issue saw: lr 0.5 "won" with val_loss 31,082 nats (chance is ln(100) = 4.6)
    # lr 0.1 is just under the bound; lr 0.2 spiked to 10,000 at epoch 1 of 2 and recovered: neither diverged
    df = combine([_trial("a", 0.05, 1, 0.40, 2.5), _trial("b", 0.5, 1, 0.45, 31_082.0),
                  _trial("c", 0.1, 1, 0.30, EXPLODED_LOSS * 0.99), _trial("d", 0.2, 2, 0.20, 2.0, early_val_loss=1e4)])
    assert df.groupby("trial_id")["status"].first().to_dict() == {"a": "finished", "b": "diverged", "c": "finished",
                                                                   "d": "finished"}
    table = final_table(df, ["lr"], "val_acc", "max")
    assert table["lr"].tolist() == [0.05, 0.1, 0.2, 0.5] and table.set_index("lr")["diverged"].to_dict() == \
        {0.05: False, 0.1: False, 0.2: False, 0.5: True}
    assert winner(df, ["lr"], "val_acc", "max") == {"lr": 0.05}

    # results written before the rule (status "finished") are read by it too, through analysis.load
    (tmp_path / "lr").mkdir()
    df.assign(status="finished", diverged=False).to_parquet(tmp_path / "lr" / "results.parquet")
    loaded = analysis.load(tmp_path / "lr")
    s = analysis.summary(loaded)
    assert analysis.ranked(s, keys=["config/lr"])["config/lr"].tolist() == [0.05, 0.1, 0.2, 0.5]
    assert s.set_index("config/lr").loc[0.5, ["diverged", "n_diverged"]].tolist() == [True, 1]
    assert loaded.groupby("trial_id")["status"].first()["b"] == "diverged"


def test_the_printed_table_shows_a_stopped_trial_where_the_scheduler_stopped_it():
    from tune_cifar.results import final_table, format_table, winner

    # ASHA let lr 0.05 run its 4 epochs and cut lr 0.5 and 0.01 after epoch 1 (an epoch's val_acc is half
    # the final one before the last epoch, so lr 0.5 was at 0.45 there)
    df = combine([_trial("a", 0.05, 4, 0.40, 2.5), _trial("b", 0.5, 4, 0.90, 2.0, status_epochs=1),
                  _trial("c", 0.01, 4, 0.10, 4.0, status_epochs=1)])
    assert df.groupby("trial_id")["status"].first().to_dict() == {"a": "finished", "b": "stopped_early",
                                                                   "c": "stopped_early"}
    table = final_table(df, ["lr"], "val_acc", "max").set_index("lr")
    # what ASHA saw at epoch 1 (val_acc is half the final value there), not NaN
    assert table.loc[0.5, ["seeds", "trials", "epochs"]].tolist() == [0, 1, 1]
    assert table.loc[0.5, "val_acc"] == pytest.approx(0.45) and table.loc[0.01, "val_acc"] == pytest.approx(0.05)
    assert table.loc[0.5, "status"] == "stopped early at epoch 1 (not ranked)"
    assert table.loc[0.05, "status"] == "finished"
    # still out of the ranking: 0.45 at epoch 1 is not a final-epoch score, the finished 0.40 wins
    assert table["winner"].to_dict() == {0.05: "*", 0.5: "", 0.01: ""} and table.index.tolist()[0] == 0.05
    assert winner(df, ["lr"], "val_acc", "max") == {"lr": 0.05}
    printed = format_table(final_table(df, ["lr"], "val_acc", "max"))
    stopped = [line for line in printed.splitlines() if "stopped early at epoch 1" in line]
    assert len(stopped) == 2 and any("0.4500" in line for line in stopped)  # test metrics exist at the last epoch only


def test_repeater_seeds_are_the_same_through_the_parquet_and_through_the_trial_folders(tmp_path):
    """Optuna/HyperOpt with --seeds N: Tune's Repeater puts each copy's seed in `__trial_index__`."""
    from types import SimpleNamespace

    import pandas as pd

    import analysis
    from tune_cifar.experiment import results_frame
    from tune_cifar.studies import Study

    folder = tmp_path / "lr"
    folder.mkdir()
    base = TrainConfig(epochs=2).to_dict()
    (folder / "study.json").write_text(json.dumps({"study": "lr", "space": {"lr": "loguniform(0.01, 0.1)"},
                                                   "base": base, "seeds": 2, "metric": "val_acc", "mode": "max"}))
    grid = []
    for n, index in enumerate([0, 1, 0, 1]):  # two sampled configurations, each with copies 0 and 1
        params = {**base, "lr": 0.02 * (1 + n // 2), "__trial_index__": index}
        trial = folder / f"train_trial_{n:05d}"
        trial.mkdir()
        (trial / "params.json").write_text(json.dumps(params))
        lines = [json.dumps({"epoch": e, "val_acc": 0.1 * e + 0.01 * n, "training_iteration": e,
                             "trial_id": f"t{n}"}) for e in (1, 2)]
        (trial / "result.json").write_text("\n".join(lines) + "\n")
        resolved = {**params, "seed": index}  # the trainable records the seed it trained with
        del resolved["__trial_index__"]
        (trial / "run_info.json").write_text(json.dumps({"trial_id": f"t{n}", "config": resolved}))
        grid.append(SimpleNamespace(metrics={"trial_id": f"t{n}"}, path=str(trial), config=params, error=None))
    by_folders = analysis.load(folder)
    df = results_frame(grid, Study("lr", "lr sampled", space={"lr": None}), {"cpu": 1.0, "gpu": 0.0})
    df.to_parquet(folder / "results.parquet", index=False)
    by_parquet = analysis.load(folder)
    seeds = lambda d: d.groupby("trial_id")["seed"].first().astype(int).to_dict()  # noqa: E731
    assert seeds(by_folders) == {"t0": 0, "t1": 1, "t2": 0, "t3": 1}
    assert seeds(by_parquet) == seeds(by_folders)
    assert set(pd.read_parquet(folder / "results.parquet")["config/seed"]) == {0, 1}


def test_score_configurations_judges_every_trials_final_row_without_trial_ids():
    """One row per trial (its final state, no trial_id column): an lr 0.5 trial that exploded at its only
    epoch beside a 3-epoch trial is diverged and ranks below it, whatever its accuracy."""
    import pandas as pd

    from tune_cifar.ranking import rank, score_configurations

    trials = pd.DataFrame({"lr": [0.05, 0.5, 0.2], "seed": [0, 0, 0], "status": ["finished"] * 3,
                           "epoch": [3, 1, 3], "val_acc": [0.40, 0.45, 0.30],
                           "train_loss": [2.0, 3.0, float("inf")], "val_loss": [2.5, 31_082.0, 2.6]})
    scored = score_configurations(trials, ["lr"], "val_acc")
    assert scored.set_index("lr")["diverged"].to_dict() == {0.05: False, 0.5: True, 0.2: True}
    assert rank(scored, ["lr"], "max")["lr"].tolist() == [0.05, 0.5, 0.2]
    # the trainer's own flag on a final row counts too
    flagged = score_configurations(trials.assign(diverged=[True, False, False]), ["lr"], "val_acc")
    assert flagged.set_index("lr")["diverged"].to_dict() == {0.05: True, 0.5: True, 0.2: True}

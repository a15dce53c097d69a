import sys

import pandas as pd
import pytest

import search_spaces
from tune_cifar.experiment import RunOptions, param_space, search_plan
from tune_cifar.results import final_table, winner
from tune_cifar.studies import StudyError, available_studies, load_study, study_order


def test_the_reports_four_studies_and_the_chain():
    assert {"lr", "lrs", "wd", "mixup", "all"} <= set(available_studies())
    lr, lrs, wd, mixup = (load_study(n) for n in ("lr", "lrs", "wd", "mixup"))
    assert lr.space == {"lr": [0.01, 0.05, 0.5]}
    assert (lr.base["schedule"], lr.base["weight_decay"], lr.base["mixup_alpha"], lr.base["epochs"]) == ("constant", 0, 0, 15)
    assert lrs.space == {"schedule": ["cosine", "constant"]} and lrs.base["lr"] == 0.05 and lrs.base["epochs"] == 300
    assert wd.space == {"weight_decay": [5e-4, 1e-4]} and wd.base["schedule"] == "cosine"
    assert mixup.space == {"mixup_alpha": [0.2, 0.0]} and mixup.base["weight_decay"] == 5e-4
    assert all(s.metric == "val_acc" and s.mode == "max" for s in (lr, lrs, wd, mixup))
    assert load_study("all").chain == ("lr", "lrs", "wd", "mixup")


def test_unknown_study_lists_the_available_ones():
    with pytest.raises(StudyError, match="unknown study 'lrx'; available: ") as err:
        load_study("lrx")
    assert str(err.value).split("available: ")[1].split(", ") == available_studies()
    assert {"all", "lr", "lrs", "wd", "mixup", "joint"} <= set(available_studies())


def test_adding_a_study_is_adding_a_file(tmp_path, monkeypatch):
    (tmp_path / "momentum.py").write_text(
        'DESCRIPTION = "momentum"\nBASE = dict(epochs=3)\nSPACE = {"momentum": [0.8, 0.95]}\n')
    (tmp_path / "broken.py").write_text('DESCRIPTION = "broken"\nSPACE = {"lr": [0.1, -1]}\n')
    monkeypatch.setattr(search_spaces, "__path__", [*search_spaces.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "search_spaces.momentum", raising=False)
    study = load_study("momentum")
    assert [c.momentum for c in study.configs()] == [0.8, 0.95]
    assert all(c.epochs == 3 for c in study.configs())
    with pytest.raises(StudyError, match=r"broken.py: invalid lr=-1.0"):
        load_study("broken")


def test_carried_values_replace_the_base_but_not_the_space():
    wd = load_study("wd")
    configs = wd.configs(carried={"lr": 0.01, "schedule": "constant", "weight_decay": 0.0})
    assert {(c.lr, c.schedule) for c in configs} == {(0.01, "constant")}
    assert [c.weight_decay for c in configs] == [5e-4, 1e-4]


def test_param_space_grids_the_space_and_seeds():
    study, opts = load_study("lr"), RunOptions(seeds=3, epochs=2, data_dir="/d")
    space = param_space(study, opts, {}, search_plan(study, opts))
    assert space["lr"] == {"grid_search": [0.01, 0.05, 0.5]}
    assert space["seed"] == {"grid_search": [0, 1, 2]}
    assert space["epochs"] == 2 and space["data_dir"] == "/d" and space["schedule"] == "constant"


def _final_rows(rows):
    return pd.DataFrame([
        {"trial_id": t, "seed": s, "epoch": e, "status": st, "config/lr": lr, "diverged": st == "diverged",
         "val_acc": v, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "test_loss": 1.0, "test_acc": 0.5}
        for t, s, e, st, lr, v in rows])


def test_winner_is_best_mean_over_seeds_and_never_diverged():
    df = _final_rows([("a", 0, 2, "finished", 0.01, 0.40), ("b", 1, 2, "finished", 0.01, 0.44),
                      ("c", 0, 2, "finished", 0.05, 0.45), ("d", 1, 2, "finished", 0.05, 0.41),
                      ("e", 0, 1, "diverged", 0.5, 0.90)])
    table = final_table(df, ["lr"], "val_acc", "max")
    assert table.set_index("lr")["seeds"].to_dict() == {0.01: 2, 0.05: 2, 0.5: 1}
    assert table["lr"].tolist() == [0.05, 0.01, 0.5]  # best first; the diverged one last whatever its mean
    assert winner(df, ["lr"], "val_acc", "max") == {"lr": 0.05}  # mean 0.43 beats 0.42


def test_crashed_and_half_finished_seeds_do_not_count():
    # lr=0.01: seed 0 finished at 0.40, seed 1 crashed at epoch 1 with a lucky 0.90; lr=0.05: one finished
    # seed at 0.45 and one interrupted half-way at 0.05. Counting the crashed or interrupted seeds would
    # make lr=0.01 win (0.65 vs 0.25); the rule counts finished ones only: 0.40 vs 0.45.
    df = _final_rows([("a", 0, 4, "finished", 0.01, 0.40), ("b", 1, 1, "error", 0.01, 0.90),
                      ("c", 0, 4, "finished", 0.05, 0.45), ("d", 1, 2, "incomplete", 0.05, 0.05)])
    table = final_table(df, ["lr"], "val_acc", "max").set_index("lr")
    assert table.loc[0.01, "val_acc"] == 0.40 and table.loc[0.05, "val_acc"] == 0.45
    assert table[["seeds", "trials"]].to_dict("list") == {"seeds": [1, 1], "trials": [2, 2]}
    assert winner(df, ["lr"], "val_acc", "max") == {"lr": 0.05}


def test_the_runner_and_the_analysis_pick_the_same_winner():
    import analysis
    from test_analysis_fixtures import BASE

    rows = [("a", 0, 4, "finished", 0.01, 0.40), ("b", 1, 1, "error", 0.01, 0.90),
            ("c", 0, 4, "finished", 0.05, 0.40), ("d", 1, 2, "incomplete", 0.05, 0.05),
            ("e", 0, 2, "stopped_early", 0.1, 0.99), ("f", 0, 4, "finished", 0.2, 0.39)]
    df = _final_rows(rows).assign(**{f"config/{k}": v for k, v in BASE.items() if k not in ("lr", "epochs")},
                                  **{"config/epochs": 4, "lr": 0.01, "images_per_s": 1.0, "epoch_s": 1.0,
                                     "timestamp": 0.0, "resources/cpu": 1.0, "resources/gpu": 0.0})
    df["config/lr"] = [r[4] for r in rows]
    df = df.assign(experiment="lr", study="lr")
    s = analysis.summary(df)
    best = analysis.ranked(s, "val_acc", "max", keys=["config/lr"]).iloc[0]
    # 0.01 and 0.05 tie at 0.40 on their finished seeds: the smaller lr wins, in both places
    assert best["config/lr"] == 0.01 == winner(df, ["lr"], "val_acc", "max")["lr"]
    # the early-stopped 0.99 is not ranked by either
    assert s.set_index("config/lr").loc[0.1, "n_counted"] == 0
    assert final_table(df, ["lr"], "val_acc", "max").set_index("lr").loc[0.1, "winner"] == ""


def test_study_sizes_come_from_the_study_modules():
    chain = load_study("all")
    parts = [load_study(name) for name in chain.chain]
    assert chain.trial_epochs() == sum(len(next(iter(p.space.values()))) * p.base["epochs"] for p in parts) == 1845
    assert chain.num_trials(seeds=3) == 3 * 9
    assert load_study("lr").trial_epochs(seeds=2, epochs=4) == 3 * 2 * 4
    assert study_order()[:5] == ["lr", "lrs", "wd", "mixup", "all"]


ISSUE_12_STUDIES = {
    "schedules": ("schedule", ["cosine", "step", "warmup_cosine", "onecycle"]),
    "smoothing": ("label_smoothing", [0.0, 0.05, 0.1, 0.2]),
    "mixup_alpha": ("mixup_alpha", [0.1, 0.2, 0.4, 1.0]),
    "cutmix": ("mix", ["none", "cutmix", "mixup"]),
    "dropout": ("dropout", [0.0, 0.2, 0.5]),
    "depth": ("drop_path", [0.0, 0.1, 0.2]),
    "models": ("model", ["mobilenet", "mobilenetv2", "resnet18"]),
}


@pytest.mark.parametrize("name", sorted(ISSUE_12_STUDIES))
def test_issue_12_studies_load_and_start_from_the_reports_best(name):
    import importlib

    field, values = ISSUE_12_STUDIES[name]
    study = load_study(name)
    assert study.space == {field: values} and study.description and study.metric == "val_acc"
    assert (importlib.import_module(f"search_spaces.{name}").__doc__ or "").strip()
    configs = study.configs()
    assert [getattr(c, field) for c in configs] == values
    for c in configs:
        assert (c.lr, c.weight_decay, c.epochs) == (0.05, 5e-4, 300)
        assert c.schedule == "cosine" or field == "schedule"
        assert c.model == ("resnet18" if name == "depth" else c.model if field == "model" else "mobilenet")


def test_the_cutmix_study_is_off_cutmix_and_mixup():
    off, cut, mix = load_study("cutmix").configs()
    assert (off.mix, cut.mix, mix.mix) == ("none", "cutmix", "mixup")
    assert (mix.mixup_alpha, cut.cutmix_alpha, cut.cutmix_prob) == (0.2, 1.0, 0.5)
    assert "_report_best" not in available_studies()


def test_equal_scores_break_by_the_lower_validation_loss_before_the_field_order():
    import analysis
    from test_analysis_fixtures import BASE

    # weight decay 5e-4 and 1e-4 tie at 0.9267 val acc; 5e-4 has the lower validation loss
    rows = [("a", 0, 4, "finished", 5e-4, 0.9267), ("b", 0, 4, "finished", 1e-4, 0.9267)]
    df = _final_rows(rows).rename(columns={"config/lr": "config/weight_decay"})
    df["val_loss"] = [0.30, 0.35]
    assert winner(df, ["weight_decay"], "val_acc", "max") == {"weight_decay": 5e-4}  # field order: 1e-4
    df = df.assign(**{f"config/{k}": v for k, v in BASE.items() if k not in ("weight_decay", "epochs")},
                   **{"config/epochs": 4, "lr": 0.01, "images_per_s": 1.0, "epoch_s": 1.0, "timestamp": 0.0,
                      "resources/cpu": 1.0, "resources/gpu": 0.0}).assign(experiment="wd", study="wd")
    s = analysis.summary(df)
    assert analysis.ranked(s, keys=["config/weight_decay"]).iloc[0]["config/weight_decay"] == 5e-4
    verdict = analysis.compare_winner(analysis.trials(df), s, keys=["config/weight_decay"]).verdict
    assert verdict.startswith("tied") and "lower mean val_loss (0.3000 vs 0.3500)" in verdict
    df["val_loss"] = 0.30  # a tie on both: the field order decides, the smaller value first
    assert winner(df, ["weight_decay"], "val_acc", "max") == {"weight_decay": 1e-4}


def _fake_chain(monkeypatch, tmp_path, prefer_last: bool):
    """Run the `all` chain with every study's trials made by hand: all tie on val acc, and the first (or the
    last) value of each study's list has the lowest validation loss."""
    from tune_cifar import experiment

    def fake_run_study(study, data, opts, storage, carried=None, chain=None, given=frozenset(), earlier=None):
        (key, values), = study.space.items()
        rows = [(f"{study.name}{i}", 0, 2, "finished", v, 0.5) for i, v in enumerate(values)]
        df = _final_rows(rows).rename(columns={"config/lr": f"config/{key}"})
        df["val_loss"] = [1.0 + 0.1 * (len(values) - 1 - i if prefer_last else i) for i in range(len(values))]
        return df

    monkeypatch.setattr(experiment, "run_study", fake_run_study)
    experiment.run(load_study("all"), None, RunOptions(storage_path=str(tmp_path)))
    import json

    return json.loads((tmp_path / "all" / "chain.json").read_text())


def test_a_chained_study_says_what_it_carried_and_ties_go_to_the_lower_loss(monkeypatch, tmp_path, capsys):
    from tune_cifar.experiment import study_record

    chain = _fake_chain(monkeypatch, tmp_path / "first", prefer_last=False)
    # by field order these would be schedule=constant and weight_decay=1e-4
    assert chain["winners"] == {"lr": {"lr": 0.01}, "lrs": {"schedule": "cosine"}, "wd": {"weight_decay": 5e-4},
                                "mixup": {"mixup_alpha": 0.2}}
    chain = _fake_chain(monkeypatch, tmp_path / "last", prefer_last=True)
    carried = chain["carried"]["mixup"]
    assert carried == {"lr": 0.5, "schedule": "constant", "weight_decay": 1e-4}
    said = chain["descriptions"]["mixup"]
    assert "lr=0.5, schedule=constant, weight_decay=0.0001" in said
    assert "instead of the study's own lr=0.05, schedule=cosine, weight_decay=0.0005" in said
    assert "at lr 0.05, cosine schedule, weight decay 5e-4" not in said  # the module's own text is not claimed
    out = capsys.readouterr().out
    assert f"== mixup: {said}" in out
    mixup = load_study("mixup")
    record = study_record(mixup, RunOptions(), carried, {"cpu": 1, "gpu": 0}, "all", mixup.plan)
    assert record["description"] == said and record["carried"] == carried  # the report's description line
    assert load_study("mixup").described({}) == mixup.description  # run alone: its own words


def test_study_json_records_the_data_the_trials_train_on():
    """study.json carries run_info.json's `data` entry (data_summary), so a parquet + study.json copy knows it."""
    import numpy as np

    from tune_cifar.data import CifarData, data_summary
    from tune_cifar.experiment import study_record

    x = np.zeros((4, 3, 32, 32), np.uint8)
    data = CifarData(x, np.array([0, 1, 2, 2]), x[:2], np.array([0, 1]), ["a", "b", "c"], generated=True)
    lr = load_study("lr")
    record = study_record(lr, RunOptions(), {}, {"cpu": 1, "gpu": 0}, None, lr.plan, data)
    assert record["data"] == data_summary(data) == {"generated": True, "train_images": 4, "test_images": 2,
                                                    "classes": 3}

"""analysis.views and their figures (issue 22): history, parallel coordinates, importance, the 2-D view,
on hand-built trials whose answers are known, and where the report shows them."""

import json
import math

import numpy as np
import pandas as pd
import pytest

import analysis
from analysis import figures, views
from analysis.stats import trials
from test_analysis_fixtures import BASE

SAMPLED = {"lr": "loguniform(0.001, 0.5)", "weight_decay": "loguniform(1e-05, 0.001)", "schedule": ["constant", "cosine"]}


def searched(n: int = 40, *, drive: str = "lr", seed: int = 0, epochs: int = 2) -> pd.DataFrame:
    """load()'s frame of a sampled study of `n` trials; only `drive` moves the final val_acc (lr: a peak at
    lr 0.05; schedule: cosine +0.2), plus 0.002 of noise. Trials end in a shuffled order (`timestamp`)."""
    rng = np.random.default_rng(seed)
    ends = rng.permutation(n)
    rows = []
    for i in range(n):
        lr, wd = 10 ** rng.uniform(-3, math.log10(0.5)), 10 ** rng.uniform(-5, -3)
        schedule = ["constant", "cosine"][int(rng.integers(2))]
        acc = (0.8 - 0.15 * (math.log10(lr) - math.log10(0.05)) ** 2 if drive == "lr"
               else 0.4 + 0.2 * (schedule == "cosine")) + rng.normal(0, 0.002)
        config = {**BASE, "lr": lr, "weight_decay": wd, "schedule": schedule, "epochs": epochs}
        for epoch in range(1, epochs + 1):
            last = epoch == epochs
            rows.append({"experiment": "search", "study": "search", "trial_id": f"t{i:03d}", "seed": 0,
                         "status": "finished", **{f"config/{k}": v for k, v in config.items()}, "epoch": epoch,
                         "lr": lr, "train_loss": 1.0, "train_acc": acc, "val_loss": 2.0 - acc,
                         "val_acc": acc if last else acc / 2, "diverged": False,
                         "test_loss": 2.1 - acc if last else math.nan, "test_acc": acc - 0.01 if last else math.nan,
                         "images_per_s": 1e3, "epoch_s": 10.0, "timestamp": 1e9 + 100 * ends[i] + epoch})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("drive, first", [("lr", "lr"), ("schedule", "schedule")])
def test_importance_ranks_the_field_that_drives_val_acc_first(drive, first):
    t = trials(searched(drive=drive))
    fields = views.varied_fields(t, SAMPLED)
    assert fields == ["lr", "weight_decay", "schedule"]
    imp = views.importance(t, fields, "val_acc", "max", SAMPLED)
    assert imp["field"].iloc[0] == first and imp["importance"].iloc[0] > 0.6, imp
    assert imp["importance"].sum() == pytest.approx(1.0) and (imp["n_trials"] == 40).all()
    # minimising the loss asks the same question: the same field comes first
    low = views.importance(t, fields, "val_loss", "min", SAMPLED)
    assert low["field"].iloc[0] == first, low


def test_importance_counts_only_counted_trials_and_warns_below_its_minimum():
    t = trials(searched(n=12))
    t.loc[t.index[:4], "status"] = "stopped_early"  # ended before their final epoch: not results
    imp = views.importance(t, ["lr", "weight_decay"], "val_acc", "max", SAMPLED)
    assert (imp["n_trials"] == 8).all()
    note = views.importance_note(imp)
    assert "from 8 counted trial(s)" in note and "Warning" in note and "fewer than 20" in note
    assert "Warning" not in views.importance_note(views.importance(trials(searched()), ["lr"], "val_acc"))
    assert views.importance(t.iloc[:2], ["lr"], "val_acc").empty  # too few to say anything


def test_history_follows_end_order_and_a_stopped_trial_is_never_the_best():
    t = pd.DataFrame({"trial_id": ["a", "b", "c", "d"], "configuration": list("abcd"),
                      "status": ["finished", "stopped_early", "finished", "diverged"],
                      "val_acc": [0.5, 0.9, 0.6, 0.01], "end_time": [30.0, 10.0, 20.0, 40.0]})
    h = views.history(t, "val_acc", "max")
    assert list(h["trial_id"]) == ["b", "c", "a", "d"]
    assert list(h["counted"]) == [False, True, True, True]
    assert h["best_so_far"].tolist()[1:] == [0.6, 0.6, 0.6] and math.isnan(h["best_so_far"].iloc[0])
    assert views.history(t.assign(val_loss=[3.0, 1.0, 2.0, 9.0]), "val_loss", "min")["best_so_far"].tolist()[1:] \
        == [2.0, 2.0, 2.0]


def test_history_of_loaded_trials_is_in_the_order_their_last_epochs_were_reported():
    df = searched(n=6)
    h = views.history(trials(df), "val_acc", "max")
    ends = df.groupby("trial_id")["timestamp"].max().sort_values()
    assert list(h["trial_id"]) == list(ends.index)
    fig = figures.optimisation_history(df)  # load()'s frame goes straight in
    ax = fig.axes[0]
    assert ax.lines[0].get_ydata().tolist() == pytest.approx(h["best_so_far"].tolist())


def test_parallel_coordinates_put_each_value_on_its_axis():
    t = pd.DataFrame({"trial_id": ["a", "b", "c"], "status": "finished", "val_acc": [0.2, 0.8, 0.5],
                      "config/lr": [0.001, 0.01, 0.1], "config/dropout": [0.0, 0.2, 0.5],
                      "config/schedule": ["step", "constant", "cosine"], "epochs_done": 2})
    p = views.parallel(t, ["lr", "dropout", "schedule"], "val_acc")
    assert p["lr_axis"].tolist() == pytest.approx([0, 0.5, 1])  # lr spans 100x: log axis
    assert p["dropout_axis"].tolist() == pytest.approx([0, 0.4, 1])  # 0..0.5, linear
    assert p["schedule_axis"].tolist() == [1.0, 0.0, 0.5]  # constant, cosine, step
    fig = figures.parallel_coordinates(t, ["lr", "dropout", "schedule"])
    lines = fig.axes[0].get_lines()
    traces = [ln for ln in lines if len(ln.get_xdata()) == 4]
    assert len(traces) == 3
    assert traces[-1].get_ydata().tolist() == pytest.approx([0.5, 0.4, 0.0, 1.0])  # the best (b) on top
    assert [x.get_text() for x in fig.axes[0].get_xticklabels()] == ["lr (log)", "dropout", "schedule", "val_acc"]


def test_views_apply_to_a_sampled_space_or_several_fields_never_to_a_one_field_grid():
    t = trials(searched(n=5))
    assert views.applies(t, SAMPLED)
    assert views.applies(t, {"lr": [0.01, 0.05], "weight_decay": [1e-4, 5e-4]})  # several varied
    grid = t.assign(**{"config/weight_decay": 5e-4, "config/schedule": "cosine"})
    assert not views.applies(grid, {"lr": [0.01, 0.05, 0.5]})
    assert views.applies(grid, {"lr": "loguniform(0.001, 0.5)"})  # sampled, even alone


def test_field_scatter_draws_every_trial_on_log_axes_where_the_space_is_log():
    t = trials(searched(n=15)).assign(**{"config/schedule": "cosine"})
    fig = figures.field_scatter(t, space=SAMPLED)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("lr", "weight_decay")
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert len(ax.collections[0].get_offsets()) == 15
    one = t.assign(**{"config/weight_decay": 5e-4})
    with pytest.raises(analysis.AnalysisError, match="these vary: lr"):
        figures.field_scatter(one)


def _write_searched(root, df: pd.DataFrame, space: dict) -> None:
    folder = root / "search"
    folder.mkdir(parents=True)
    (folder / "study.json").write_text(json.dumps({
        "study": "search", "description": "hand-built sampled study", "metric": "val_acc", "mode": "max",
        "space": space, "base": BASE, "carried": {}, "seeds": 1, "resources": {"cpu": 1.0, "gpu": 0.0},
        "chain": None}))
    df.drop(columns=["experiment"]).assign(**{"resources/cpu": 1.0, "resources/gpu": 0.0}).to_parquet(
        folder / "results.parquet")


def test_the_report_shows_the_views_with_their_data_for_a_search_and_none_for_a_grid(tmp_path):
    from analysis.report import build
    from test_analysis_fixtures import write_study

    _write_searched(tmp_path, searched(n=25), SAMPLED)
    write_study(tmp_path, "lr", {"lr": [0.01, 0.05, 0.5]}, seeds=(0, 1), parquet=True)
    report = build(tmp_path, log=lambda *_: None)
    made = sorted(stem.removeprefix("figures/") for stem in report.figures if "_" in stem)
    for name in ("history", "parallel", "importance"):
        assert f"search_{name}" in made
        data = pd.read_csv(__import__("io").StringIO(report.files[f"figures/search_{name}.csv"]))
        assert len(data) == (3 if name == "importance" else 25)
    assert "search_scatter" not in made  # three varied fields: no 2-D view
    assert not any(stem.startswith("lr_") and stem.split("_")[-1] in ("history", "parallel", "importance")
                   for stem in made)
    text = "\n".join(getattr(b, "text", "") for b in report.blocks)
    assert "from 25 counted trial(s): lr" in text and "Warning" not in text.split("from 25 counted")[1][:300]


def test_the_best_so_far_carries_past_trials_that_are_not_results():
    t = pd.DataFrame({"trial_id": list("abcdef"), "status": ["finished", "stopped_early", "error", "finished",
                                                          "stopped_early", "finished"],
                      "val_acc": [0.5, 0.9, 0.8, 0.6, 0.95, 0.55], "end_time": range(6)})
    assert views.history(t, "val_acc", "max")["best_so_far"].tolist() == [0.5, 0.5, 0.5, 0.6, 0.6, 0.6]
    t.loc[3, "val_acc"] = math.inf  # a non-finite value is no result: not shown, never the best
    h = views.history(t, "val_acc", "max")
    assert "d" not in set(h["trial_id"]) and h["best_so_far"].max() == 0.55
    assert list(views.parallel(t.assign(**{"config/lr": 0.01}), ["lr"], "val_acc")["trial_id"]) == ["a", "f"]


def test_a_missing_value_is_its_own_category_and_a_numeric_choice_gets_a_log_axis():
    t = trials(searched(n=12))
    t["config/nesterov"] = [True, False, None] * 4  # recorded before the field existed, on some trials
    t.loc[t.index[0], "config/weight_decay"] = math.nan
    p = views.parallel(t, ["nesterov", "weight_decay"], "val_acc", SAMPLED)
    assert sorted(set(p["nesterov_axis"])) == [0.0, 0.5, 1.0]  # False, None, True
    assert p["weight_decay_axis"].isna().tolist() == [True] + [False] * 11  # a gap, the others on their axis
    imp = views.importance(t, ["lr", "nesterov", "weight_decay"], "val_acc", "max", SAMPLED)
    assert imp["field"].iloc[0] == "lr" and len(imp) == 3 and (imp["n_trials"] == 11).all()  # one lacks a value
    lr = pd.Series([0.001, 0.01, 0.1, 1.0])
    assert views.log_scaled(lr, "choice(0.001, 0.01, 0.1, 1)") and not views.log_scaled(lr, "uniform(0.001, 1)")


def test_parallel_coordinates_draw_the_best_on_top_when_lower_is_better():
    t = pd.DataFrame({"trial_id": ["a", "b", "c"], "status": "finished", "val_loss": [2.0, 0.5, 1.0],
                      "config/lr": [0.001, 0.01, 0.1], "config/dropout": [0.0, 0.2, 0.5], "epochs_done": 2})
    fig = figures.parallel_coordinates(t, ["lr", "dropout"], "val_loss", mode="min")
    traces = [ln for ln in fig.axes[0].get_lines() if len(ln.get_xdata()) == 3]
    assert traces[-1].get_ydata().tolist()[:2] == pytest.approx([0.5, 0.4])  # b, the lowest loss


def test_importance_says_why_it_is_missing():
    t = trials(searched(n=6)).assign(**{"config/lr": 0.05, "config/schedule": "cosine"})
    t.loc[t.index[:3], "status"] = "stopped_early"
    t.loc[t.index[3:], "config/weight_decay"] = 1e-4  # varies only among the stopped trials
    note = views.importance_note(views.importance(t, ["weight_decay"], "val_acc"))
    assert "3 counted trial(s)" in note and "no field varies among the counted trials" in note


def test_a_sampled_study_with_no_result_still_reports_and_spells_its_space(tmp_path):
    from analysis.report import build

    df = searched(n=4)
    df["val_acc"] = math.nan
    _write_searched(tmp_path, df, SAMPLED)
    report = build(tmp_path, log=lambda *_: None)
    assert not [stem for stem in report.figures if stem.split("_")[-1] in ("history", "parallel", "importance")]
    text = "\n".join(str(getattr(b, "text", getattr(b, "items", ""))) for b in report.blocks)
    assert "`lr` ~ loguniform(0.001, 0.5)" in text and "not estimated from 0 counted trial(s)" in text

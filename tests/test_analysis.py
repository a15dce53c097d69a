"""analysis: loading Tune's files and our parquet, per-seed statistics, the report's tables."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import analysis
from analysis.loading import CONFIG_FIELDS
from analysis.published import TABLES
from analysis.tables import study_tables, table_markdown
from test_analysis_fixtures import BASE, final_acc, write_root, write_study


def frame(finals: dict[str, list[float]], *, diverged: dict[str, list[bool]] | None = None, epochs: int = 2) -> pd.DataFrame:
    """A tidy frame by hand: configuration -> each seed's final val_acc (train/test follow from it)."""
    rows = []
    for ci, (config, values) in enumerate(finals.items()):
        for seed, acc in enumerate(values):
            for epoch in range(1, epochs + 1):
                last = epoch == epochs
                div = bool((diverged or {}).get(config, [False] * len(values))[seed]) and last
                rows.append({"experiment": "lr", "study": "lr", "configuration": config,
                             "trial_id": f"{config}-{seed}", "seed": seed, "status": "diverged" if bool((diverged or {}).get(config, [False] * len(values))[seed]) else "finished",
                             **{f"config/{k}": v for k, v in BASE.items()}, "config/lr": 0.01 * (ci + 1),
                             "config/epochs": epochs, "epoch": epoch, "lr": 0.01, "train_loss": 1.0,
                             "train_acc": acc + 0.1, "val_loss": 2.0, "val_acc": acc if last else acc / 2,
                             "diverged": div, "test_loss": 2.1 if last else math.nan,
                             "test_acc": acc - 0.01 if last else math.nan, "images_per_s": 1e3,
                             "epoch_s": 1800.0, "timestamp": 0.0, "resources/cpu": 2.0, "resources/gpu": 0.5})
    return pd.DataFrame(rows)


# --- loading -------------------------------------------------------------------------------------

def test_load_reads_tune_trial_folders_into_one_row_per_trial_and_epoch(tmp_path):
    write_study(tmp_path, "lr", {"lr": [0.01, 0.05, 0.5]}, seeds=(0, 1), epochs=4)
    df = analysis.load(tmp_path / "lr")
    assert len(df) == 3 * 2 * 4
    assert df.groupby("trial_id").size().eq(4).all()
    assert {f"config/{f}" for f in CONFIG_FIELDS} <= set(df.columns)
    assert {"study", "trial_id", "seed", "status", "epoch", "val_acc", "test_acc", "resources/gpu"} <= set(df.columns)
    assert set(df["experiment"]) == {"lr"} and set(df["seed"]) == {0, 1}
    assert sorted(df["configuration"].unique()) == ["lr=0.01", "lr=0.05", "lr=0.5"]
    last = df[(df["configuration"] == "lr=0.05") & (df["seed"] == 1) & (df["epoch"] == 4)].iloc[0]
    assert last["val_acc"] == pytest.approx(final_acc(1, 1))
    assert df.loc[df["epoch"] < 4, "test_acc"].isna().all()  # test metrics only on the last epoch


def test_parquet_is_preferred_and_agrees_with_the_trial_folders(tmp_path):
    folder = write_study(tmp_path, "wd", {"weight_decay": [0.0001, 0.0005]}, seeds=(0, 1), parquet=True)
    from_parquet = analysis.load(folder)
    (folder / "results.parquet").rename(tmp_path / "aside.parquet")
    from_folders = analysis.load(folder)
    cols = ["trial_id", "epoch", "seed", "configuration", "config/weight_decay", "val_acc", "train_loss", "test_acc"]
    pd.testing.assert_frame_equal(from_parquet[cols], from_folders[cols], check_dtype=False)
    marked = pd.read_parquet(tmp_path / "aside.parquet").assign(val_acc=0.123)
    marked.to_parquet(folder / "results.parquet")
    assert (analysis.load(folder)["val_acc"] == 0.123).all()


def test_a_results_root_yields_every_study_including_the_chained_ones(tmp_path):
    write_root(tmp_path, seeds=(0,))
    df = analysis.load(tmp_path)
    assert list(dict.fromkeys(df["experiment"])) == ["lr", "lrs", "wd", "mixup", "all/lr", "all/lrs"]
    assert set(df.loc[df["experiment"] == "all/lr", "study"]) == {"lr"}
    labels = set(df["configuration"])
    assert {"mixup_alpha=off", "mixup_alpha=0.2", "weight_decay=0.0005", "schedule=cosine"} <= labels
    assert set(analysis.study_metadata(tmp_path)) == set(df["experiment"])


@pytest.mark.parametrize("make", ["empty", "missing", "file", "trial"])
def test_a_path_that_is_not_an_experiment_is_one_clear_error(tmp_path, make):
    if make == "empty":
        path = tmp_path
    elif make == "missing":
        path = tmp_path / "nope"
    elif make == "file":
        path = tmp_path / "x.txt"
        path.write_text("hi")
    else:
        folder = write_study(tmp_path, "lr", {"lr": [0.05]})
        path = next(p for p in folder.iterdir() if p.is_dir())
    with pytest.raises(analysis.AnalysisError, match=str(path.name)) as err:
        analysis.load(path)
    if make == "trial":
        assert "pass its parent" in str(err.value)


def test_a_result_line_cut_short_and_a_repeated_epoch_are_handled(tmp_path):
    folder = write_study(tmp_path, "lr", {"lr": [0.05]}, epochs=3)
    trial = next(p for p in folder.iterdir() if p.is_dir())
    lines = (trial / "result.json").read_text().splitlines()
    redo = json.loads(lines[1]) | {"val_acc": 0.777}  # epoch 2 again after a restart from a checkpoint
    (trial / "result.json").write_text("\n".join(lines + [json.dumps(redo), '{"epoch": 3, "val_a']))
    df = analysis.load(folder)
    assert list(df["epoch"]) == [1, 2, 3]
    assert df.loc[df["epoch"] == 2, "val_acc"].item() == 0.777


# --- statistics ----------------------------------------------------------------------------------

def test_summary_mean_std_and_ci_match_scipy():
    values = [0.40, 0.42, 0.47]
    s = analysis.summary(frame({"lr=0.01": values, "lr=0.02": [0.5]}))
    row = s.set_index("configuration").loc["lr=0.01"]
    mean, sd = np.mean(values), np.std(values, ddof=1)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=sd / math.sqrt(len(values)))
    assert row["n_seeds"] == 3
    assert (row["val_acc_mean"], row["val_acc_std"]) == (pytest.approx(mean), pytest.approx(sd))
    assert (row["val_acc_ci_low"], row["val_acc_ci_high"]) == (pytest.approx(low), pytest.approx(high))
    # worked by hand: mean 0.43, sd 0.036056, t(0.975, 2) = 4.302653, half-width 0.089567
    assert row["val_acc_ci_high"] - mean == pytest.approx(0.089567, abs=1e-6)
    single = s.set_index("configuration").loc["lr=0.02"]
    assert single["val_acc_mean"] == 0.5 and math.isnan(single["val_acc_std"]) and math.isnan(single["val_acc_ci_low"])
    # 3 trials x 2 epochs x 1800 s x 0.5 GPU = 1.5 GPU-hours
    assert row["gpu_hours"] == pytest.approx(1.5) and row["wall_s"] == pytest.approx(3 * 2 * 1800)


def test_welch_matches_scipy_and_decides_beyond_or_within_noise():
    a, b = [0.61, 0.62, 0.63], [0.55, 0.56, 0.58]
    w = analysis.welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert (w.statistic, w.p_value, w.df) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue), pytest.approx(ref.df))
    assert w.diff_low < np.mean(a) - np.mean(b) < w.diff_high

    clear = frame({"lr=0.01": a, "lr=0.02": b})
    c = analysis.compare_winner(analysis.trials(clear), analysis.summary(clear))
    assert (c.winner, c.runner_up) == ("lr=0.01", "lr=0.02")
    assert c.margin == pytest.approx(np.mean(a) - np.mean(b))
    assert c.verdict.startswith("beyond seed noise") and "Welch" in c.verdict and f"{ref.pvalue:.3g}" in c.verdict

    noisy = frame({"lr=0.01": [0.60, 0.50, 0.70], "lr=0.02": [0.59, 0.52, 0.64]})
    c = analysis.compare_winner(analysis.trials(noisy), analysis.summary(noisy))
    assert c.verdict.startswith("within seed noise")


def test_one_seed_leaves_the_comparison_untested():
    one = frame({"lr=0.01": [0.6], "lr=0.02": [0.5]})
    c = analysis.compare_winner(analysis.trials(one), analysis.summary(one))
    assert c.winner == "lr=0.01" and c.test is None and c.verdict.startswith("untested")


def test_a_diverged_configuration_is_flagged_and_never_the_winner():
    df = frame({"lr=0.01": [0.9, 0.88], "lr=0.02": [0.5, 0.52]}, diverged={"lr=0.01": [False, True]})
    s = analysis.summary(df)
    bad = s.set_index("configuration").loc["lr=0.01"]
    assert bad["diverged"] and bad["n_diverged"] == 1 and not bad["incomplete"]
    assert analysis.ranked(s)["configuration"].tolist() == ["lr=0.02", "lr=0.01"]
    assert analysis.compare_winner(analysis.trials(df), s).winner == "lr=0.02"


def test_diverged_missing_epoch_and_crashed_trials_from_folders(tmp_path):
    folder = write_study(tmp_path, "lr", {"lr": [0.01, 0.05, 0.5]}, seeds=(0, 1), epochs=5,
                         diverge={(2, 0): 2}, drop={(0, 1): 3}, crash={(1, 1): 2})
    df = analysis.load(folder)
    t = analysis.trials(df).set_index(["configuration", "seed"])
    assert t.loc[("lr=0.5", 0), ["diverged", "diverged_epoch", "last_epoch", "finished", "incomplete"]].tolist() \
        == [True, 2, 2, True, False]
    assert t.loc[("lr=0.01", 1), "missing_epochs"] == "3" and t.loc[("lr=0.01", 1), "incomplete"]
    assert t.loc[("lr=0.05", 1), ["status", "finished", "incomplete"]].tolist() == ["error", False, True]
    assert math.isnan(t.loc[("lr=0.05", 1), "test_acc"])  # crashed before its test evaluation

    s = analysis.summary(df).set_index("configuration")
    assert s.loc["lr=0.05", ["n_seeds", "n_trials"]].tolist() == [1, 2]  # the crashed seed is left out
    assert s.loc["lr=0.05", "val_acc_mean"] == pytest.approx(final_acc(1, 0))
    assert "stopped at 2/5 (error)" in s.loc["lr=0.05", "missing"]
    assert "epoch(s) 3 missing" in s.loc["lr=0.01", "missing"]
    assert s.loc["lr=0.5", "diverged"] and not s.loc["lr=0.5", "incomplete"]


# --- tables --------------------------------------------------------------------------------------

def test_lr_tables_put_published_values_beside_ours(tmp_path):
    write_study(tmp_path, "lr", {"lr": [0.05, 0.5, 0.1]}, seeds=(0, 1), diverge={(1, 1): 3})
    s = analysis.summary(analysis.load(tmp_path / "lr"))
    t1, t2 = study_tables(s, "lr")
    assert (t1.name, t2.name) == ("Table 1", "Table 2")
    f1 = t1.frame.set_index("configuration")
    # the report's row order, then ours it does not have; lr=0.01 was not run here
    assert list(f1.index) == ["lr=0.01", "lr=0.05", "lr=0.5", "lr=0.1"]
    assert f1.loc["lr=0.05", "val_acc_report"] == 0.4465
    assert f1.loc["lr=0.05", "val_acc_diff"] == pytest.approx(f1.loc["lr=0.05", "val_acc"] - 0.4465)
    assert math.isnan(f1.loc["lr=0.1", "val_acc_report"]) and f1.loc["lr=0.1", "status"] == "ok"
    assert f1.loc["lr=0.01", "status"] == "not run" and f1.loc["lr=0.01", "seeds"] == 0
    assert f1.loc["lr=0.5", "status"].startswith("diverged (1/2")

    f2 = t2.frame.set_index("configuration")
    assert f2.loc["lr=0.05", "test_loss_report"] == 0.0032 and math.isnan(f2.loc["lr=0.05", "test_loss_diff"])
    md = table_markdown(t2)
    assert "not comparable" in md and "17 x (mean cross-entropy of the last 16 test images) / 10000" in md
    assert "0.0032 (a)" in md
    assert "trained for 4 epoch(s); the report trained for 15" in md


def test_every_published_table_has_its_rows_and_columns():
    numbers = [t.number for t in TABLES]
    assert numbers == list(range(1, 10))
    for t in TABLES:
        assert all(len(v) == len(t.metrics) for v in t.rows.values())
    assert dict(zip(TABLES[7].metrics, TABLES[7].rows[0.2]))["train_acc"] == 0.4841


def test_mixup_and_weight_decay_tables_match_rows_by_value(tmp_path):
    write_study(tmp_path, "mixup", {"mixup_alpha": [0.0, 0.2]})
    write_study(tmp_path, "wd", {"weight_decay": [5e-4, 1e-4]})
    s = analysis.summary(analysis.load(tmp_path))
    t8, t9 = study_tables(s[s["experiment"] == "mixup"], "mixup")
    assert t8.frame.set_index("configuration").loc["mixup_alpha=off", "train_acc_report"] == 0.9995
    assert "lambda-weighted" in table_markdown(t8)
    t5, t6, t7 = study_tables(s[s["experiment"] == "wd"], "wd")
    assert t7.frame.set_index("configuration").loc["weight_decay=0.0001", "test_acc_report"] == 0.6325
    assert list(t5.frame.columns[:3]) == ["configuration", "seeds", "status"]


def test_a_tie_is_called_a_tie_not_a_win():
    tie = frame({"lr=0.01": [0.01, 0.01], "lr=0.02": [0.01, 0.01]})  # what a 2-epoch smoke run gives
    c = analysis.compare_winner(analysis.trials(tie), analysis.summary(tie))
    assert c.margin == 0 and c.verdict.startswith("tied")


def test_summary_of_a_bare_frame_labels_configurations_by_what_varies():
    bare = frame({"a": [0.1, 0.2], "b": [0.3, 0.4]}).drop(columns=["configuration", "experiment"])
    s = analysis.summary(bare)
    assert s["configuration"].tolist() == ["lr=0.01", "lr=0.02"] and s["n_seeds"].tolist() == [2, 2]


# --- cost ----------------------------------------------------------------------------------------

def _fused_group_folder(root, epochs=2, epoch_s=1800.0, gpu=1.0):
    """One fused group of 4 lr values on a whole GPU, as train_group reports it: each epoch one result whose
    `members` holds every member still training, each with the group's epoch time. Member 3 diverges at
    epoch 1, so epoch 2 is shared by 3."""
    folder = root / "lr"
    folder.mkdir(parents=True)
    members = [{**BASE, "epochs": epochs, "lr": lr, "seed": 0} for lr in (0.01, 0.02, 0.05, 0.5)]
    (folder / "study.json").write_text(json.dumps({"study": "lr", "metric": "val_acc", "mode": "max", "fuse": True,
                                                   "space": {"lr": [m["lr"] for m in members]}, "base": BASE,
                                                   "resources": {"cpu": 1.0, "gpu": gpu}}))
    trial = folder / "train_group_00000_2024-01-01_00-00-00"
    trial.mkdir()
    (trial / "params.json").write_text(json.dumps({"members": members}))
    (trial / "run_info.json").write_text(json.dumps({"trial_id": "g0", "resources": {"cpu": 1.0, "gpu": gpu},
                                                     "members": [{"trial_id": f"g0-{k}", "config": m}
                                                                 for k, m in enumerate(members)]}))
    lines = []
    for epoch in range(1, epochs + 1):
        reporting = range(4) if epoch == 1 else range(3)
        group = {str(k): {"epoch": epoch, "lr": members[k]["lr"], "train_loss": 1.0, "train_acc": 0.5,
                          "val_loss": 2.0, "val_acc": 0.1 * (k + 1), "diverged": k == 3, "epoch_s": epoch_s,
                          "images_per_s": 1.0, "timestamp": 1000.0 * epoch,
                          **({"test_loss": 2.0, "test_acc": 0.1} if epoch == epochs or k == 3 else {})}
                 for k in reporting}
        lines.append({"epoch": epoch, "val_acc": 0.3, "val_loss": 2.0, "members": group, "training_iteration": epoch,
                      "trial_id": "g0"})
    (trial / "result.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder, trial, lines


def test_a_fused_group_costs_its_own_gpu_hours_split_among_its_members(tmp_path):
    from types import SimpleNamespace

    from analysis.report import build
    from tune_cifar.experiment import results_frame

    folder, trial, lines = _fused_group_folder(tmp_path)  # one GPU for 2 x 1800 s: 1 GPU-hour in all
    t = analysis.trials(analysis.load(folder))
    assert len(t) == 4 and t["gpu_hours"].sum() == pytest.approx(1.0) and t["wall_s"].sum() == pytest.approx(3600)
    # epoch 1 shared by 4, epoch 2 by the 3 still training
    assert t.set_index("trial_id")["gpu_hours"].to_dict() == pytest.approx(
        {"g0-0": 0.125 + 1 / 6, "g0-1": 0.125 + 1 / 6, "g0-2": 0.125 + 1 / 6, "g0-3": 0.125})
    cost = build(tmp_path, log=lambda msg: None).blocks[-1]
    assert cost.header[4] == "GPU-hours" and cost.cells[-1][0] == "total" and cost.cells[-1][4] == "1.000"

    # the runner's results.parquet (its frame from Tune's results) splits it the same way
    grid = [SimpleNamespace(metrics={"trial_id": "g0"}, path=str(trial), error=None,
                            config=json.loads((trial / "params.json").read_text()))]
    df = results_frame(grid, SimpleNamespace(name="lr"), {"cpu": 1.0, "gpu": 1.0})
    assert sorted(df.loc[df["epoch"] == 2, "fused_members"]) == [3, 3, 3]
    assert analysis.trials(df.assign(experiment="lr"))["gpu_hours"].sum() == pytest.approx(1.0)


# --- PBT -----------------------------------------------------------------------------------------

def _pbt_result(trial_id, epoch, donor=None, epoch_s=600.0):
    return {"epoch": epoch, "lr": 0.05, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 2.0, "val_acc": 0.01 * epoch,
            "diverged": False, "epoch_s": epoch_s, "images_per_s": 1.0, "timestamp": 0.0, "donor": donor,
            "trial_id": trial_id, "training_iteration": epoch, **({"test_loss": 2.0, "test_acc": 0.5} if epoch == 6 else {})}


def test_pbt_members_count_the_epochs_they_trained_and_miss_none_they_skipped(tmp_path):
    from types import SimpleNamespace

    from tune_cifar.experiment import results_frame
    from tune_cifar.progress import EpochRecorder

    # 6-epoch members, each epoch 600 s on a whole GPU. `behind` trains 1-5, clones `ahead`'s epoch 2 and
    # trains 3-6 again: 9 epochs trained. Its restart (a resumed study) repeats epoch 6 from its own
    # checkpoint: not trained twice more in the count. `ahead` trains 1-2, clones a donor at epoch 4 and
    # trains 5-6: 4 epochs trained, epochs 3-4 are its donor's, not missing.
    results = {"behind": [*(_pbt_result("behind", e) for e in range(1, 6)), _pbt_result("behind", 3, donor="ahead"),
                          *(_pbt_result("behind", e) for e in (4, 5, 6)), _pbt_result("behind", 6)],
               "ahead": [_pbt_result("ahead", 1), _pbt_result("ahead", 2), _pbt_result("ahead", 5, donor="behind"),
                         _pbt_result("ahead", 6)]}
    folder = tmp_path / "pbt"
    folder.mkdir()
    (folder / "study.json").write_text(json.dumps({"study": "pbt", "metric": "val_acc", "mode": "max", "space": {},
                                                   "base": BASE, "resources": {"cpu": 1.0, "gpu": 1.0}}))
    recorder, grid = EpochRecorder(str(folder)), []
    for name, lines in results.items():
        trial = folder / f"train_{name}_2024-01-01_00-00-00"
        trial.mkdir()
        config = {**BASE, "epochs": 6, "seed": 0, "lr": 0.05 if name == "behind" else 0.02}
        (trial / "params.json").write_text(json.dumps(config))
        (trial / "run_info.json").write_text(json.dumps({"trial_id": name, "resources": {"cpu": 1.0, "gpu": 1.0}}))
        # Tune's own result.json lost the lines since its last sync when the trial restarted
        (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in lines[:2]))
        for result in lines:  # the driver's record, as Tune hands the results over
            recorder.on_trial_result(0, [], SimpleNamespace(trial_id=name, path=str(trial)), result)
        grid.append(SimpleNamespace(metrics={"trial_id": name}, path=str(trial), error=None, config=config))

    runner = results_frame(grid, SimpleNamespace(name="pbt"), {"cpu": 1.0, "gpu": 1.0})
    behind = runner[runner["trial_id"] == "behind"]
    assert behind["iteration"].tolist() == list(range(1, 10)) and behind["epoch"].tolist() == [1, 2, 3, 4, 5, 3, 4, 5, 6]
    for df in (runner.assign(experiment="pbt"), analysis.load(folder)):
        t = analysis.trials(df).set_index("trial_id")
        assert t["epochs_done"].to_dict() == {"ahead": 4, "behind": 9}
        assert t["status"].to_dict() == {"ahead": "finished", "behind": "finished"}
        assert t["missing_epochs"].to_dict() == {"ahead": "", "behind": ""} and not t["incomplete"].any()
        assert t["gpu_hours"].to_dict() == pytest.approx({"ahead": 4 / 6, "behind": 9 / 6})
        assert t.loc["behind", "val_acc"] == pytest.approx(0.06)  # the last epoch it trained


def test_a_retried_trial_that_finished_is_not_an_error(tmp_path):
    """Tune appends to error.txt per failure and keeps it after a retry succeeds."""
    from analysis.render import to_markdown
    from analysis.report import build

    folder = write_study(tmp_path, "lr", {"lr": [0.01, 0.05, 0.5]}, epochs=4, crash={(2, 0): 2})
    for trial in [p for p in folder.iterdir() if "lr=0.05" in p.name or "lr=0.5" in p.name]:
        (trial / "error.txt").write_text("RuntimeError: worker died\n")  # lr=0.05 was retried and finished
    (folder / "experiment_state-2024-01-01_00-00-00.json").write_text(json.dumps({"trial_data": [
        [json.dumps({"trial_id": "lr_00002_0", "status": "TERMINATED"}), "{}"]]}))  # lr=0.5: then stopped early
    t = analysis.trials(analysis.load(folder)).set_index("configuration")
    assert t["status"].to_dict() == {"lr=0.01": "finished", "lr=0.05": "finished", "lr=0.5": "stopped_early"}
    assert "**lr=0.05** has the best final-epoch `val_acc`" in to_markdown(build(folder, log=lambda m: None).blocks)


def test_copies_of_a_seed_are_pooled_as_one_seed_not_counted_as_three():
    """`lr --search random --num-samples 3` over a list gave each lr three runs, all seed 0."""
    from tune_cifar.results import final_table

    copies = frame({"lr=0.01": [0.600, 0.601, 0.599], "lr=0.02": [0.500, 0.502, 0.498]}).assign(seed=0)
    s = analysis.summary(copies).set_index("configuration")
    assert s["n_seeds"].tolist() == [1, 1] and s["n_copies"].tolist() == [2, 2] and s["n_counted"].tolist() == [1, 1]
    assert s.loc["lr=0.01", "val_acc_mean"] == pytest.approx(0.6) and math.isnan(s.loc["lr=0.01", "val_acc_std"])
    c = analysis.compare_winner(analysis.trials(copies), analysis.summary(copies))
    assert c.winner == "lr=0.01" and c.test is None and c.verdict.startswith("untested")  # not "beyond seed noise"
    table = final_table(copies, ["lr"], "val_acc", "max")  # the runner's own table and winner
    assert table["seeds"].tolist() == [1, 1] and table["trials"].tolist() == [3, 3]
    assert table.loc[table["winner"] == "*", "lr"].tolist() == [0.01]
    t1 = study_tables(analysis.summary(copies), "lr")[0]
    assert "2 repeated run(s) of a seed pooled" in t1.frame.set_index("configuration").loc["lr=0.01", "status"]
    # two distinct seeds stay two samples
    seeds = frame({"lr=0.01": [0.600, 0.601, 0.599], "lr=0.02": [0.500, 0.502, 0.498]})
    assert analysis.summary(seeds)["n_seeds"].tolist() == [3, 3]


def test_a_configuration_the_scheduler_stopped_shows_no_seeds_and_says_where_it_stopped():
    """ASHA cut lr=0.02 at epoch 2 of 4: the runner prints `stopped early at epoch 2 (not ranked)`; so must the report."""
    df = frame({"lr=0.01": [0.60], "lr=0.02": [0.50]}, epochs=4)
    cut = df["configuration"] == "lr=0.02"
    df.loc[cut, "status"] = "stopped_early"
    df = df[~(cut & (df["epoch"] > 2))]
    cells = {c[0]: c for c in study_tables(analysis.summary(df), "lr", published=False)[0].cells}
    assert cells["lr=0.02"][1] == "0" and cells["lr=0.02"][-1] == "stopped early at epoch 2 (not ranked)"
    assert cells["lr=0.01"][1] == "1" and cells["lr=0.01"][-1] == "ok"

"""analysis figures (inspected, not just saved) and the report command."""

import json
import subprocess
import sys

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from scipy import stats

import analysis
from analysis import figures
from analysis.report import main, write_report
from test_analysis_fixtures import write_study


@pytest.fixture
def lr_two_seeds(tmp_path):
    write_study(tmp_path, "lr", {"lr": [0.01, 0.05]}, seeds=(0, 1), epochs=4)
    return analysis.load(tmp_path / "lr")


def legend_labels(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_learning_curves_show_train_and_validation_loss_and_accuracy(lr_two_seeds):
    one = lr_two_seeds[lr_two_seeds["configuration"] == "lr=0.05"]
    fig = figures.learning_curves(one, "lr=0.05")
    loss_ax, acc_ax = fig.axes
    assert loss_ax.get_xlabel() == acc_ax.get_xlabel() == "epoch"
    assert "loss" in loss_ax.get_ylabel() and "accuracy" in acc_ax.get_ylabel()
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "acc")):
        assert legend_labels(ax) == ["train", "validation"]
        assert ax.get_legend().get_title().get_text() == "mean of 2 seeds, band = +/- 1 std"
        assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 2  # one band per line
        val = ax.get_lines()[1]
        expected = one.groupby("epoch")[f"val_{metric}"].mean()
        np.testing.assert_allclose(val.get_ydata(), expected.to_numpy())
        assert list(val.get_xdata()) == [1, 2, 3, 4]


def test_a_missing_epoch_is_a_gap_and_a_diverged_trial_is_named(tmp_path):
    write_study(tmp_path, "lr", {"lr": [0.05, 0.5]}, epochs=4, drop={(0, 0): 2}, diverge={(1, 0): 3})
    df = analysis.load(tmp_path / "lr")
    gap = figures.learning_curves(df[df["configuration"] == "lr=0.05"], "gap")
    assert np.isnan(gap.axes[0].get_lines()[0].get_ydata()[1])  # epoch 2 is absent, not interpolated
    assert len([c for c in gap.axes[0].collections if isinstance(c, PolyCollection)]) == 0  # one seed: no band
    bad = figures.learning_curves(df[df["configuration"] == "lr=0.5"], "bad")
    assert "diverged (loss not finite), first at epoch 3" in bad.get_suptitle() and "diverged" not in gap.get_suptitle()


def test_study_overlay_has_one_series_per_configuration_in_each_panel(lr_two_seeds):
    fig = figures.study_overlay(lr_two_seeds, "lr")
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes] == ["training loss", "validation loss", "training accuracy",
                                                   "validation accuracy"]
    for ax in fig.axes:
        assert [line.get_label() for line in ax.get_lines()] == ["lr=0.01", "lr=0.05"]
        assert ax.get_xlabel() == "epoch"
    assert legend_labels(fig.axes[3]) == ["lr=0.01", "lr=0.05"]


def test_lr_schedule_figure_plots_the_recorded_rates(tmp_path):
    write_study(tmp_path, "lrs", {"schedule": ["constant", "cosine"]}, epochs=10)
    df = analysis.load(tmp_path / "lrs")
    fig = figures.lr_schedules(df)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"constant (initial lr 0.05, 10 epochs)", "cosine (initial lr 0.05, 10 epochs)"}
    cosine = lines["cosine (initial lr 0.05, 10 epochs)"].get_ydata()
    np.testing.assert_allclose(cosine, 0.05 * (1 + np.cos(np.pi * np.arange(10) / 10)) / 2)
    assert "learning rate" in ax.get_ylabel() and "epoch" in ax.get_xlabel()


def test_beta_density_matches_scipy_and_marks_mixup_off():
    fig = figures.beta_densities([0.2, 0.0, 0.2])
    ax = fig.axes[0]
    assert legend_labels(ax) == ["alpha = 0 (mixup off: lambda = 1)", "alpha = 0.2"]
    curve = next(line for line in ax.get_lines() if line.get_label() == "alpha = 0.2")
    x, y = curve.get_xdata(), curve.get_ydata()
    np.testing.assert_allclose(y, stats.beta.pdf(x, 0.2, 0.2))
    assert ax.get_xlabel().startswith("lambda") and ax.get_ylabel() == "probability density"


def test_save_writes_a_readable_png_and_an_svg(tmp_path, lr_two_seeds):
    png, svg = figures.save(figures.study_overlay(lr_two_seeds, "lr"), tmp_path / "figures" / "lr_overlay")
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300
    assert svg.read_text().lstrip().startswith("<?xml") and "lr=0.05" in svg.read_text()
    assert not [p for p in png.parent.iterdir() if p.name.endswith(".tmp")]


def test_report_follows_the_studies_and_ends_with_the_chain_and_cost(tmp_path):
    root = tmp_path / "results"
    write_study(root, "lr", {"lr": [0.01, 0.05]}, seeds=(0, 1), epochs=3, diverge={(0, 1): 2}, drop={(1, 0): 2})
    write_study(root / "all", "mixup", {"mixup_alpha": [0.0, 0.2]}, epochs=3, chain="all",
                carried={"lr": 0.05, "schedule": "cosine", "weight_decay": 0.0005})
    (root / "all" / "chain.json").write_text(json.dumps({
        "order": ["lr", "lrs", "wd", "mixup"],
        "carried": {"lr": {}, "lrs": {"lr": 0.05}, "wd": {"lr": 0.05, "schedule": "cosine"},
                    "mixup": {"lr": 0.05, "schedule": "cosine", "weight_decay": 0.0005}},
        "winners": {"mixup": {"mixup_alpha": 0.2}}}))
    paths = write_report(root, log=lambda msg: None)
    out = root / "report"
    md = paths["markdown"].read_text()
    assert paths["markdown"] == out / "report.md"

    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections == ["## 1. Learning rate (`lr`)", "## 2. Mixup (`all/mixup`)",
                        "## Carried-forward chain (`all`)", "## Every configuration, ranked", "## Cost"]
    for needle in ("Table 1.", "Table 2.", "Table 8.", "Table 9.", "not comparable", "**What varied:** `lr` in {0.01, 0.05}",
                   "diverged in 1/2 seed(s)", "incomplete: seed 0: epoch(s) 2 missing", "Welch's t-test",
                   "untested: fewer than two seeds", "GPU-hours", "| all/mixup | 2 | 6 |",
                   "**Carried from the previous study:** lr=0.05, schedule=cosine, weight_decay=0.0005",
                   "| mixup | lr=0.05, schedule=cosine, weight_decay=0.0005 | mixup_alpha=0.2"):
        assert needle in md, needle
    # the diverged seed sinks lr=0.01, whatever its mean
    assert "**lr=0.05** has the best final-epoch `val_acc`" in md

    figs = {p.name for p in (out / "figures").iterdir()}
    assert {"lr_overlay.png", "lr_overlay.svg", "lr_lr=0.01_curves.png", "lr_lr=0.05_curves.svg",
            "all-mixup_beta.png", "all-mixup_overlay.png"} <= figs
    for image in [line for line in md.splitlines() if line.startswith("![")]:
        assert (out / image.split("](")[1].rstrip(")")).is_file()
    tables = {p.name for p in (out / "tables").iterdir()}
    assert {"lr_table1.csv", "lr_table1.md", "lr_table2.csv", "all-mixup_table8.csv", "summary.csv",
            "trials.csv"} <= tables

    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") == md.count("![") and 'src="figures/' not in html
    assert "<table>" in html and "<h2>Cost</h2>" in html
    assert not [p for p in out.rglob("*.tmp")]


def test_report_cli_bad_path_is_one_line_on_stderr_and_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1

    proc = subprocess.run([sys.executable, "-m", "analysis.report", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "is not an experiment" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_an_exploding_loss_switches_that_panel_to_a_log_scale(lr_two_seeds):
    exploded = lr_two_seeds.assign(val_loss=lr_two_seeds["val_loss"].where(
        lr_two_seeds["configuration"] == "lr=0.01", 1e7))
    fig = figures.study_overlay(exploded, "lr")
    scales = {ax.get_title(): ax.get_yscale() for ax in fig.axes}
    assert scales == {"training loss": "linear", "validation loss": "log", "training accuracy": "linear",
                      "validation accuracy": "linear"}
    assert fig.axes[1].get_ylabel().endswith("log scale")


def test_the_fixed_line_leaves_out_settings_no_trial_used(tmp_path):
    write_study(tmp_path, "lr", {"lr": [0.01, 0.05]}, epochs=2)
    write_study(tmp_path, "schedules", {"schedule": ["constant", "step"]}, epochs=2)
    md = write_report(tmp_path, log=lambda msg: None)["markdown"].read_text()
    fixed = [line for line in md.splitlines() if "**Fixed:**" in line]
    assert len(fixed) == 2
    lr_fixed, schedules_fixed = fixed if "lr=" not in fixed[0] else fixed[::-1]
    # a constant-lr study fixes no milestones, no warm-up, and no cutmix (mix is mixup)
    for unused in ("step_milestones=", "step_gamma=", "warmup_epochs=", "cutmix_alpha=", "cutmix_prob="):
        assert unused not in lr_fixed, unused
    assert "schedule=constant" in lr_fixed and "mixup_alpha=off" in lr_fixed and "weight_decay=" in lr_fixed
    # one of its trials ran the step schedule: its milestones and gamma were in force
    assert "step_milestones=" in schedules_fixed and "step_gamma=" in schedules_fixed
    assert "warmup_epochs=" not in schedules_fixed and "lr=" in schedules_fixed


def _ranking_rows(md: str) -> list[list[str]]:
    section = md.split("## Every configuration, ranked")[1].split("\n## ")[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| rank") and not line.startswith("| ---")]


def test_the_ranked_section_takes_the_reports_best_on_every_field_and_ranks_by_the_one_rule(tmp_path):
    report_best = {"lr": 0.05, "schedule": "cosine", "weight_decay": 0.0005}
    # the report's best is the mixup study's alpha 0.2 (2 seeds); the smoothing and dropout studies
    # carry mixup 0.2 too, with 3 seeds, but are not it
    write_study(tmp_path, "mixup", {"mixup_alpha": [0.0, 0.2]}, seeds=(0, 1), carried=report_best)
    write_study(tmp_path, "smoothing", {"label_smoothing": [0.1, 0.2]}, seeds=(0, 1, 2),
                carried={**report_best, "mixup_alpha": 0.2})
    write_study(tmp_path, "dropout", {"dropout": [0.2]}, seeds=(0, 1, 2), carried={**report_best, "mixup_alpha": 0.2})
    # label smoothing 0.2 has the best mean (0.41 against alpha 0.2's 0.405), but one seed's final
    # validation loss exploded: it diverged, and ranks last
    trial = next((tmp_path / "smoothing").glob("train_smoothing_00001_0_*"))
    lines = (trial / "result.json").read_text().splitlines()
    last = json.loads(lines[-1])
    (trial / "result.json").write_text("\n".join(lines[:-1] + [json.dumps({**last, "val_loss": 31082.0})]) + "\n")

    md = write_report(tmp_path, log=lambda msg: None)["markdown"].read_text()
    assert "ours of it: mixup: mixup_alpha=0.2, 2 seed(s)" in md
    rows = _ranking_rows(md)
    order = [(r[1], r[2]) for r in rows]
    assert order == [("mixup", "mixup_alpha=0.2"), ("smoothing", "label_smoothing=0.1"), ("dropout", "dropout=0.2"),
                     ("mixup", "mixup_alpha=off"), ("smoothing", "label_smoothing=0.2")]
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    reference = rows[0]
    assert reference[7] == "+0.0000" and reference[8] == ""  # the reference itself: no test against itself
    assert rows[-1][3] == "3 (1 diverged)"


def test_the_report_finds_experiments_and_chains_however_deep(tmp_path):
    """scripts/budget_comparison.sh writes results/chain/all/chain.json and results/<arm>-<seed>/joint."""
    from analysis.render import to_markdown
    from analysis.report import build

    root = tmp_path / "results"
    write_study(root / "chain" / "all", "lr", {"lr": [0.01, 0.05]}, epochs=2, chain="all")
    (root / "chain" / "all" / "chain.json").write_text(json.dumps({
        "order": ["lr"], "carried": {"lr": {}}, "winners": {"lr": {"lr": 0.05}}}))
    write_study(root / "a" / "b" / "c" / "d", "wd", {"weight_decay": [0.0001, 0.0005]}, epochs=2)
    md = to_markdown(build(root, log=lambda msg: None).blocks)
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections[:3] == ["## 1. Weight decay (`wd`)", "## 2. Learning rate (`all/lr`)",
                            "## Carried-forward chain (`all`)"]
    assert "| lr | (nothing) | lr=0.05 (" in md  # the chain's row found its study's results


def generated_study(root, data=None, **kw):
    """The lr study as a `--smoke` run or `python -m tune_cifar.data synthetic` data leaves it."""
    folder = write_study(root, "lr", {"lr": [0.01, 0.05]}, epochs=2, **kw)
    for info in folder.glob("*/run_info.json") if data is not None else ():
        info.write_text(json.dumps({**json.loads(info.read_text()), "data": data}))
    return folder


def test_a_report_on_generated_data_says_so_everywhere_and_compares_with_nothing_published(tmp_path):
    from analysis.render import Grid, Para, to_markdown
    from analysis.report import build

    generated_study(tmp_path, {"generated": True, "train_images": 250, "test_images": 200, "classes": 40})
    report = build(tmp_path, log=lambda msg: None)
    blocks, md = report.blocks, to_markdown(report.blocks)
    assert report.title == "Report: MobileNet on generated data (40 classes), 1 study"
    assert blocks[0].text == report.title and blocks[1].text.startswith("**Generated data:**")
    grids = [i for i, b in enumerate(blocks) if isinstance(b, Grid)]
    assert len(grids) >= 3  # the study's table, the ranking, the cost
    for i in grids:
        assert isinstance(blocks[i + 1], Para) and blocks[i + 1].text.startswith("**Generated data:**"), blocks[i].header
        assert not any("(report)" in h for h in blocks[i].header)
    assert "10,000 test images" not in md and "200 training, 50 validation and 200 test images of 40 classes" in md
    assert "The report's winner was" not in md and "Table 1." not in md
    assert "0.6983" not in md  # the ranked section names no published figure either
    assert all(md_file.startswith("**lr summary.**") and "**Generated data:**" in md_file
               for rel, md_file in report.files.items() if rel.startswith("tables/lr_") and rel.endswith(".md"))
    page = write_report(tmp_path, tmp_path / "out", log=lambda msg: None)["html"].read_text()
    assert f"<title>{report.title}</title>" in page


def test_smoke_results_from_before_the_data_record_are_still_called_generated(tmp_path):
    from analysis.report import build

    generated_study(tmp_path, carried={"data_dir": "<generated>"})  # what --smoke records as the data folder
    report = build(tmp_path, log=lambda msg: None)
    assert report.title == "Report: MobileNet on generated data, 1 study"
    assert report.blocks[1].text.startswith("**Generated data:**")


def test_a_report_on_cifar100_keeps_the_published_columns(tmp_path):
    from analysis.render import to_markdown
    from analysis.report import build

    generated_study(tmp_path, {"generated": False, "train_images": 50000, "test_images": 10000, "classes": 100})
    report = build(tmp_path, log=lambda msg: None)
    md = to_markdown(report.blocks)
    assert report.title == "Reproduction report: MobileNet on CIFAR-100, 1 study"
    assert "Generated data" not in md and "val acc (report)" in md and "The report's winner was" in md
    assert "40,000 training, 10,000 validation and 10,000 test images of 100 classes" in md


def test_a_root_with_generated_and_cifar100_studies_marks_only_the_generated_one(tmp_path):
    from analysis.render import to_markdown
    from analysis.report import build

    generated_study(tmp_path, {"generated": True, "train_images": 250, "test_images": 200, "classes": 40})
    write_study(tmp_path, "wd", {"weight_decay": [0.0001, 0.0005]}, epochs=2)  # CIFAR-100 (recorded before `data`)
    report = build(tmp_path, log=lambda msg: None)
    md = to_markdown(report.blocks)
    assert report.title == "Report: MobileNet on generated data (40 classes) and CIFAR-100, 2 studies"
    assert report.blocks[1].text.startswith("**Generated data:** `lr` trained on generated images")
    lr, wd = md.split("(`lr`)")[1].split("\n## ")[0], md.split("(`wd`)")[1].split("\n## ")[0]
    assert "**Generated data:** this study" in lr and "(report)" not in lr
    assert "Generated data" not in wd and "weight decay" in wd.lower() and "val acc (report)" in wd


def _best_frame(finals: dict[str, list[float]]):
    """frame() whose first configuration is the report's best (the ranked section's reference)."""
    from analysis.report import REPORT_BEST
    from test_analysis import frame

    df = frame(finals)
    first = df["configuration"] == next(iter(finals))
    for k, v in REPORT_BEST.items():
        if f"config/{k}" in df:
            df[f"config/{k}"] = df[f"config/{k}"].astype(object)
            df.loc[first, f"config/{k}"] = v
    return df


def test_the_ranked_sections_welch_pools_copies_of_a_seed_and_needs_two_seeds_each():
    import analysis
    from analysis.report import Report, _ranking_section

    df = _best_frame({"best": [0.60, 0.62], "copies": [0.50, 0.501]})
    df.loc[df["configuration"] == "copies", "seed"] = 0  # two identical runs of seed 0: one seed
    grid = [b for b in _ranking_section(analysis.trials(df), analysis.summary(df), Report()) if hasattr(b, "cells")][0]
    rows = {r[2]: r for r in grid.cells}
    assert rows["copies"][3] == "1" and rows["copies"][-1] == ""  # one seed: no Welch p-value
    df = _best_frame({"best": [0.60, 0.62], "two": [0.50, 0.51]})  # two distinct seeds each: tested
    grid = [b for b in _ranking_section(analysis.trials(df), analysis.summary(df), Report()) if hasattr(b, "cells")][0]
    assert {r[2]: r for r in grid.cells}["two"][-1].startswith("p = ")


def test_a_chains_reused_trial_is_ranked_once_and_its_epochs_are_not_counted_again():
    """all/mixup's mixup_alpha=off is all/wd's weight_decay=0.0001 run, reused: one run, listed and paid once."""
    from analysis.report import Report, _cost_section, _ranking_section
    from test_analysis import frame
    from tune_cifar.results import REUSED_FROM

    wd = frame({"weight_decay=0.0001": [0.60, 0.61], "weight_decay=0.0005": [0.50, 0.51]}).assign(
        experiment="all/wd", study="wd", **{REUSED_FROM: ""})
    same = wd[wd["configuration"] == "weight_decay=0.0001"]
    reused = same.assign(experiment="all/mixup", study="mixup", configuration="mixup_alpha=off",
                         trial_id=same["trial_id"] + "-from-wd", **{REUSED_FROM: "wd/" + same["trial_id"]})
    other = wd[wd["configuration"] == "weight_decay=0.0005"].assign(
        experiment="all/mixup", study="mixup", configuration="mixup_alpha=0.2", trial_id=lambda d: "m" + d["trial_id"],
        val_acc=lambda d: d["val_acc"] + 0.2)
    df = pd.concat([wd, reused, other], ignore_index=True)
    t, s = analysis.trials(df), analysis.summary(df)
    grid = [b for b in _ranking_section(t, s, Report()) if hasattr(b, "cells")][0]
    listed = [(r[1], r[2]) for r in grid.cells]
    assert len(listed) == 3 and ("all/mixup", "mixup_alpha=off") not in listed
    assert ("all/wd", "weight_decay=0.0001 (also the all/mixup study's mixup_alpha=off)") in listed
    cost = {r[0]: r for r in [b for b in _cost_section(t) if hasattr(b, "cells")][0].cells}
    assert cost["all/wd"][2] == "8" and cost["all/mixup"][2] == "4"  # 2 trials x 2 epochs; the reused 2 trained none
    assert cost["total"][2] == "12"


def test_a_study_with_only_study_json_and_parquet_is_reported_as_generated_when_study_json_says_so(tmp_path):
    """The trial folders (the run_info.json files) are gone; study.json's `data` entry still says generated."""
    import shutil

    from analysis.render import to_markdown
    from analysis.report import build

    folder = write_study(tmp_path, "lr", {"lr": [0.01, 0.05]}, seeds=(0, 1), parquet=True)
    for trial in [p for p in folder.iterdir() if p.is_dir()]:
        shutil.rmtree(trial)
    record = json.loads((folder / "study.json").read_text())
    data = {"generated": True, "train_images": 2000, "test_images": 500, "classes": 100}
    (folder / "study.json").write_text(json.dumps({**record, "data": data}))
    report = build(folder, log=lambda msg: None)
    assert "generated data" in report.title and "CIFAR-100" not in report.title
    text = to_markdown(report.blocks)
    assert "**Data:** generated images, not CIFAR-100: 1,600 training" in text

"""The analysis on real output: smoke studies run through Tune (all four chained, and lrs with 2 seeds)."""

import shutil

import pandas as pd

import pytest

import analysis
from analysis.report import main as report_main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results_root(smoke_all, smoke_packed, tmp_path_factory):
    """One results root holding the chained four studies (1 seed) and `lrs` with 2 seeds, as a user's would."""
    (all_storage, code_all, _), (packed_storage, code_packed, _) = smoke_all, smoke_packed
    assert code_all == 0 and code_packed == 0
    root = tmp_path_factory.mktemp("results")
    shutil.copytree(all_storage / "all", root / "all")
    shutil.copytree(packed_storage / "lrs", root / "lrs")  # copied like a folder brought back from a cluster
    return root


def test_load_reads_every_study_of_a_copied_results_root(results_root):
    df = analysis.load(results_root)
    assert set(df["experiment"]) == {"all/lr", "all/lrs", "all/wd", "all/mixup", "lrs"}
    per_trial = df.groupby(["experiment", "trial_id"])["epoch"].apply(sorted)
    assert all(epochs == ([1, 2] if experiment == "lrs" else [1, 2, 3, 4, 5])  # --epochs 2 / the smoke's 5
               for (experiment, _), epochs in per_trial.items())
    assert df.groupby("experiment")["trial_id"].nunique().to_dict() == {
        "all/lr": 3, "all/lrs": 2, "all/wd": 2, "all/mixup": 2, "lrs": 4}
    # Without the parquet files the trial folders give the same rows.
    for parquet in results_root.rglob("results.parquet"):
        parquet.rename(parquet.with_suffix(".bak"))
    try:
        again = analysis.load(results_root)
    finally:
        for bak in results_root.rglob("results.bak"):
            bak.rename(bak.with_suffix(".parquet"))
    key = ["experiment", "trial_id", "epoch"]
    a, b = df.sort_values(key).reset_index(drop=True), again.sort_values(key).reset_index(drop=True)
    assert a[key].equals(b[key])
    assert (a["val_acc"] - b["val_acc"]).abs().max() < 1e-12


def test_summary_counts_seeds_and_costs(results_root):
    s = analysis.summary(analysis.load(results_root))
    two_seeds = s[s["experiment"] == "lrs"]
    assert sorted(two_seeds["n_seeds"]) == [2, 2]
    assert (s.loc[s["experiment"] != "lrs", "n_seeds"] == 1).all()
    assert (two_seeds["val_acc_ci_low"] <= two_seeds["val_acc_mean"]).all()
    # the chain's lrs "constant" is lr's 0.05 and its mixup "off" is wd's winner: reused, not paid twice
    reused = s[s["n_reused"] > 0]
    assert sorted(reused["experiment"]) == ["all/lrs", "all/mixup"] and (reused["wall_s"] == 0).all()
    assert (s.loc[s["n_reused"] == 0, "wall_s"] > 0).all()


def _section(md: str, experiment: str) -> str:
    start = md.index(f"(`{experiment}`)")
    end = md.find("\n## ", start)
    return md[start:end if end > 0 else len(md)]


def test_report_on_real_output(results_root, tmp_path):
    assert report_main([str(results_root), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    names = {p.name for p in (tmp_path / "tables").iterdir()}
    # --smoke trains on generated images: said at the top and under every table, nothing published compared
    assert md.startswith("# Report: MobileNet on generated data (40 classes), 5 studies\n\n**Generated data:** every study")
    assert not any("_table" in n for n in names), sorted(names)
    for experiment in ("all-lr", "all-lrs", "all-wd", "all-mixup", "lrs"):  # one summary table each, MD and CSV
        study = experiment.split("-")[-1]
        assert {f"{experiment}_{study}summary.md", f"{experiment}_{study}summary.csv"} <= names, sorted(names)
    assert "(report)" not in md and "The report's winner was" not in md
    assert md.count("800 training, 200 validation and 200 test images of 40 classes") == 5  # the smoke's sizes
    lines = md.splitlines()
    ends = [i for i, line in enumerate(lines) if line.startswith("|") and not lines[i + 1].startswith("|")]
    assert ends and all(lines[i + 2].startswith("**Generated data:**") for i in ends)
    # `lrs` ran 2 seeds per configuration: its winner is tested; `all/lrs` ran 1 seed: it is not
    two = _section(md, "lrs")
    one = _section(md, "all/lrs")
    assert "Comparison with the runner-up: beyond seed noise" in two or "Comparison with the runner-up: within seed noise" in two \
        or "Comparison with the runner-up: untestable" in two
    assert "Comparison with the runner-up: untested" in one or "Comparison with the runner-up: tied" in one
    assert "Welch" in two and "Welch" not in one.split("Comparison with the runner-up")[1].split("\n")[0]
    assert (tmp_path / "report.html").read_text().count("<img") >= 5
    assert len(list((tmp_path / "figures").glob("*.png"))) >= 5


def test_table_cells_are_the_parquets_final_epoch_means(results_root, tmp_path):
    report_main([str(results_root), "--out", str(tmp_path)])
    parquet = pd.read_parquet(results_root / "lrs" / "results.parquet")
    final = parquet.sort_values("epoch").groupby("trial_id").tail(1)
    table = pd.read_csv(tmp_path / "tables" / "lrs_lrssummary.csv").set_index("configuration")  # generated data
    for schedule, g in final.groupby("config/schedule"):
        row = table.loc[f"schedule={schedule}"]
        assert row["seeds"] == 2
        assert row["val_acc"] == pytest.approx(g["val_acc"].mean(), abs=1e-12)
        assert row["train_loss"] == pytest.approx(g["train_loss"].mean(), abs=1e-12)
        assert "val_acc_report" not in row
    md = (tmp_path / "tables" / "lrs_lrssummary.md").read_text()
    cosine = final[final["config/schedule"] == "cosine"]["val_acc"].mean()
    assert f"{cosine:.4f} +/- " in md

"""The budget comparison on hand-built results whose answers are known."""

import math

import pandas as pd
import pytest

from analysis import budget
from test_analysis_fixtures import BASE


def _trial(experiment, trial_id, val, epochs_done, ended, status="finished", epochs=4, gpu=0.5, test=None):
    rows = []
    for epoch in range(1, epochs_done + 1):
        rows.append({"experiment": experiment, "study": experiment.split("/")[-1], "configuration": trial_id,
                     "trial_id": trial_id, "seed": 0, "status": status,
                     **{f"config/{k}": v for k, v in BASE.items()}, "config/epochs": epochs,
                     "epoch": epoch, "lr": 0.05, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0,
                     "val_acc": val if epoch == epochs_done else 0.0, "diverged": False,
                     "test_loss": 1.0 if epoch == epochs_done else math.nan,
                     "test_acc": (test if test is not None else val - 0.01) if epoch == epochs_done else math.nan,
                     "images_per_s": 1.0, "epoch_s": 3600.0, "timestamp": ended - (epochs_done - epoch),
                     "resources/cpu": 1.0, "resources/gpu": gpu})
    return rows


@pytest.fixture
def results():
    rows = []
    # the chain: two stages of two 4-epoch trials, 16 trial-epochs in all; it ends at 0.60
    rows += _trial("all/lr", "c1", 0.40, 4, ended=10) + _trial("all/lr", "c2", 0.50, 4, ended=20)
    rows += _trial("all/wd", "c3", 0.55, 4, ended=30) + _trial("all/wd", "c4", 0.60, 4, ended=40)
    # search run A: a cut trial (paid, not found), then 0.65 after 1 + 4 = 5 trial-epochs, then 0.62
    rows += _trial("joint", "a1", 0.90, 1, ended=11, status="stopped_early")
    rows += _trial("joint", "a2", 0.65, 4, ended=12) + _trial("joint", "a3", 0.62, 4, ended=13)
    # search run B: 0.58 after 4, then 0.61 after 8
    rows += _trial("joint2", "b1", 0.58, 4, ended=11) + _trial("joint2", "b2", 0.61, 4, ended=12)
    df = pd.DataFrame(rows)
    space = {"lr": [0.01], "weight_decay": [0.0]}
    meta = {"all/lr": {"chain": "all", "space": {"lr": [0.01, 0.05]}},
            "all/wd": {"chain": "all", "space": {"weight_decay": [0, 1]}},
            "joint": {"study": "joint", "strategy": "TPE + ASHA", "space": space, "search": {"search_seed": 0}},
            "joint2": {"study": "joint", "strategy": "TPE + ASHA", "space": space, "search": {"search_seed": 1}},
            "lr": {"study": "lr", "strategy": "grid", "space": {"lr": [0.1]}}}  # not the chain's question
    return df, meta


def test_budget_orders_trials_by_end_and_counts_what_was_paid(results):
    df, meta = results
    b = budget.budget(df, meta)
    assert set(b["strategy"]) == {"greedy chain (all)", "TPE + ASHA (joint)"}
    a = b[b["run"] == "joint (search seed 0)"]
    assert a["trial_id"].tolist() == ["a1", "a2", "a3"]
    assert a["trial_epochs"].tolist() == [1, 5, 9]
    assert math.isnan(a["best"].iloc[0])  # the cut trial's 0.90 is not found
    assert a["best"].tolist()[1:] == [0.65, 0.65]
    assert a["gpu_hours"].tolist() == pytest.approx([0.5, 2.5, 4.5])  # 3600 s epochs at half a GPU
    chain = b[b["strategy"] == "greedy chain (all)"]
    assert chain["trial_epochs"].tolist() == [4, 8, 12, 16] and chain["best"].tolist() == [0.40, 0.50, 0.55, 0.60]


def test_first_to_reach_the_chains_final_accuracy(results):
    df, meta = results
    b = budget.budget(df, meta)
    target, spent, reached = budget.first_to_reach(b)
    assert (target, spent) == (0.60, 16)
    # the mean of the two runs: at 4 only run B has found something (0.58), so there is no mean yet; at 5
    # run A has 0.65 and run B 0.58, mean 0.615 >= 0.60: reached after 5 of the chain's 16 trial-epochs
    (search,) = reached
    assert search.strategy == "TPE + ASHA (joint)" and search.trial_epochs == 5
    assert search.fraction == pytest.approx(5 / 16)
    assert "TPE + ASHA (joint) reached it first, after 5 trial-epochs (31% of the chain's budget" \
        in budget.sentence(b)
    c = budget.curves(b)
    joint = c[c["strategy"] == "TPE + ASHA (joint)"].set_index("trial_epochs")
    assert math.isnan(joint.loc[4, "mean"]) and joint.loc[4, "runs"] == 1 and joint.loc[4, "high"] == 0.58
    assert joint.loc[9, "mean"] == pytest.approx((0.65 + 0.61) / 2)  # run B ended at 8: its 0.61 carries on
    t = budget.table(b).set_index("strategy")
    assert t.loc["TPE + ASHA (joint)", "runs"] == 2 and t.loc["TPE + ASHA (joint)", "best_val_acc"] == pytest.approx(0.63)
    assert t.loc["greedy chain (all)", "test_acc_of_best"] == pytest.approx(0.59)


def test_one_scheduler_at_two_settings_is_two_strategies(results):
    df, meta = results
    asha = {"search": "optuna", "scheduler": "asha", "reduction_factor": 3}
    meta["joint"]["search"] = {**asha, "grace_period": 1, "search_seed": 0}
    meta["joint2"]["search"] = {**asha, "grace_period": 4, "search_seed": 0}
    b = budget.budget(df, meta)
    assert set(b["strategy"]) == {"greedy chain (all)", "TPE + ASHA (joint; grace 1, reduction 3)",
                                  "TPE + ASHA (joint; grace 4, reduction 3)"}
    t = budget.table(b).set_index("strategy")
    assert t.loc["TPE + ASHA (joint; grace 4, reduction 3)", "runs"] == 1  # not pooled with grace 1


def _replicated():
    """A chain in three replicates (one 4-epoch trial each per stage, 8 trial-epochs) against two searches of
    three runs each: one far above the chain by half its budget, one level with it."""
    rows, meta = [], {}
    space = {"lr": [0.01], "weight_decay": [0.0]}
    for k, final in enumerate((0.60, 0.62, 0.61)):
        rows += _trial(f"chain-{k}/lr", f"c{k}a", 0.50, 4, ended=10) + _trial(f"chain-{k}/wd", f"c{k}b", final, 4, ended=20)
        meta[f"chain-{k}/lr"] = {"chain": "all", "space": {"lr": [0.01, 0.05]}}
        meta[f"chain-{k}/wd"] = {"chain": "all", "space": {"weight_decay": [0, 1]}}
    for k, (first, later) in enumerate(((0.70, 0.71), (0.72, 0.72), (0.71, 0.73))):
        # 0.70-0.72 after 4 trial-epochs (half the chain's 8), a little more after 8
        rows += _trial(f"good-{k}/joint", f"g{k}a", first, 4, ended=11) + _trial(f"good-{k}/joint", f"g{k}b", later, 4, ended=12)
        meta[f"good-{k}/joint"] = {"study": "joint", "strategy": "GP", "space": space, "search": {"search_seed": k}}
    for k, final in enumerate((0.60, 0.63, 0.59)):
        rows += _trial(f"level-{k}/joint", f"l{k}a", 0.30, 4, ended=11) + _trial(f"level-{k}/joint", f"l{k}b", final, 4, ended=12)
        meta[f"level-{k}/joint"] = {"study": "joint", "strategy": "QMC", "space": space, "search": {"search_seed": k}}
    return pd.DataFrame(rows), meta


def test_searches_are_held_against_the_chains_replicates_with_welchs_test():
    df, meta = _replicated()
    b = budget.budget(df, meta)
    vs = budget.versus_chain(b).set_index(["strategy", "fraction"])
    assert vs["chain_runs"].unique().tolist() == [3] and vs["chain_mean"].iloc[0] == pytest.approx(0.61)
    good = vs.loc[("GP (joint)", 0.5)]
    assert good["trial_epochs"] == 4 and good["mean"] == pytest.approx(0.71) and good["difference"] == pytest.approx(0.10)
    assert good["p"] < 0.01
    assert math.isnan(vs.loc[("GP (joint)", 0.25), "mean"])  # nothing found after 2 trial-epochs
    level = vs.loc[("QMC (joint)", 1.0)]
    assert level["mean"] == pytest.approx(0.6067, abs=1e-4) and level["p"] > 0.5
    assert vs.loc[("QMC (joint)", 0.5), "mean"] == pytest.approx(0.30)
    said = budget.noise_sentence(b)
    assert "GP (joint): at 25% not every run had found anything; at 50% +0.1000 (p 0.000: beyond seed noise, above)" in said
    assert "QMC (joint)" in said and "at 100% -0.0033" in said and "within seed noise" in said
    t = budget.table(b).set_index("strategy")
    assert t.loc["GP (joint)", "vs_chain_at_its_budget"] == pytest.approx(0.72 - 0.61)
    assert math.isnan(t.loc["greedy chain (all)", "p_vs_chain"])


def test_a_comparison_with_no_noise_estimate_is_untested_not_within_noise():
    df, meta = _replicated()
    # one run of a strategy: nothing to estimate its noise from, however far below the chain it is
    rows = [r for r in df.to_dict("records") if not r["experiment"].startswith("level-")]
    rows += _trial("once/joint", "o1a", 0.20, 4, ended=11) + _trial("once/joint", "o1b", 0.25, 4, ended=12)
    meta = {k: v for k, v in meta.items() if not k.startswith("level-")}
    meta["once/joint"] = {"study": "joint", "strategy": "QMC", "space": meta["good-0/joint"]["space"],
                          "search": {"search_seed": 0}}
    said = budget.noise_sentence(budget.budget(pd.DataFrame(rows), meta))
    once = said.split("QMC (joint): ")[1]
    assert once.startswith("at 25% not every run had found anything; at 50% -0.4100 (untested: one run)")
    assert "at 100% -0.3600 (untested: one run)" in once and "noise" not in once
    assert "GP (joint): at 25% not every run had found anything; at 50% +0.1000 (p 0.000: beyond" in said
    assert math.isnan(budget.welch_p([0.87, 0.87, 0.87], [0.5, 0.5, 0.5]))  # no spread on either side


def test_one_chain_run_is_said_to_be_a_single_draw(results):
    df, meta = results
    assert "single draw" in budget.noise_sentence(budget.budget(df, meta))
    assert math.isnan(budget.welch_p([0.5, 0.6], [0.55]))


def test_a_warm_started_search_pays_for_what_it_was_told_and_has_found_it():
    df, meta = _replicated()
    rows = _trial("warm-0/joint", "w0", 0.50, 4, ended=11)
    meta["warm-0/joint"] = {"study": "joint", "strategy": "TPE, warm-started from lr", "space": meta["good-0/joint"]["space"],
                            "search": {"search_seed": 0},
                            "warm_start": {"from": "r/lr", "trial_epochs": 6, "gpu_hours": 1.5, "best": 0.65}}
    b = budget.budget(pd.concat([df, pd.DataFrame(rows)]), meta)
    w = b[b["strategy"] == "TPE, warm-started from lr (joint)"]
    assert w["trial_id"].tolist() == ["(warm start)", "w0"]
    assert w["trial_epochs"].tolist() == [6, 10] and w["gpu_hours"].tolist() == pytest.approx([1.5, 3.5])
    assert w["best"].tolist() == [0.65, 0.65]  # its own 0.50 is below what it was told
    assert w["best_configuration"].iloc[-1] == "warm start from r/lr"

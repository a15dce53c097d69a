"""Per-trial and per-configuration statistics, and the winner-vs-runner-up test, from load()'s frame."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis.loading import IDENTITY_FIELDS, configuration_labels

FINAL_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
CONFIDENCE = 0.95
GROUP = ["experiment", "study", "configuration"]


def mean_ci(values, confidence: float = CONFIDENCE) -> tuple[float, float, float, float]:
    """(mean, sample std, CI low, CI high): Student-t interval over seeds; NaN spread with one value."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return (math.nan,) * 4
    mean = float(np.mean(x))
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(np.std(x, ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


@dataclass(frozen=True)
class Welch:
    statistic: float  # t
    df: float  # Welch-Satterthwaite degrees of freedom
    p_value: float  # two-sided
    diff_low: float  # 95% CI of mean(a) - mean(b)
    diff_high: float


def welch(a, b, confidence: float = CONFIDENCE) -> Welch:
    """Two-sided Welch's t-test (unequal variances) of mean(a) == mean(b)."""
    with warnings.catch_warnings():  # identical seeds trip scipy's precision warning; the NaN p says it
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(np.asarray(a, float), np.asarray(b, float), equal_var=False)
    ci = result.confidence_interval(confidence_level=confidence)
    return Welch(float(result.statistic), float(result.df), float(result.pvalue), float(ci.low), float(ci.high))


def trials(df: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: its final metrics, how far it got, what is missing, and what it cost."""
    if "experiment" not in df:
        df = df.assign(experiment=df["study"])
    if "configuration" not in df:
        # a hand-built frame: label by whatever identity field varies within each experiment
        df = df.assign(configuration=pd.concat(configuration_labels(g) for _, g in df.groupby("experiment")))
    rows = [_trial_row(group.sort_values("epoch")) for _, group in df.groupby(["experiment", "trial_id"], sort=False)]
    return pd.DataFrame(rows)


def _trial_row(g: pd.DataFrame) -> dict:
    first, last = g.iloc[0], g.iloc[-1]
    planned = int(first["config/epochs"])
    seen = set(g["epoch"].astype(int))
    diverged = bool(g["diverged"].any())
    reached = max(seen)
    # a diverged trial stops on purpose, so only the epochs up to its divergence are owed
    missing = sorted(set(range(1, (reached if diverged else planned) + 1)) - seen)
    finished = (diverged or reached >= planned) and first["status"] != "ERROR"
    gpu = g["resources/gpu"].fillna(0) if "resources/gpu" in g else 0.0
    cpu = g["resources/cpu"].fillna(0) if "resources/cpu" in g else 0.0
    row = {k: first[k] for k in GROUP + ["trial_id", "seed", "status"]}
    row.update({c: first[c] for c in g.columns if c.startswith("config/")})
    row.update(epochs_planned=planned, epochs_done=len(seen), last_epoch=reached,
               missing_epochs=",".join(map(str, missing)), diverged=diverged,
               diverged_epoch=int(g.loc[g["diverged"], "epoch"].min()) if diverged else math.nan,
               finished=bool(finished), incomplete=bool(missing) or not finished)
    for m in FINAL_METRICS:
        present = g[m].dropna()
        # test metrics exist on the last epoch only; a crashed trial has none
        row[m] = float(present.iloc[-1]) if m.startswith("test") and len(present) else float(last[m])
    row["wall_s"] = float(g["epoch_s"].sum())
    row["gpu_hours"] = float((g["epoch_s"] * gpu).sum() / 3600)
    row["cpu_hours"] = float((g["epoch_s"] * cpu).sum() / 3600)
    return row


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: final-epoch metrics as mean, std and 95% CI over seeds, plus cost.

    Statistics use the trials that finished (all epochs, or stopped by divergence); unfinished
    ones count only when a configuration has nothing else, and `incomplete` says so either way.
    """
    t = trials(df)
    config_cols = [c for c in t.columns if c.startswith("config/")
                   and c.removeprefix("config/") in IDENTITY_FIELDS]
    rows = []
    for keys, g in t.groupby(GROUP, sort=False):
        used = g[g["finished"]] if g["finished"].any() else g
        row = dict(zip(GROUP, keys))
        row.update({c: g[c].iloc[0] for c in config_cols})
        row.update(n_seeds=len(used), n_trials=len(g), seeds=" ".join(map(str, sorted(used["seed"]))),
                   epochs=int(g["epochs_planned"].max()),
                   diverged=bool(g["diverged"].any()), n_diverged=int(g["diverged"].sum()),
                   incomplete=bool(g["incomplete"].any()), n_incomplete=int(g["incomplete"].sum()),
                   missing=_missing_note(g[g["incomplete"]]))
        for m in FINAL_METRICS:
            row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_ci_low"], row[f"{m}_ci_high"] = mean_ci(used[m])
        row.update(wall_s=g["wall_s"].sum(), gpu_hours=g["gpu_hours"].sum(), cpu_hours=g["cpu_hours"].sum())
        rows.append(row)
    out = pd.DataFrame(rows)
    # experiments in load order, configurations by value: ties in ranked() then go to the smaller
    # value, as the runner's own winner pick does
    out["_order"] = pd.factorize(out["experiment"])[0]
    return out.sort_values(["_order", *config_cols], kind="stable", ignore_index=True).drop(columns="_order")


def _missing_note(incomplete: pd.DataFrame) -> str:
    """`seed 1: epochs 3 missing; seed 2: stopped at 4/10`, for the report's flags."""
    notes = []
    for _, r in incomplete.iterrows():
        what = []
        if r["missing_epochs"]:
            what.append(f"epoch(s) {r['missing_epochs']} missing")
        if not r["finished"]:
            what.append(f"stopped at {r['last_epoch']}/{r['epochs_planned']} ({r['status']})")
        notes.append(f"seed {r['seed']}: " + ", ".join(what))
    return "; ".join(notes)


def ranked(summary_rows: pd.DataFrame, metric: str = "val_acc", mode: str = "max") -> pd.DataFrame:
    """Best first: configurations with no diverged seed always above those with one; NaN last."""
    score = summary_rows[f"{metric}_mean"] * (-1 if mode == "max" else 1)
    order = pd.DataFrame({"diverged": summary_rows["diverged"], "score": score}).fillna({"score": math.inf})
    return summary_rows.loc[order.sort_values(["diverged", "score"], kind="stable").index]


@dataclass(frozen=True)
class Comparison:
    winner: str
    runner_up: str | None
    metric: str
    margin: float  # winner mean - runner-up mean, in the metric's units
    n_winner: int
    n_runner_up: int
    test: Welch | None  # None when either side has fewer than 2 finished seeds
    verdict: str  # one sentence for the report


def compare_top_two(t: pd.DataFrame, summary_rows: pd.DataFrame, metric: str = "val_acc",
                    mode: str = "max", alpha: float = 0.05) -> Comparison:
    """Winner vs runner-up of one experiment, with Welch's t-test over seeds when there are >= 2 each."""
    order = ranked(summary_rows, metric, mode)
    top = order.iloc[0]
    if len(order) < 2:
        return Comparison(top["configuration"], None, metric, math.nan, int(top["n_seeds"]), 0, None,
                          "only one configuration: nothing to compare")
    second = order.iloc[1]
    margin = float(top[f"{metric}_mean"] - second[f"{metric}_mean"])
    a, b = (_finished_values(t, row, metric) for row in (top, second))
    if math.isclose(margin, 0.0, abs_tol=1e-12):
        return Comparison(top["configuration"], second["configuration"], metric, margin, len(a), len(b), None,
                          "tied: winner and runner-up have the same mean, so the pick between them is arbitrary")
    if min(len(a), len(b)) < 2:
        return Comparison(top["configuration"], second["configuration"], metric, margin, len(a), len(b), None,
                          "untested: fewer than two seeds per configuration, so the margin cannot be "
                          "told apart from seed-to-seed noise")
    test = welch(a, b)
    if math.isnan(test.p_value):
        verdict = "untestable: neither configuration varies between seeds"
    else:
        beyond = test.p_value < alpha
        verdict = (f"{'beyond' if beyond else 'within'} seed noise: two-sided Welch's t-test over seeds, "
                   f"t = {test.statistic:.2f}, df = {test.df:.1f}, p = {test.p_value:.3g} "
                   f"({'<' if beyond else '>='} {alpha}); 95% CI of the difference "
                   f"[{test.diff_low:+.4f}, {test.diff_high:+.4f}]")
    return Comparison(top["configuration"], second["configuration"], metric, margin, len(a), len(b), test, verdict)


def _finished_values(t: pd.DataFrame, row: pd.Series, metric: str) -> np.ndarray:
    mine = t[(t["experiment"] == row["experiment"]) & (t["configuration"] == row["configuration"])]
    used = mine[mine["finished"]] if mine["finished"].any() else mine
    return used[metric].to_numpy(float)

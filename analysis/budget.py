"""Search strategies compared at equal cost: best validation accuracy found so far against trial-epochs spent.

Each experiment is one run of a strategy: the greedy chain (`all`: lr, then the schedule, weight
decay and mixup, each carrying the earlier winners), or a search of the joint space (grid, random,
TPE, TPE + ASHA, PBT). Trials are taken in the order they ended; after each, the budget spent is the
trial-epochs (and GPU-hours) trained by every trial ended so far (a chained study's trial reused
from an earlier one's costs nothing again), and the best found is the best final-epoch
validation accuracy among the trials that count by tune_cifar.ranking's rule (a trial an early-
stopping scheduler cut is paid for but not "found"). Several runs of one strategy (search seeds) give
a mean curve and a band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.stats import trials
from tune_cifar import ranking

CHAIN = "greedy chain"


def strategies(meta: dict[str, dict]) -> dict[str, tuple[str, str]]:
    """Experiment label -> (strategy, run) for the experiments that searched the chain's question.

    Chain studies become one run of the chain; a search counts when its space covers every field the
    chain varied (the `joint` study does); it is named by its plan (`TPE + ASHA`) and its runs told
    apart by search seed.
    """
    chained = {label: m for label, m in meta.items() if m.get("chain")}
    asked = {k for m in chained.values() for k in (m.get("space") or {})}
    out = {label: (f"{CHAIN} ({m['chain']})", label.rsplit("/", 1)[0]) for label, m in chained.items()}
    for label, m in meta.items():
        if label not in chained and asked and asked <= set(m.get("space") or {}):
            plan = m.get("search") or {}
            where = "; ".join([m.get("study", label), *_scheduler_settings(plan)])
            out[label] = (f"{m.get('strategy') or 'grid'} ({where})", f"{label} (search seed {plan.get('search_seed', 0)})")
    return out


def _scheduler_settings(plan: dict) -> list[str]:
    """What tells two runs of one scheduler apart (ASHA at grace 2 and at grace 4 are two strategies)."""
    if plan.get("scheduler") == "asha" and plan.get("grace_period"):
        return [f"grace {plan['grace_period']}, reduction {plan.get('reduction_factor', 4)}"]
    if plan.get("scheduler") == "pbt" and plan.get("perturbation_interval"):
        return [f"every {plan['perturbation_interval']} epochs"]
    return []


def budget(df: pd.DataFrame, meta: dict[str, dict], metric: str = "val_acc", mode: str = "max") -> pd.DataFrame:
    """One row per trial in the order trials ended within each run: cumulative cost and the best found so far."""
    named = strategies(meta)
    t = trials(df[df["experiment"].isin(named)])
    if t.empty:
        return pd.DataFrame(columns=["strategy", "run", "trial_id", "trial_epochs", "gpu_hours", "best", "best_test",
                                     "best_configuration"])
    ends = df.groupby(["experiment", "trial_id"])["timestamp"].max().rename("ended")
    t = t.join(ends, on=["experiment", "trial_id"])
    t["strategy"] = t["experiment"].map(lambda e: named[e][0])
    t["run"] = t["experiment"].map(lambda e: named[e][1])
    rows = []
    sign = 1 if mode == "max" else -1
    for (strategy, run), g in t.groupby(["strategy", "run"], sort=False):
        spent = gpu = 0.0
        best, best_test, best_config = -math.inf * sign, math.nan, ""
        for _, trial in g.sort_values("ended", kind="stable").iterrows():
            spent += trial["epochs_trained"]  # a trial reused from an earlier study's was paid for there
            gpu += trial["gpu_hours"]
            value = trial[metric]
            if ranking.counts(trial["status"]) and trial["status"] != "diverged" and np.isfinite(value) \
                    and sign * value > sign * best:
                best, best_test, best_config = value, trial["test_acc"], f"{trial['experiment']}: {trial['configuration']}"
            rows.append({"strategy": strategy, "run": run, "trial_id": trial["trial_id"], "trial_epochs": spent,
                         "gpu_hours": gpu, "best": best if np.isfinite(best) else math.nan, "best_test": best_test,
                         "best_configuration": best_config})
    return pd.DataFrame(rows)


def curves(b: pd.DataFrame) -> pd.DataFrame:
    """Each strategy's best-so-far at every point where one of its runs ended a trial: mean, min, max over runs.

    A run's best found after spending x is its value at the last trial that ended at or before x, and
    stays there after its last trial (what its whole budget bought). The mean is given only where every
    run has found something (`runs` says how many have), so it never averages a lucky early find with
    runs that have none yet; min and max are over the runs that have.
    """
    out = []
    for strategy, g in b.groupby("strategy", sort=False):
        grid = np.unique(np.concatenate([[0.0], g["trial_epochs"].to_numpy(float)]))
        runs = []
        for _, r in g.groupby("run", sort=False):
            idx = np.searchsorted(r["trial_epochs"].to_numpy(), grid, side="right") - 1
            runs.append(np.where(idx >= 0, r["best"].to_numpy()[np.clip(idx, 0, None)], np.nan))
        stack = np.vstack(runs)
        found = np.sum(~np.isnan(stack), axis=0)
        with np.errstate(all="ignore"), _quiet():
            mean = np.where(found == len(runs), np.nanmean(stack, axis=0), np.nan)
            out.append(pd.DataFrame({"strategy": strategy, "trial_epochs": grid, "mean": mean,
                                     "low": np.nanmin(stack, axis=0), "high": np.nanmax(stack, axis=0),
                                     "runs": found}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


@dataclass(frozen=True)
class Reached:
    strategy: str
    trial_epochs: float  # spent when its mean best-so-far first reached the target; NaN if never
    fraction: float  # of the chain's budget


def first_to_reach(b: pd.DataFrame, mode: str = "max") -> tuple[float, float, list[Reached]]:
    """The chain's final best and budget, and when each other strategy's mean curve first reached that best."""
    chain = b[b["strategy"].str.startswith(CHAIN)]
    if chain.empty:
        return math.nan, math.nan, []
    finals = chain.groupby("run").tail(1)
    target, spent = float(finals["best"].mean()), float(finals["trial_epochs"].mean())
    reached = []
    for strategy, c in curves(b[~b["strategy"].str.startswith(CHAIN)]).groupby("strategy", sort=False):
        hit = c[(c["mean"] >= target) if mode == "max" else (c["mean"] <= target)]
        x = float(hit["trial_epochs"].iloc[0]) if len(hit) else math.nan
        reached.append(Reached(strategy, x, x / spent if spent else math.nan))
    return target, spent, reached


def table(b: pd.DataFrame) -> pd.DataFrame:
    """One row per strategy: runs, what it spent, the best it found (mean and spread over runs) and its test accuracy."""
    rows = []
    for strategy, g in b.groupby("strategy", sort=False):
        finals = g.groupby("run").tail(1)
        rows.append({"strategy": strategy, "runs": len(finals), "trials": int(g.groupby("run").size().mean()),
                     "trial_epochs": finals["trial_epochs"].mean(), "gpu_hours": finals["gpu_hours"].mean(),
                     "best_val_acc": finals["best"].mean(), "best_val_acc_sd": finals["best"].std(ddof=1),
                     "test_acc_of_best": finals["best_test"].mean()})
    return pd.DataFrame(rows)


def sentence(b: pd.DataFrame, mode: str = "max") -> str:
    target, spent, reached = first_to_reach(b, mode)
    if math.isnan(target):
        return "No greedy chain in these results: nothing to compare the searches with."
    got = sorted((r for r in reached if not math.isnan(r.trial_epochs)), key=lambda r: r.trial_epochs)
    lead = (f"The greedy chain ended at validation accuracy {target:.4f} after {spent:,.0f} trial-epochs. ")
    if not got:
        return lead + ("No search reached it" + (" within its budget." if reached else "; no search was run."))
    first = got[0]
    return lead + (f"{first.strategy} reached it first, after {first.trial_epochs:,.0f} trial-epochs "
                   f"({100 * first.fraction:.0f}% of the chain's budget, mean curve over its runs).")


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN column: NaN is the answer

    def __exit__(self, *exc):
        self._w.__exit__(*exc)

"""Search strategies compared at equal cost: best validation accuracy found so far against trial-epochs spent.

Each experiment is one run of a strategy: the greedy chain (`all`: lr, then the schedule, weight
decay and mixup, each carrying the earlier winners), or a search of the joint space (grid, random,
TPE, TPE + ASHA, PBT). Trials are taken in the order they ended; after each, the budget spent is the
trial-epochs (and GPU-hours) trained by every trial ended so far (a chained study's trial reused
from an earlier one's costs nothing again), and the best found is the best final-epoch
validation accuracy among the trials that count by tune_cifar.ranking's rule (a trial an early-
stopping scheduler cut is paid for but not "found"). A warm-started search starts from the cost of
the trials it was told about and the best of them. Several runs of one strategy (search seeds, chain
replicates) give a mean curve and a band; versus_chain tests each search against the chain's replicates.
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
        warm = meta.get(g["experiment"].iloc[0], {}).get("warm_start")
        if warm:  # what the searcher was told before it drew: paid for when it ran, and already found
            spent, gpu = float(warm.get("trial_epochs", 0)), float(warm.get("gpu_hours", 0.0))
            if warm.get("best") is not None and np.isfinite(warm["best"]):
                best, best_config = float(warm["best"]), f"warm start from {warm.get('from')}"
            rows.append({"strategy": strategy, "run": run, "trial_id": "(warm start)", "trial_epochs": spent,
                         "gpu_hours": gpu, "best": best if np.isfinite(best) else math.nan, "best_test": best_test,
                         "best_configuration": best_config})
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


def found_by(b: pd.DataFrame, spent: float) -> pd.DataFrame:
    """Each run's best found once it had spent at most `spent` trial-epochs (NaN: nothing found by then)."""
    rows = []
    for (strategy, run), g in b.groupby(["strategy", "run"], sort=False):
        before = g[g["trial_epochs"] <= spent + 1e-9]
        rows.append({"strategy": strategy, "run": run, "best": before["best"].iloc[-1] if len(before) else math.nan})
    return pd.DataFrame(rows, columns=["strategy", "run", "best"])


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Welch t-test of two sets of runs; NaN with fewer than two runs on a side (no noise estimate)
    or no spread at all."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2 or (np.std(a) == 0 and np.std(b) == 0):
        return math.nan
    with _quiet():  # (scipy warns of precision loss when a side's runs are all equal; the p is still right)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # of the chain's budget, where each search is held against the chain


def versus_chain(b: pd.DataFrame, fractions: tuple[float, ...] = FRACTIONS) -> pd.DataFrame:
    """Each search, at each fraction of the chain's mean budget, against the chain's final best: its runs'
    mean best found by then, the difference, and Welch's p over the runs (search seeds against chain
    replicates: what the difference means against seed noise). A mean is given only when every run had
    found something by then."""
    chain = b[b["strategy"].str.startswith(CHAIN)]
    if chain.empty:
        return pd.DataFrame()
    finals = chain.groupby("run").tail(1)
    ours, budget_ = finals["best"].to_numpy(float), float(finals["trial_epochs"].mean())
    rows = []
    for strategy, g in b[~b["strategy"].str.startswith(CHAIN)].groupby("strategy", sort=False):
        for f in fractions:
            got = found_by(g, f * budget_)["best"].to_numpy(float)
            whole = not np.isnan(got).any()
            mean = float(got.mean()) if whole else math.nan
            rows.append({"strategy": strategy, "fraction": f, "trial_epochs": f * budget_, "runs": len(got),
                         "mean": mean, "sd": float(got.std(ddof=1)) if whole and len(got) > 1 else math.nan,
                         "chain_mean": float(ours.mean()), "chain_sd": float(ours.std(ddof=1)) if len(ours) > 1
                         else math.nan, "chain_runs": len(ours), "difference": mean - float(ours.mean()),
                         "p": welch_p(got, ours) if whole else math.nan})
    return pd.DataFrame(rows)


def table(b: pd.DataFrame) -> pd.DataFrame:
    """One row per strategy: runs, what it spent, the best it found (mean and spread over runs), its test
    accuracy, and (searches) the difference from the chain's mean at the chain's budget with Welch's p."""
    rows = []
    equal = versus_chain(b, (1.0,)).set_index("strategy") if b["strategy"].str.startswith(CHAIN).any() else None
    for strategy, g in b.groupby("strategy", sort=False):
        finals = g.groupby("run").tail(1)
        vs = equal.loc[strategy] if equal is not None and strategy in equal.index else None
        rows.append({"strategy": strategy, "runs": len(finals), "trials": int(g.groupby("run").size().mean()),
                     "trial_epochs": finals["trial_epochs"].mean(), "gpu_hours": finals["gpu_hours"].mean(),
                     "best_val_acc": finals["best"].mean(), "best_val_acc_sd": finals["best"].std(ddof=1),
                     "test_acc_of_best": finals["best_test"].mean(),
                     "vs_chain_at_its_budget": vs["difference"] if vs is not None else math.nan,
                     "p_vs_chain": vs["p"] if vs is not None else math.nan})
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


def noise_sentence(b: pd.DataFrame, alpha: float = 0.05) -> str:
    """Whether the searches' differences from the chain, at each fraction of its budget, are beyond seed noise."""
    vs = versus_chain(b)
    if vs.empty:
        return ""
    chain_runs = int(vs["chain_runs"].iloc[0])
    if chain_runs < 2:
        return (f"The chain ran once: its {vs['chain_mean'].iloc[0]:.4f} is a single draw, so no difference below "
                f"can be told from seed noise (run it with replicates: scripts/budget_comparison.sh).")
    parts = []
    for strategy, g in vs.groupby("strategy", sort=False):
        said = []
        for _, r in g.iterrows():
            if math.isnan(r["mean"]):
                said.append(f"at {100 * r['fraction']:.0f}% not every run had found anything")
                continue
            if math.isnan(r["p"]):  # no noise estimate: a verdict either way would be made up
                why = "one run" if r["runs"] < 2 else "no spread on either side"
                said.append(f"at {100 * r['fraction']:.0f}% {r['difference']:+.4f} (untested: {why})")
                continue
            verdict = ("within seed noise" if r["p"] >= alpha
                       else "beyond seed noise, " + ("above" if r["difference"] > 0 else "below"))
            said.append(f"at {100 * r['fraction']:.0f}% {r['difference']:+.4f} (p {r['p']:.3f}: {verdict})")
        parts.append(f"{strategy}: " + "; ".join(said))
    return (f"Against the chain's mean best over {chain_runs} replicates ({vs['chain_mean'].iloc[0]:.4f}, sd "
            f"{vs['chain_sd'].iloc[0]:.4f}), each search's mean best found by a fraction of the chain's budget, "
            f"Welch's t-test over runs at p < {alpha}: " + ". ".join(parts) + ".")


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN column: NaN is the answer

    def __exit__(self, *exc):
        self._w.__exit__(*exc)

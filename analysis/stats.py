"""Per-trial and per-configuration statistics, and the winner's tests against the rest, from load()'s frame."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis.loading import IDENTITY_FIELDS, configuration_labels
from tune_cifar import ranking
from tune_cifar.results import REUSED_FROM, status_note
from tune_cifar.schema import DIVERGED, ERROR, FINAL_METRICS, INCOMPLETE, STOPPED_EARLY
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
    order = "iteration" if "iteration" in df else "epoch"  # a hand-built frame may have one row an epoch only
    rows = [_trial_row(group.sort_values(order, kind="stable")) for _, group in df.groupby(["experiment", "trial_id"],
                                                                                         sort=False)]
    return pd.DataFrame(rows)


def _trial_row(g: pd.DataFrame) -> dict:
    first = g.iloc[0]
    epochs = g.dropna(subset=["epoch"])
    planned = int(first["config/epochs"])
    seen = set(epochs["epoch"].astype(int))
    # a PBT clone's epochs before its exploit are its donor's: not missing
    inherited = int(epochs.loc[epochs["donor"].notna(), "epoch"].max()) - 1 if "donor" in epochs and \
        epochs["donor"].notna().any() else 0
    diverged_at = ranking.diverged_epochs(epochs)  # a hand-built frame is held to the same rule as load()'s
    diverged = bool(diverged_at.any())
    status = DIVERGED if diverged and first["status"] != ERROR else str(first["status"])  # trial_status's precedence
    reached = int(epochs["epoch"].iloc[-1]) if len(epochs) else 0  # where its lineage ended
    # a trial that stopped on purpose (diverged, or by a scheduler) owes only the epochs up to where it stopped
    owed = reached if status in (DIVERGED, STOPPED_EARLY) else planned
    missing = sorted(set(range(inherited + 1, owed + 1)) - seen)
    counted = ranking.counts(status)
    gpu = g["resources/gpu"].fillna(0) if "resources/gpu" in g else 0.0
    cpu = g["resources/cpu"].fillna(0) if "resources/cpu" in g else 0.0
    row = {k: first[k] for k in GROUP + ["trial_id", "seed"]} | {"status": status}
    row.update({c: first[c] for c in g.columns if c.startswith("config/")})
    row.update(epochs_planned=planned, epochs_done=len(epochs), last_epoch=reached,  # done: epochs it trained
               missing_epochs=",".join(map(str, missing)), diverged=diverged,
               diverged_epoch=int(epochs.loc[diverged_at, "epoch"].min()) if diverged else math.nan,
               finished=counted, stopped_early=status == STOPPED_EARLY,
               incomplete=bool(missing) or status in (ERROR, INCOMPLETE))
    last = epochs.iloc[-1] if len(epochs) else None
    for m in FINAL_METRICS:
        present = epochs[m].dropna()
        # test metrics exist on the last epoch only; a crashed trial has none
        if m.startswith("test"):
            row[m] = float(present.iloc[-1]) if len(present) else math.nan
        else:
            row[m] = float(last[m]) if last is not None else math.nan
    # a chained study's trial reused from an earlier study's (REUSED_FROM) trained nothing: that trial paid
    reused = REUSED_FROM in g and isinstance(first[REUSED_FROM], str) and bool(first[REUSED_FROM])
    row[REUSED_FROM] = first[REUSED_FROM] if reused else ""
    paid = 0.0 if reused else 1.0
    row["epochs_trained"] = 0 if reused else len(epochs)
    # a fused group's members each report the group's epoch time on the group's resources: each pays its share
    share = paid * g["epoch_s"].fillna(0) / (g["fused_members"].fillna(1) if "fused_members" in g else 1)
    row["wall_s"] = float(share.sum())
    # when it ended (its last epoch's report, seconds since the epoch): the optimisation history's order
    row["end_time"] = float(pd.to_numeric(g["timestamp"], errors="coerce").max()) if "timestamp" in g else math.nan
    row["gpu_hours"] = float((share * gpu).sum() / 3600)
    row["cpu_hours"] = float((share * cpu).sum() / 3600)
    return row


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: final-epoch metrics as mean, std and 95% CI over seeds, plus cost.

    Statistics use the trials that tune_cifar.ranking counts (finished, or stopped by divergence),
    one sample per seed: copies of a seed (the same configuration and seed run twice) are pooled
    into their mean, and `n_copies` says how many extra runs were pooled. A configuration with none
    shows what its other trials reached, is flagged, and is not ranked (`n_counted` is 0).
    """
    t = trials(df)
    config_cols = [c for c in t.columns if c.startswith("config/")
                   and c.removeprefix("config/") in IDENTITY_FIELDS]
    rows = []
    for keys, g in t.groupby(GROUP, sort=False):
        used = per_seed(g[g["finished"]] if g["finished"].any() else g)
        row = dict(zip(GROUP, keys))
        row.update({c: g[c].iloc[0] for c in config_cols})
        row.update(n_seeds=len(used), n_counted=int(g.loc[g["finished"], "seed"].nunique()), n_trials=len(g),
                   n_copies=int(g["finished"].sum() - g.loc[g["finished"], "seed"].nunique()),
                   n_reused=int((g[REUSED_FROM] != "").sum()),  # trials that are an earlier study's runs
                   n_stopped_early=int(g["stopped_early"].sum()),
                   epochs_saved=int((g["epochs_planned"] - g["last_epoch"])[g["stopped_early"]].sum()),
                   seeds=" ".join(map(str, sorted(used["seed"]))),
                   epochs=int(g["epochs_planned"].max()),
                   diverged=bool(g["diverged"].any()), n_diverged=int(g["diverged"].sum()),
                   incomplete=bool(g["incomplete"].any()), n_incomplete=int(g["incomplete"].sum()),
                   missing=_missing_note(g[g["incomplete"]]),
                   # none counted: where its trials ended, in the runner's words (final_table's status)
                   ended="" if g["finished"].any() else status_note(
                       pd.DataFrame({"status": g["status"],
                                     "epoch": g["last_epoch"].where(g["last_epoch"] > 0)})))
        for m in FINAL_METRICS:
            row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_ci_low"], row[f"{m}_ci_high"] = mean_ci(used[m])
        row.update(wall_s=g["wall_s"].sum(), gpu_hours=g["gpu_hours"].sum(), cpu_hours=g["cpu_hours"].sum())
        rows.append(row)
    out = pd.DataFrame(rows)
    # experiments in load order, configurations by value: ties in ranked() then go to the smaller
    # value, as the runner's own winner pick does
    out["_order"] = pd.factorize(out["experiment"])[0]
    return out.sort_values(["_order", *config_cols], kind="stable", ignore_index=True).drop(columns="_order")


def per_seed(trial_rows: pd.DataFrame) -> pd.DataFrame:
    """One row per seed: trials with the same seed (copies of one run) pooled into their mean metrics."""
    return trial_rows.groupby("seed", sort=True, as_index=False, dropna=False)[list(FINAL_METRICS)].mean()


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


def ranked(summary_rows: pd.DataFrame, metric: str = "val_acc", mode: str = "max",
           keys: list[str] | None = None) -> pd.DataFrame:
    """Best first, by tune_cifar.ranking's rule: equal means break by the mean of ranking.TIEBREAK,
    then by `keys` (config/<field> columns) in order.

    The default keys are every identity column; pass the study's varied fields first to break ties
    exactly as the runner does.
    """
    keys = keys or [c for c in summary_rows.columns if c.startswith("config/")]
    return ranking.rank(summary_rows, keys, mode, score=f"{metric}_mean", tiebreak=f"{ranking.TIEBREAK}_mean")


@dataclass(frozen=True)
class PairTest:
    other: str  # the configuration compared with the winner
    margin: float  # winner mean - other mean, in the metric's units
    n_other: int
    test: Welch | None  # None when either side has fewer than 2 counted seeds
    p_holm: float  # Holm-adjusted over the family of winner-vs-other tests; NaN when untested


@dataclass(frozen=True)
class Comparison:
    winner: str
    runner_up: str | None
    metric: str
    margin: float  # winner mean - runner-up mean, in the metric's units
    n_winner: int
    n_runner_up: int
    test: Welch | None  # winner vs runner-up; None when either side has fewer than 2 counted seeds
    verdict: str  # one sentence for the report, about winner vs runner-up
    others: tuple[PairTest, ...] = ()  # winner vs every other ranked configuration, runner-up first
    family: str = ""  # one sentence on the multiple-comparison correction, when there are several tests


def compare_winner(t: pd.DataFrame, summary_rows: pd.DataFrame, metric: str = "val_acc", mode: str = "max",
                   alpha: float = 0.05, keys: list[str] | None = None) -> Comparison:
    """Winner vs each other ranked configuration: Welch's t-test over seeds (>= 2 each), Holm-corrected.

    Picking the winner and runner-up from the same data, then testing only those two, would
    understate the chance of a false "beyond noise" when there are more than two configurations;
    the winner is therefore tested against every other one, and the p-values are adjusted with
    Holm's step-down method (family-wise error at most `alpha`).
    """
    order = ranked(summary_rows, metric, mode, keys)
    order = order[order["rank"].notna()] if order["rank"].notna().any() else order
    top = order.iloc[0]
    a = counted_values(t, top, metric)
    if len(order) < 2:
        return Comparison(top["configuration"], None, metric, math.nan, len(a), 0, None,
                          "only one configuration: nothing to compare")
    pairs = []
    for _, other in order.iloc[1:].iterrows():
        b = counted_values(t, other, metric)
        margin = float(top[f"{metric}_mean"] - other[f"{metric}_mean"])
        tested = min(len(a), len(b)) >= 2 and not math.isclose(margin, 0.0, abs_tol=1e-12)
        pairs.append((other, b, margin, welch(a, b) if tested else None))
    adjusted = holm([p[3].p_value if p[3] is not None else math.nan for p in pairs])
    others = tuple(PairTest(o["configuration"], m, len(b), w, q) for (o, b, m, w), q in zip(pairs, adjusted))
    second, b, margin, test = pairs[0]
    n_tests = sum(p.test is not None and not math.isnan(p.test.p_value) for p in others)
    loss = f"{ranking.TIEBREAK}_mean"
    if math.isclose(margin, 0.0, abs_tol=1e-12) and top.get(loss, math.nan) < second.get(loss, math.nan):
        verdict = (f"tied: winner and runner-up have the same mean; the winner has the lower mean {ranking.TIEBREAK} "
                   f"({top[loss]:.4f} vs {second[loss]:.4f}), which breaks the tie")
    elif math.isclose(margin, 0.0, abs_tol=1e-12):
        verdict = "tied: winner and runner-up have the same mean, so the pick between them is arbitrary"
    elif test is None:
        verdict = ("untested: fewer than two seeds per configuration, so the margin cannot be "
                   "told apart from seed-to-seed noise")
    elif math.isnan(test.p_value):
        verdict = "untestable: neither configuration varies between seeds"
    else:
        p = others[0].p_holm
        beyond = p < alpha
        adjusted_note = f", Holm-adjusted over {n_tests} comparisons p = {p:.3g}" if n_tests > 1 else ""
        verdict = (f"{'beyond' if beyond else 'within'} seed noise: two-sided Welch's t-test over seeds, "
                   f"t = {test.statistic:.2f}, df = {test.df:.1f}, p = {test.p_value:.3g}{adjusted_note} "
                   f"({'<' if beyond else '>='} {alpha}); 95% CI of the difference "
                   f"[{test.diff_low:+.4f}, {test.diff_high:+.4f}]")
    family = ""
    if n_tests > 1:
        beaten = [p.other for p in others if p.test is not None and p.p_holm < alpha]
        family = (f"The winner was tested against each of the other {len(others)} configurations (Welch's t-test, "
                  f"Holm-corrected over {n_tests} tests, family-wise alpha {alpha}); it beats "
                  + (", ".join(beaten) if beaten else "none of them") + " beyond seed noise.")
    return Comparison(top["configuration"], second["configuration"], metric, margin, len(a), len(b), test, verdict,
                      others, family)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values; NaN entries (untested) stay NaN and are not in the family."""
    idx = sorted((i for i, p in enumerate(p_values) if not math.isnan(p)), key=lambda i: p_values[i])
    m = len(idx)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank_, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank_) * p_values[i]))
        out[i] = running
    return out


def counted_values(t: pd.DataFrame, row: pd.Series, metric: str) -> np.ndarray:
    """`row`'s (a summary row) counted trials' `metric`, one value per distinct seed (copies pooled)."""
    mine = t[(t["experiment"] == row["experiment"]) & (t["configuration"] == row["configuration"])]
    return per_seed(mine[mine["finished"]])[metric].to_numpy(float)  # copies of a seed are one sample

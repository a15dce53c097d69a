"""Figures as functions of load()'s frame; each returns a matplotlib Figure so tests can inspect it.

Figures are built with `matplotlib.figure.Figure`, never pyplot, so no GUI backend or global
figure state is touched; saving renders with Agg.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy import stats

from analysis import views
from analysis.loading import AnalysisError
from analysis.stats import trials as trial_rows
from tune_cifar.storage import write_atomic

LOSS_LABEL = "cross-entropy loss (nats per image)"
ACC_LABEL = "accuracy (fraction correct)"
EPOCH_LABEL = "epoch"
PANELS = (("train_loss", "training loss", LOSS_LABEL), ("val_loss", "validation loss", LOSS_LABEL),
          ("train_acc", "training accuracy", ACC_LABEL), ("val_acc", "validation accuracy", ACC_LABEL))


def seed_band(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per epoch: mean, std and count over trials; a missing epoch stays NaN so the line shows a gap."""
    values = df.assign(v=df[metric].replace([np.inf, -np.inf], np.nan)).pivot_table(
        index="epoch", columns="trial_id", values="v", aggfunc="first", dropna=False)
    values = values.reindex(range(1, int(df["epoch"].max()) + 1))
    return pd.DataFrame({"mean": values.mean(axis=1), "std": values.std(axis=1, ddof=1),
                         "n": values.notna().sum(axis=1)})


def learning_curves(df: pd.DataFrame, title: str) -> Figure:
    """One configuration: train and validation loss (left) and accuracy (right) against epoch."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    n = df["trial_id"].nunique()
    mixup = bool((df["config/mixup_alpha"] > 0).any()) if "config/mixup_alpha" in df else False
    if "config/mix" in df:  # the alpha is ignored unless mixup is the mix in use
        mixup = mixup and bool((df["config/mix"] == "mixup").any())
    for ax, kind, ylabel in ((loss_ax, "loss", LOSS_LABEL), (acc_ax, "acc", ACC_LABEL)):
        for split, name, color in (("train", "train", "tab:blue"), ("val", "validation", "tab:orange")):
            label = name + (" (mixup: mixed images, lambda-weighted)" if split == "train" and mixup else "")
            _line(ax, seed_band(df, f"{split}_{kind}"), label, color, n)
        _finish(ax, ylabel)
        ax.legend(title=_band_title(n), fontsize="small")
    loss_ax.set_title("loss")
    acc_ax.set_title("accuracy")
    fig.suptitle(title + _diverged_note(df))
    return fig


def study_overlay(df: pd.DataFrame, title: str) -> Figure:
    """One study: each configuration's train/validation loss and accuracy on shared axes."""
    fig = Figure(figsize=(11, 8), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    configs = list(dict.fromkeys(df["configuration"]))
    colors = _colors(len(configs))
    for ax, (metric, panel_title, ylabel) in zip(axes, PANELS):
        for config, color in zip(configs, colors):
            mine = df[df["configuration"] == config]
            _line(ax, seed_band(mine, metric), config, color, mine["trial_id"].nunique())
        ax.set_title(panel_title)
        _finish(ax, ylabel)
    n = df.groupby("configuration")["trial_id"].nunique().max()
    axes[3].legend(title=_band_title(n), fontsize="small")
    fig.suptitle(title + _diverged_note(df))
    return fig


def lr_schedules(df: pd.DataFrame) -> Figure:
    """The learning rate each schedule used per epoch, as the trials recorded it (report's Fig 5)."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    keys = ["config/schedule", "config/lr", "config/epochs"]
    for (schedule, lr, epochs), g in df.groupby(keys, sort=True):
        one = g[g["trial_id"] == g["trial_id"].iloc[0]].sort_values("epoch")  # every seed shares the schedule
        ax.plot(one["epoch"], one["lr"], marker="." if len(one) < 30 else None,
                label=f"{schedule} (initial lr {lr:g}, {epochs} epochs)")
    ax.set_xlabel(f"{EPOCH_LABEL} (the rate is held for the whole epoch)")
    ax.set_ylabel("SGD learning rate")
    ax.set_ylim(bottom=0)
    ax.set_title("Learning rate per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def budget_curves(b: pd.DataFrame, curves: pd.DataFrame, target: float, metric: str = "val_acc") -> Figure:
    """Best validation accuracy found so far against trial-epochs spent, one line per strategy (a band over runs)."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for (strategy, c), color in zip(curves.groupby("strategy", sort=False), _colors(curves["strategy"].nunique())):
        runs = int(c["runs"].max())
        ax.plot(c["trial_epochs"], c["mean"], color=color, drawstyle="steps-post",
                label=f"{strategy}" + (f" (mean of {runs} runs once all have found one; band = min..max)"
                                       if runs > 1 else ""))
        if runs > 1:
            ax.fill_between(c["trial_epochs"], c["low"], c["high"], color=color, alpha=0.2, step="post", linewidth=0)
    if np.isfinite(target):
        ax.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"greedy chain's final {metric}")
    ax.set_xlabel("trial-epochs spent (every trial ended so far)")
    ax.set_ylabel(f"best final-epoch {metric} found so far")
    ax.set_title("Search strategies at equal cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def pbt_lineage(df: pd.DataFrame) -> Figure:
    """Each PBT member's learning rate per epoch, with every exploit drawn from its donor (dotted)."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    members = list(dict.fromkeys(df["trial_id"]))
    colors = dict(zip(members, _colors(len(members))))
    for member in members:
        g = df[df["trial_id"] == member].sort_values("epoch")
        ax.plot(g["epoch"], g["lr"], color=colors[member], marker=".", label=member)
        for _, row in g[g["donor"].notna()].iterrows():
            donor = df[(df["trial_id"] == row["donor"]) & (df["epoch"] == row["epoch"] - 1)]
            if len(donor):
                ax.plot([row["epoch"] - 1, row["epoch"]], [donor["lr"].iloc[0], row["lr"]], color=colors[member],
                        linestyle=":", marker="x")
    ax.set_yscale("log")
    ax.set_xlabel(EPOCH_LABEL)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("learning rate in force (log scale)")
    ax.set_title("PBT: each member's learning rate; dotted = cloned from a donor, then perturbed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return fig


def beta_densities(alphas) -> Figure:
    """Beta(alpha, alpha), the distribution mixup draws its weight lambda from (report's Fig 10)."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    lam = np.linspace(0.002, 0.998, 499)
    for alpha in sorted(set(float(a) for a in alphas)):
        if alpha > 0:
            ax.plot(lam, stats.beta.pdf(lam, alpha, alpha), label=f"alpha = {alpha:g}")
        else:  # no draw at all: every image is used as is
            ax.axvline(1.0, color="gray", linestyle="--", label="alpha = 0 (mixup off: lambda = 1)")
    ax.set_ylim(0, 5)  # the density is unbounded at 0 and 1 for alpha < 1
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("lambda (weight of the original image and label)")
    ax.set_ylabel("probability density")
    ax.set_title("Beta(alpha, alpha) density of the mixup weight")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def optimisation_history(df: pd.DataFrame, metric: str = "val_acc", mode: str = "max") -> Figure:
    """Each trial's final `metric` in the order the trials ended (load()'s frame, or trials()'), and the best
    so far; trials that did not reach their final epoch (stopped early, crashed, interrupted) are hollow and
    never the best."""
    h = views.history(_trials(df), metric, mode)
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    counted = h[h["counted"]]
    ax.scatter(counted["order"], counted[metric], color="tab:blue", s=18, label="trial's final value")
    early = h[~h["counted"]]
    if len(early):
        ax.scatter(early["order"], early[metric], facecolors="none", edgecolors="tab:gray", s=18,
                   label="not counted: stopped early, crashed or interrupted (its last epoch)")
    ax.plot(h["order"], h["best_so_far"], color="tab:red", drawstyle="steps-post", label="best so far")
    ax.set_xlabel("trial, in the order trials ended")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"final-epoch {metric}")
    ax.set_title(f"Optimisation history ({len(h)} trials)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def parallel_coordinates(df: pd.DataFrame, fields: list[str] | None = None, metric: str = "val_acc",
                         space: dict | None = None, mode: str = "max") -> Figure:
    """One line per counted trial (views.results) through an axis per varied field and the metric last,
    coloured by `metric`; the best (by `mode`) drawn last, on top."""
    t = _trials(df)
    fields = fields if fields is not None else views.varied_fields(t, space)
    p = views.parallel(t, fields, metric, space)
    if p.empty:
        raise AnalysisError(f"parallel_coordinates: no trial reached its final epoch with a finite {metric}")
    fig = Figure(figsize=(max(6.0, 1.8 * (len(fields) + 1)), 4.5), layout="constrained")
    ax = fig.subplots()
    values = p[metric].astype(float)
    low, high = float(values.min()), float(values.max())
    norm = Normalize(low, high if high > low else low + 1e-9)
    cmap = colormaps["viridis"]
    metric_axis = (values - low) / (high - low) if high > low else values * 0 + 0.5
    xs = list(range(len(fields) + 1))
    for i in p.assign(_m=values).sort_values("_m", ascending=mode == "max").index:  # the best drawn last, on top
        ys = [p.at[i, f"{k}_axis"] for k in fields] + [metric_axis[i]]
        ax.plot(xs, ys, color=cmap(norm(values[i])), alpha=0.8, linewidth=1.2)
    for x, k in enumerate(fields):
        ax.axvline(x, color="black", linewidth=0.8)
        lo, hi = _ends(p, k)
        ax.text(x, -0.04, lo, ha="center", va="top", fontsize="small")
        ax.text(x, 1.04, hi, ha="center", va="bottom", fontsize="small")
    ax.axvline(len(fields), color="black", linewidth=0.8)
    ax.text(len(fields), -0.04, f"{low:.3g}", ha="center", va="top", fontsize="small")
    ax.text(len(fields), 1.04, f"{high:.3g}", ha="center", va="bottom", fontsize="small")
    labels = [k + (" (log)" if views.is_numeric(p[k]) and views.log_scaled(p[k], (space or {}).get(k)) else "")
              for k in fields] + [metric]
    ax.set_xticks(xs, labels)
    ax.set_yticks([])
    ax.set_ylim(-0.12, 1.12)
    ax.set_xlim(-0.3, len(fields) + 0.3)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=f"final-epoch {metric}")
    ax.set_title(f"Parallel coordinates ({len(p)} trials; each axis from the smallest value seen to the largest)")
    return fig


def hyperparameter_importance(df: pd.DataFrame, fields: list[str] | None = None, metric: str = "val_acc",
                              mode: str = "max", space: dict | None = None) -> Figure:
    """fANOVA's importance per varied field (analysis.views.importance), as bars, with the trials it rests on."""
    t = _trials(df)
    imp = views.importance(t, fields if fields is not None else views.varied_fields(t, space), metric, mode, space)
    fig = Figure(figsize=(7, 0.5 * max(len(imp), 2) + 1.5), layout="constrained")
    ax = fig.subplots()
    ax.barh(imp["field"][::-1], imp["importance"][::-1], color="tab:blue")
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"importance ({imp['method'].iloc[0] if len(imp) else 'fANOVA'}, sums to 1)")
    n = int(imp["n_trials"].iloc[0]) if len(imp) else imp.attrs.get("n_trials", 0)
    warn = f"; fewer than {views.MIN_IMPORTANCE_TRIALS}: a hint only" if n < views.MIN_IMPORTANCE_TRIALS else ""
    ax.set_title(f"Hyperparameter importance for {metric} ({n} counted trials{warn})")
    ax.grid(alpha=0.3, axis="x")
    return fig


def field_scatter(df: pd.DataFrame, x: str | None = None, y: str | None = None, metric: str = "val_acc",
                  space: dict | None = None) -> Figure:
    """Two fields against each other, one point per trial coloured by `metric` (the first two varied
    fields unless named); log axes where views.log_scaled says so."""
    t = _trials(df)
    if x is None or y is None:
        varied = views.varied_fields(t, space)
        if len(varied) < 2:
            raise AnalysisError(f"field_scatter needs two fields that vary between the trials; these vary: "
                                f"{', '.join(varied) or 'none'} (name them with x= and y=)")
        x, y = varied[:2]
    rows = views.results(t, metric)
    fig = Figure(figsize=(6.5, 5), layout="constrained")
    ax = fig.subplots()
    xs, ys = [_plotted(rows[f"config/{k}"]) for k in (x, y)]
    points = ax.scatter(xs, ys, c=rows[metric].astype(float), cmap="viridis", s=40, edgecolors="black",
                        linewidths=0.4)
    for axis, k, v in ((ax.xaxis, x, xs), (ax.yaxis, y, ys)):
        if views.is_numeric(v) and views.log_scaled(v, (space or {}).get(k)):
            (ax.set_xscale if axis is ax.xaxis else ax.set_yscale)("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    fig.colorbar(points, ax=ax, label=f"final-epoch {metric}")
    ax.set_title(f"{metric} over {x} and {y} ({len(rows)} trials)")
    ax.grid(alpha=0.3)
    return fig


def _trials(df: pd.DataFrame) -> pd.DataFrame:
    """stats.trials()' one row per trial, from load()'s per-epoch frame (or that frame itself)."""
    return df if "epochs_done" in df else trial_rows(df)


def _plotted(values: pd.Series) -> pd.Series:
    return values.astype(float) if views.is_numeric(values) else views.as_category(values)


def _ends(p: pd.DataFrame, k: str) -> tuple[str, str]:
    """The labels at an axis's bottom and top: the smallest and largest value (categories: first and last)."""
    if views.is_numeric(p[k]):
        return f"{p[k].min():.3g}", f"{p[k].max():.3g}"
    levels = sorted(views.as_category(p[k]).unique())
    return levels[0], levels[-1] if len(levels) > 1 else ""


def save(fig: Figure, stem: Path) -> list[Path]:
    """Write `<stem>.png` and `<stem>.svg` atomically; returns their paths."""
    paths = []
    for fmt in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=120)
        path = Path(f"{stem}.{fmt}")
        write_atomic(path, buf.getvalue())
        paths.append(path)
        fig.set_layout_engine("none")  # keep the layout the PNG computed; redoing it for the SVG is slow
    return paths


def _line(ax, band: pd.DataFrame, label: str, color, n: int) -> None:
    few = len(band) <= 20  # with a handful of epochs, show each recorded point
    ax.plot(band.index, band["mean"], color=color, label=label, marker="o" if few else None, markersize=3)
    if n > 1:
        # losses and accuracies are never negative; a +/- 1 std band should not suggest they are
        low = (band["mean"] - band["std"]).clip(lower=0)
        ax.fill_between(band.index, low, band["mean"] + band["std"], color=color, alpha=0.2, linewidth=0)


def _finish(ax, ylabel: str) -> None:
    ax.set_xlabel(EPOCH_LABEL)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    values = np.concatenate([line.get_ydata() for line in ax.get_lines()]).astype(float)
    values = values[np.isfinite(values) & (values > 0)]
    if ylabel == LOSS_LABEL and len(values) and values.max() / values.min() > 100:
        ax.set_yscale("log")  # an exploding run would flatten every other curve on a linear axis
        ylabel += ", log scale"
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _band_title(n: int) -> str:
    return f"mean of {n} seeds, band = +/- 1 std" if n > 1 else "one seed"


def _diverged_note(df: pd.DataFrame) -> str:
    if not df["diverged"].any():
        return ""
    hits = df[df["diverged"]].groupby("trial_id")["epoch"].min()
    return (f"\n[{len(hits)} of {df['trial_id'].nunique()} trial(s) diverged (loss not finite), first at epoch "
            f"{int(hits.min())}; later epochs average the trials still running]")


def _colors(n: int) -> list:
    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def sanitise(name: str) -> str:
    """A file name from a label such as `all/lr` or `lr=0.05`."""
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name.replace("/", "-"))


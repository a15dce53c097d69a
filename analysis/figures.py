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
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy import stats

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


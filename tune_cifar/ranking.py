"""The one rule that ranks a study's configurations; the runner's winner and the report's use it. Torch-free.

- Which trials count: those that ended on purpose, i.e. reached their final epoch (`finished`) or
  diverged (`diverged`). Crashed (`error`), interrupted
  (`incomplete`) and scheduler-stopped (`stopped_early`) trials do not count: their last epoch
  is not the final one, so averaging it in would compare a configuration at epoch 3 with one at
  epoch 300. A scheduler's survivors reached their final epoch and count as `finished`.
- A trial diverged when its training loss turned NaN or infinite (the trainer stops it there), or when
  at the last epoch it trained its training or validation loss is infinite or above EXPLODED_LOSS, ten
  times chance: a final loss of 31,082 nats is a run that blew up, finite or not, and its accuracy is
  luck. An early spike it recovered from (high lr, BatchNorm statistics catching up; a PBT member that
  then cloned a sane donor) is not a divergence: see diverged_epochs.
- A configuration's score is the mean over its counted seeds of the final-epoch metric. Trials of
  one configuration with the same seed are copies of one run (a searcher can suggest a point
  twice): they are pooled into one seed (their mean), never counted as independent samples.
  A configuration with no counted trial is not ranked.
- A configuration with a diverged seed ranks below every configuration without one, whatever its
  mean: a setting that sometimes blows up is not a winner.
- Equal scores break by a second metric, the mean final validation loss (TIEBREAK, lower is
  better), and only then by the configuration's values in ascending order (the smaller lr, the
  earlier name), so the pick is the same on every run and every machine.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from tune_cifar.schema import DIVERGED, FINISHED

COUNTED = (FINISHED, DIVERGED)
# Chance cross-entropy is ln(100) = 4.6 nats (a uniform guess over the network's 100 outputs; every
# model has 100, whatever the data). A trained or even an overfitted network stays well under 10x that;
# a loss above it means the weights blew up, and its accuracy is luck.
CHANCE_LOSS = math.log(100)
EXPLODED_LOSS = 10 * CHANCE_LOSS  # nats, ~46
LOSSES = ("train_loss", "val_loss")
TIEBREAK = "val_loss"  # breaks equal scores, lower is better: evidence before the field order


def counts(status: str) -> bool:
    return status in COUNTED


def exploded(loss: Any) -> Any:
    """A loss (a number or an array) that is infinite or above EXPLODED_LOSS; NaN is "not recorded" here
    (a NaN the trainer saw is in its `diverged` flag)."""
    x = np.asarray(loss, dtype=float)
    return np.isinf(x) | (x > EXPLODED_LOSS)


def diverged_epochs(frame: pd.DataFrame) -> pd.Series:
    """Per row (a trial's epoch): the trainer's `diverged` flag (loss turned NaN/inf), or, on the last
    epoch each trial trained (highest `iteration`, else `epoch`, per `trial_id` when there is one), an
    exploded training or validation loss. The runner's results.parquet and the analysis take it from here."""
    flagged = frame["diverged"] if "diverged" in frame else pd.Series(False, index=frame.index)
    flagged = flagged.astype("boolean").fillna(False).astype(bool)
    bad = pd.Series(False, index=frame.index)
    for name in LOSSES:
        if name in frame:
            bad = bad | exploded(pd.to_numeric(frame[name], errors="coerce"))
    order = "iteration" if "iteration" in frame and frame["iteration"].notna().any() else "epoch"
    step = pd.to_numeric(frame[order], errors="coerce") if order in frame else pd.Series(0.0, index=frame.index)
    final = step.groupby(frame["trial_id"]).transform("max") if "trial_id" in frame else step.max()
    return flagged | (bad & (step == final))


def final_diverged(trials: pd.DataFrame) -> pd.Series:
    """Per row, where every row is a trial's final state (score_configurations' input): the trainer's
    `diverged` flag, or an exploded training or validation loss. Not diverged_epochs, which without a
    `trial_id` column would judge only the rows at the frame's highest epoch."""
    flagged = trials["diverged"] if "diverged" in trials else pd.Series(False, index=trials.index)
    bad = flagged.astype("boolean").fillna(False).astype(bool)
    for name in LOSSES:
        if name in trials:
            bad = bad | exploded(pd.to_numeric(trials[name], errors="coerce"))
    return bad


def score_configurations(trials: pd.DataFrame, keys: Sequence[str], metric: str) -> pd.DataFrame:
    """One row per configuration (the `keys` columns) from one row per trial (`seed`, `status`, `metric`).

    Columns added: `score` (mean over counted seeds of `metric`, copies of a seed pooled first),
    `tiebreak` (the same mean of TIEBREAK, when the trials have it), `n_counted` (distinct counted
    seeds), `n_trials`, `diverged` (any counted trial diverged).
    """
    t = trials.assign(_counted=trials["status"].map(counts),
                      _diverged=(trials["status"] == DIVERGED) | (final_diverged(trials) & trials["status"].map(counts)),
                      _value=pd.to_numeric(trials[metric], errors="coerce"),
                      _tiebreak=pd.to_numeric(trials[TIEBREAK], errors="coerce") if TIEBREAK in trials else math.nan)
    counted = t[t["_counted"]]
    per_seed = counted.groupby([*keys, "seed"], dropna=False, sort=False)[["_value", "_tiebreak"]].mean().reset_index()
    scores = per_seed.groupby(list(keys), dropna=False, sort=False).agg(
        score=("_value", "mean"), tiebreak=("_tiebreak", "mean"), n_counted=("seed", "size"))
    grouped = t.groupby(list(keys), dropna=False, sort=False)
    out = grouped.agg(n_trials=("status", "size"), diverged=("_diverged", "any")).reset_index()
    out = out.merge(scores, left_on=list(keys), right_index=True, how="left")
    out["n_counted"] = out["n_counted"].fillna(0).astype(int)
    return out[[*keys, "score", "tiebreak", "n_counted", "n_trials", "diverged"]]


def rank(configs: pd.DataFrame, keys: Sequence[str], mode: str, score: str = "score",
         tiebreak: str = "tiebreak") -> pd.DataFrame:
    """`configs` sorted best first, with `rank` 1, 2, ... (NaN for configurations with no counted trial).

    Needs the columns `keys`, `score`, `n_counted` and `diverged` (as score_configurations makes them);
    the `tiebreak` column (mean TIEBREAK, lower is better) is used where present.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    rankable = (configs["n_counted"] > 0) & configs[score].notna()
    order = pd.DataFrame({
        "_unranked": ~rankable,
        "_diverged": configs["diverged"].astype(bool),
        "_score": -configs[score] if mode == "max" else configs[score],
        "_tiebreak": configs[tiebreak] if tiebreak in configs else math.nan,
    }, index=configs.index)
    for i, key in enumerate(keys):
        order[f"_k{i}"] = configs[key].map(_sort_value)
    order = order.sort_values(list(order.columns), kind="stable", na_position="last")
    out = configs.loc[order.index].copy()
    out["rank"] = [float(i + 1) if ok else math.nan for i, ok in enumerate(rankable.loc[order.index])]
    return out


def best(configs: pd.DataFrame, keys: Sequence[str], mode: str, score: str = "score",
         tiebreak: str = "tiebreak") -> pd.Series | None:
    """The winning configuration's row, or None when nothing can be ranked."""
    ordered = rank(configs, keys, mode, score, tiebreak)
    return ordered.iloc[0] if len(ordered) and ordered["rank"].iloc[0] == 1 else None


def _sort_value(value: Any) -> tuple:
    """Numbers before strings, each in natural order; NaN/None last."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (2, 0.0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    try:
        return (0, float(value), "")  # numpy scalars
    except (TypeError, ValueError):
        return (1, 0.0, str(value))

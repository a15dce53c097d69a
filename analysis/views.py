"""A searched study seen as Optuna's and W&B's users see one: optimisation history, parallel coordinates,
hyperparameter importance, and for two fields a 2-D view. Each is a function of `stats.trials()`' frame
(one row per trial); analysis.figures draws them, the report shows them where they mean something.

Importance is fANOVA (Hutter, Hoos and Leyton-Brown, ICML 2014) through `optuna.importance`, on an Optuna
study built from the trials: a random forest fitted to (configuration -> final metric), and each field's
share of the variance of its predictions. PED-ANOVA, Optuna's default, compares the top 10% of trials
with all of them; on hand-built 40-trial searches where only the schedule mattered it ranked a noise field
first in 2 of 3 draws (tests/test_views.py's data), while fANOVA gave the schedule 1.00 in all three, so
fANOVA it is, with scikit-learn for the forest. Without scikit-learn, PED-ANOVA at its top 25% stands in
(it ranked the schedule first in those three draws, 0.65-0.90) and the note says which ran. Below
MIN_IMPORTANCE_TRIALS trials a forest over a few fields is a guess; the report says so.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import numpy as np
import pandas as pd

from tune_cifar.ranking import counts
from tune_cifar.schema import CONFIGURATION_FIELDS

MIN_IMPORTANCE_TRIALS = 20  # below it the importance is called a hint
LOG_SPAN = 10  # a positive numeric field spanning this ratio or more is drawn and judged on a log scale
_BOUNDS = re.compile(r"^(q?)(loguniform|uniform|randint|qrandint)\(([^,]+),\s*([^,)]+)")


def varied_fields(t: pd.DataFrame, space: Mapping[str, Any] | None = None) -> list[str]:
    """The configuration fields that differ between the trials: the study's own first (in its order), then
    any other (a chain's carried value never varies within one study)."""
    own = [k for k in (space or {}) if f"config/{k}" in t]
    others = [k for k in CONFIGURATION_FIELDS if k not in own and f"config/{k}" in t]
    return [k for k in own + others if t[f"config/{k}"].nunique(dropna=False) > 1]


def is_sampled(space: Mapping[str, Any] | None) -> bool:
    """Any field drawn from a distribution (study.json records those as text such as `loguniform(0.001, 1)`)."""
    return any(isinstance(v, str) for v in (space or {}).values())


def applies(t: pd.DataFrame, space: Mapping[str, Any] | None = None) -> bool:
    """The views mean something for a sampled space or more than one varied field, not for a 3-point grid."""
    fields = varied_fields(t, space)
    return bool(fields) and (is_sampled(space) or len(fields) > 1)


def results(t: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The trials the views judge: counted (tune_cifar.ranking: finished or diverged) with a finite `metric`.
    A trial a scheduler stopped, or one that crashed, ended before its final epoch: its value is not a result."""
    value = pd.to_numeric(t[metric], errors="coerce")
    return t[t["status"].map(counts).astype(bool) & np.isfinite(value)]


def history(t: pd.DataFrame, metric: str = "val_acc", mode: str = "max") -> pd.DataFrame:
    """Each trial with a finite final `metric`, in the order the trials ended, with the best so far.

    Only results() move the best so far, which carries forward past the others (shown, `counted` False).
    The end time is the trial's last `timestamp`; without one for every trial, the frame's order."""
    rows = t[np.isfinite(pd.to_numeric(t[metric], errors="coerce"))].copy()
    if "end_time" in rows and rows["end_time"].notna().all():
        rows = rows.sort_values("end_time", kind="stable")
    rows["counted"] = rows.index.isin(results(rows, metric).index)
    value = rows[metric].where(rows["counted"]).astype(float)
    best = value.cummax() if mode == "max" else value.cummin()
    rows["best_so_far"] = best.ffill()  # NaN only before the first counted trial
    rows.insert(0, "order", range(1, len(rows) + 1))
    keep = ["order", "trial_id", "configuration", "status", "counted", metric, "best_so_far"]
    return rows[[c for c in keep if c in rows]].reset_index(drop=True)


def log_scaled(values: pd.Series, recorded: Any = None) -> bool:
    """Drawn and judged on a log scale: a field its study samples log-uniformly, else positive numbers
    spanning LOG_SPAN or more (lr 0.001..0.5, weight decay 1e-5..1e-3; a grid or a `choice` alike)."""
    if isinstance(recorded, str) and not recorded.startswith("choice"):
        return "log" in recorded.split("(")[0]
    x = pd.to_numeric(values, errors="coerce").dropna()  # a trial without the field says nothing of its range
    return bool(is_numeric(values) and len(x) and (x > 0).all() and x.max() / x.min() >= LOG_SPAN)


def is_numeric(values: pd.Series) -> bool:
    """Numbers (a trial missing the field, recorded before it existed, is NaN: a gap on its axis)."""
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def as_category(values: pd.Series) -> pd.Series:
    """Text for a categorical axis; a missing value is its own category, "None"."""
    return values.map(lambda v: "None" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))


def parallel(t: pd.DataFrame, fields: list[str], metric: str = "val_acc", space: Mapping[str, Any] | None = None
             ) -> pd.DataFrame:
    """One row per results() trial: each field's value and its position on its axis (0..1; numbers linear or
    log from the smallest to the largest seen, NaN where a trial lacks it; categories in sorted order, evenly,
    a missing one as "None")."""
    rows = results(t, metric)
    out = pd.DataFrame({"trial_id": rows["trial_id"], "status": rows["status"], metric: rows[metric]})
    for k in fields:
        values = rows[f"config/{k}"]
        out[k] = values
        out[f"{k}_axis"] = _axis(values, log_scaled(values, (space or {}).get(k)))
    return out.reset_index(drop=True)


def _axis(values: pd.Series, log: bool) -> pd.Series:
    if is_numeric(values):
        x = np.log10(values.astype(float)) if log else values.astype(float)
        span = x.max() - x.min()
        return (x - x.min()) / span if span > 0 else x * 0 + 0.5
    text = as_category(values)
    levels = sorted(text.unique())
    return text.map({v: (i / (len(levels) - 1) if len(levels) > 1 else 0.5) for i, v in enumerate(levels)})


def importance(t: pd.DataFrame, fields: list[str], metric: str = "val_acc", mode: str = "max",
               space: Mapping[str, Any] | None = None, evaluator: Any = None) -> pd.DataFrame:
    """Per field, fANOVA's importance (default_evaluator; or `evaluator`'s, an optuna.importance evaluator),
    summing to 1, from the counted trials with a finite `metric`; `n_trials` says how many, `method` which
    evaluator. Empty when fewer than 3 trials or no field varies among them."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.importance import get_param_importances

    evaluator, method = (evaluator, type(evaluator).__name__) if evaluator is not None else default_evaluator()
    rows = results(t, metric)
    numbers = [k for k in fields if is_numeric(rows[f"config/{k}"])]
    rows = rows.dropna(subset=[f"config/{k}" for k in numbers])  # a point needs every coordinate
    fields = [k for k in fields if rows[f"config/{k}"].nunique(dropna=False) > 1]
    if len(rows) < 3 or not fields:
        empty = pd.DataFrame(columns=["field", "importance", "n_trials", "method"])
        empty.attrs.update(n_trials=len(rows), reason="fewer than 3 counted trials" if len(rows) < 3
                           else "no field varies among the counted trials")
        return empty
    distributions = {}
    for k in fields:
        values = rows[f"config/{k}"]
        if is_numeric(values):
            low, high = _bounds((space or {}).get(k), values)
            distributions[k] = FloatDistribution(low, high, log=log_scaled(values, (space or {}).get(k)))
        else:
            distributions[k] = CategoricalDistribution(sorted(as_category(values).unique()))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for _, r in rows.iterrows():
        params = {k: (float(r[f"config/{k}"]) if isinstance(d, FloatDistribution)
                      else as_category(pd.Series([r[f"config/{k}"]], dtype=object)).iloc[0])
                  for k, d in distributions.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=float(r[metric])))
    scores = get_param_importances(study, evaluator=evaluator, normalize=True)
    out = pd.DataFrame({"field": list(scores), "importance": [float(v) for v in scores.values()]})
    out = out.sort_values(["importance", "field"], ascending=[False, True], kind="stable", ignore_index=True)
    return out.assign(n_trials=len(rows), method=method)


def default_evaluator() -> tuple[Any, str]:
    """fANOVA with a fixed forest seed (the same importance on every run), else PED-ANOVA at its top 25%."""
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    try:
        import sklearn  # noqa: F401  (fANOVA's random forest)
    except ImportError:
        return PedAnovaImportanceEvaluator(target_quantile=0.25), "PED-ANOVA (top 25%; scikit-learn is missing)"
    return FanovaImportanceEvaluator(seed=0), "fANOVA"


def _bounds(recorded: Any, values: pd.Series) -> tuple[float, float]:
    """The sampled domain's bounds where study.json records them (they hold every value), else the range seen."""
    low, high = float(values.min()), float(values.max())
    m = _BOUNDS.match(recorded) if isinstance(recorded, str) else None
    if m:
        try:
            low, high = min(low, float(m.group(3))), max(high, float(m.group(4)))
        except ValueError:
            pass
    if low == high:
        high = math.nextafter(high, math.inf)
    return low, high


def importance_note(imp: pd.DataFrame) -> str:
    """What the importance rests on, and the warning below MIN_IMPORTANCE_TRIALS."""
    if imp.empty:
        return (f"Hyperparameter importance: not estimated from {imp.attrs.get('n_trials', 0)} counted trial(s) "
                f"({imp.attrs.get('reason', 'fewer than 3 counted trials')}).")
    n = int(imp["n_trials"].iloc[0])
    text = (f"Hyperparameter importance ({imp['method'].iloc[0]} through optuna.importance, normalised to sum "
            "to 1), from "
            f"{n} counted trial(s): " + ", ".join(f"{r.field} {r.importance:.2f}" for r in imp.itertuples()) + ".")
    if n < MIN_IMPORTANCE_TRIALS:
        text += (f" **Warning:** fewer than {MIN_IMPORTANCE_TRIALS} trials: an estimate from so few points is a "
                 "hint, not a finding.")
    return text

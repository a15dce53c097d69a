"""Where a model-based search starts: given configurations first (--start, a study's START), or what an
earlier experiment measured (--warm-start), handed to the searcher as already-evaluated points.

Both go to Tune's searcher: `points_to_evaluate` (run first), or `points_to_evaluate` with
`evaluated_rewards` (told to the searcher as done, never run). A warm start is not free: its trials cost
what they cost when they ran, and the budget comparison counts that (analysis/budget.py).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from tune_cifar import ranking
from tune_cifar.config import ConfigError, TrainConfig
from tune_cifar.search import is_domain
from tune_cifar.storage import join, read_bytes


def outside(space: Mapping[str, Any], point: Mapping[str, Any]) -> str | None:
    """Why `point` is not in the space (a field missing or unknown, a value off a list or out of a range);
    None when it is."""
    missing, unknown = [k for k in space if k not in point], [k for k in point if k not in space]
    if missing or unknown:
        return (f"it must give every field the study varies ({', '.join(space)})"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; {', '.join(unknown)} not varied" if unknown else ""))
    for key, value in space.items():
        v = point[key]
        if hasattr(value, "categories"):
            if v not in value.categories:
                return f"{key}={v!r} is not one of {value.categories}"
        elif is_domain(value):
            if not value.lower <= v <= value.upper:
                return f"{key}={v!r} is outside [{value.lower}, {value.upper}]"
        elif v not in value:
            return f"{key}={v!r} is not one of {list(value)}"
    return None


def parse_start(items: Sequence[str], space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """--start FIELD=VALUE,FIELD=VALUE (repeatable): one point each, typed as TrainConfig types its fields."""
    points = []
    for item in items:
        pairs = {}
        for part in [p for p in item.split(",") if p.strip()]:
            field, sep, value = part.partition("=")
            if not sep or not field.strip():
                raise ConfigError(f"--start takes FIELD=VALUE,FIELD=VALUE, not {item!r}")
            pairs[field.strip().replace("-", "_")] = value.strip()
        typed = TrainConfig.from_dict(pairs)  # an unknown field or a bad value: its own one line
        point = {k: getattr(typed, k) for k in pairs}
        why = outside(space, point)
        if why:
            raise ConfigError(f"--start {item}: {why}")
        points.append(point)
    return points


@dataclass(frozen=True)
class WarmStart:
    source: str  # the earlier experiment's folder
    points: list[dict[str, Any]]  # its counted trials' configurations, over this study's space
    rewards: list[float]  # their final-epoch metric
    trials: int  # of the earlier experiment's trials, all of them (what it cost)
    trial_epochs: int  # every epoch its trials trained: the warm start's cost
    gpu_hours: float
    best: float  # the best reward (by the study's mode); NaN if none counts
    skipped: int  # counted trials whose configuration lies outside this study's space

    def record(self) -> dict[str, Any]:
        return {"from": self.source, "points": len(self.points), "trials": self.trials,
                "trial_epochs": self.trial_epochs, "gpu_hours": self.gpu_hours, "best": self.best,
                "skipped": self.skipped}


def warm_start(source: str, space: Mapping[str, Any], metric: str, mode: str) -> WarmStart:
    """An earlier experiment's results.parquet as evaluated points: each trial that counts by ranking.py's
    rule and reached its final epoch (not diverged, not cut by a scheduler), its configuration over
    `space` and its final `metric`."""
    import pandas as pd

    path = join(source, "results.parquet")
    data = read_bytes(path)
    if data is None:
        raise ConfigError(f"--warm-start {source}: no results.parquet there; name an experiment folder "
                          f"(<storage-path>/<study>) that has ended")
    try:
        df = pd.read_parquet(io.BytesIO(data))
    except Exception as e:  # truncated or foreign files raise many different errors
        raise ConfigError(f"--warm-start {source}: {path} is unreadable ({type(e).__name__})") from None
    if metric not in df:
        raise ConfigError(f"--warm-start {source}: its results have no {metric}")
    order = "iteration" if "iteration" in df and df["iteration"].notna().any() else "epoch"
    last = df.sort_values(order, na_position="first", kind="stable").groupby("trial_id", sort=False).tail(1)
    trained = df.dropna(subset=["epoch"])
    cost = int(len(trained))  # one row per epoch trained (a PBT member's repeated epochs are rows too)
    hours = float((trained["epoch_s"].fillna(0) * trained.get("resources/gpu", 0)).sum() / 3600) \
        if "epoch_s" in trained else 0.0
    points, rewards, skipped = [], [], 0
    missing = [k for k in space if f"config/{k}" not in last]
    if missing:
        raise ConfigError(f"--warm-start {source}: its trials do not record {', '.join(missing)}, which this "
                          f"study varies")
    for _, row in last.iterrows():
        if row["status"] != "finished" or not ranking.counts(row["status"]) or not math.isfinite(row[metric]):
            continue
        point = {k: _plain(row[f"config/{k}"]) for k in space}
        if outside(space, point):
            skipped += 1
            continue
        points.append(point)
        rewards.append(float(row[metric]))
    if not points:
        raise ConfigError(f"--warm-start {source}: none of its trials finished inside this study's space "
                          f"({skipped} outside it)")
    best = max(rewards) if mode == "max" else min(rewards)
    return WarmStart(source, points, rewards, int(last["trial_id"].nunique()), cost, hours, best, skipped)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value

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
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                return f"{key}={v!r} is not a number"
            if not value.lower <= v <= value.upper:
                return f"{key}={v!r} is outside [{value.lower}, {value.upper}]"
        elif v not in value:
            return f"{key}={v!r} is not one of {list(value)}"
    return None


def typed(pairs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A start point's values typed as TrainConfig types its fields ("0.05" -> 0.05); `where` names it in errors."""
    try:
        config = TrainConfig.from_dict(dict(pairs))
    except ConfigError as e:  # an unknown field or a bad value
        raise ConfigError(f"{where}: {e}") from None
    except (TypeError, ValueError) as e:  # a value of no type the field takes (None, a list...)
        raise ConfigError(f"{where}: {e}") from None
    return {k: getattr(config, k) for k in pairs}


def check_points(points: Sequence[Mapping[str, Any]], space: Mapping[str, Any], where: str,
                 num_samples: int | None = None) -> None:
    """Every point inside the space, none twice (the same configuration with the same seed is a copy, not a
    repeat), and no more of them than the search runs trials."""
    seen = []
    for point in points:
        why = outside(space, point)
        if why:
            raise ConfigError(f"{where} {_spelled(point)}: {why}")
        if point in seen:
            raise ConfigError(f"{where} gives {_spelled(point)} twice: the same configuration with the same seed "
                              f"is a copy, not a repeat; give it once (repeats are --seeds N)")
        seen.append(point)
    if num_samples is not None and len(points) > num_samples:
        raise ConfigError(f"{where} gives {len(points)} points and the search runs {num_samples} trials, so "
                          f"{len(points) - num_samples} would never run: give --num-samples {len(points)} or more, "
                          f"or fewer points")


def parse_start(items: Sequence[str], space: Mapping[str, Any], num_samples: int | None = None) -> list[dict[str, Any]]:
    """--start FIELD=VALUE,FIELD=VALUE (repeatable): one point each, typed as TrainConfig types its fields."""
    points = []
    for item in items:
        pairs = {}
        for part in [p for p in item.split(",") if p.strip()]:
            field, sep, value = part.partition("=")
            if not sep or not field.strip():
                raise ConfigError(f"--start takes FIELD=VALUE,FIELD=VALUE, not {item!r}")
            field = field.strip().replace("-", "_")
            if field in pairs:
                raise ConfigError(f"--start {item}: {field} given twice; give it once")
            pairs[field] = value.strip()
        points.append(typed(pairs, f"--start {item}"))
    check_points(points, space, "--start", num_samples)
    return points


def _spelled(point: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items())


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
    missing = [c for c in ("trial_id", "status", "epoch", metric) if c not in df]
    if missing:
        raise ConfigError(f"--warm-start {source}: its results have no {', '.join(missing)}; name an experiment "
                          f"folder this project wrote")
    if not pd.api.types.is_numeric_dtype(df[metric]):
        raise ConfigError(f"--warm-start {source}: its {metric} is not numeric ({df[metric].dtype})")
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

"""Tune's trials -> results.parquet's frame, and the runner's final table and winner. Torch-free.

results.parquet has one row per trial and epoch; a trial with no readable epoch still has one row
(epoch and metrics empty) so that every trial Tune knows is accounted for.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from typing import Any, Iterable, Sequence

import pandas as pd

from tune_cifar import ranking
from tune_cifar.config import TrainConfig
from tune_cifar.storage import join
from tune_cifar.schema import COUNTS, DIVERGED, ERROR, EVENTS, FINAL_METRICS, FINISHED, INCOMPLETE, METRICS, STOPPED_EARLY

CONFIG_FIELDS = tuple(f.name for f in fields(TrainConfig))
KEY_COLUMNS = ("study", "trial_id", "seed", "status")
RUNTIME_KEYS = ("device", "precision")  # reported by the trainable as resolved; they override the config's "auto"
RECORD_FILE = "epochs.json"  # per trial folder: every epoch's record, kept by progress.EpochRecorder
# A chained study's trial that repeats an earlier study's run is not trained again: its rows are the
# earlier trial's, with `reused_from` = "<study>/<trial id>" (empty for a trial that was trained).
REUSED_FROM = "reused_from"
NOT_OF_THE_RUN = ("download", *RUNTIME_KEYS)  # how a run was launched, not what it computed


def record_of(result: dict[str, Any]) -> dict[str, Any]:
    """What we keep of one Tune result: our metrics and events, the resolved runtime, Tune's iteration."""
    keys = (*METRICS, *EVENTS, *RUNTIME_KEYS, *COUNTS, "training_iteration", "trial_id")
    return {k: result[k] for k in keys if k in result}


def records_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per trained configuration: a fused group's result (`members`: index -> metrics) gives
    one per member reporting, tagged with its `member` index; a plain trial's gives one."""
    if not isinstance(result.get("members"), dict):
        return [record_of(result)]
    return [{**record_of(metrics), "member": int(k), "training_iteration": result.get("training_iteration"),
             "fused_members": len(result["members"])} for k, metrics in result["members"].items()]


def trial_config(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's config as it trained: a Repeater's copy number (`__trial_index__`) is that copy's seed."""
    config = dict(config)
    if "__trial_index__" in config:
        config["seed"] = int(config.pop("__trial_index__"))
    return config


def member_trials(trial_id: str, config: dict[str, Any]) -> list[tuple[str, int | None, dict[str, Any]]]:
    """(trial id, member index, config) of every configuration a Tune trial trained: itself, or each
    member of a fused group (`config["members"]`), as `<group trial id>-<index>`."""
    members = config.get("members")
    if not isinstance(members, list):
        return [(trial_id, None, trial_config(config))]
    return [(f"{trial_id}-{k}", k, member) for k, member in enumerate(members)]


def parse_records(text: str) -> list[dict[str, Any]]:
    try:
        records = json.loads(text)
    except ValueError:
        return []
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []


def read_trial_records(trial_path: str, read: Any, member: int | None = None) -> list[dict[str, Any]]:
    """A trial's epochs (of one fused member, if given) in the order it trained them, each with its
    `iteration`: our epochs.json, completed by whatever Tune's result.json has that it lacks."""
    ours = [r for r in parse_records(read(join(trial_path, RECORD_FILE)) or "[]") if r.get("member") == member]
    tunes = [r for line in parse_result_lines(read(join(trial_path, "result.json")) or "") for r in records_of(line)
             if r.get("member") == member]
    merged = stretches(ours)
    for start, by_epoch in stretches(tunes):
        mine = next((m for s, m in merged if s == start), None)
        if mine is None:
            merged.append((start, by_epoch))  # a stretch only Tune saw (our record could not be written)
        else:
            mine.update({e: r for e, r in by_epoch.items() if e not in mine})  # ours stand
    return [{**r, "iteration": i} for i, r in enumerate(_flatten(merged), start=1)]


def lineage(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records in the order Tune delivered them -> what was trained, in order, each epoch once per stretch
    (fused members one after another)."""
    members = dict.fromkeys(r.get("member") for r in records)
    return [r for m in members for r in _flatten(stretches([r for r in records if r.get("member") == m]))]


def stretches(records: list[dict[str, Any]]) -> list[tuple[Any, dict[int, dict[str, Any]]]]:
    """One member's records, in arrival order, as (start, {epoch: record}) stretches of training.

    A trial trains one stretch from epoch 1; each PBT exploit starts another at the epoch after the
    donor's, named by the first record's `donor`: the epochs before it are the donor's (none missing),
    and epochs the trial trains again after cloning a donor behind it are trained again (counted
    again). Within a stretch an epoch reported again (a retry or a resumed study restarting from the
    trial's own checkpoint) replaces the earlier report, and a repeat of the same exploit start (a
    restart before the trial saved a checkpoint of its own) is the same stretch.
    """
    out: list[tuple[Any, dict[int, dict[str, Any]]]] = []
    for r in records:
        if r.get("epoch") is None:
            continue
        start = (r["donor"], int(r["epoch"])) if r.get("donor") else None
        if not out or (start is not None and out[-1][0] != start):
            out.append((start, {}))
        out[-1][1][int(r["epoch"])] = r
    return out


def _flatten(parts: list[tuple[Any, dict[int, dict[str, Any]]]]) -> list[dict[str, Any]]:
    return [by_epoch[e] for _, by_epoch in parts for e in sorted(by_epoch)]


def parse_result_lines(text: str) -> list[dict[str, Any]]:
    """Tune's result.json, one JSON object per line, read so that no complete record is lost.

    A kill can cut a line short; Tune then appends the resumed trial's next record to that same
    line. The cut part is dropped and the record after it kept.
    """
    decoder = json.JSONDecoder()
    records = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
            continue
        except json.JSONDecodeError:
            pass
        for start in (i for i, ch in enumerate(line) if ch == "{" and i > 0):
            try:
                obj, end = decoder.raw_decode(line, start)
            except json.JSONDecodeError:
                continue
            if end == len(line) and isinstance(obj, dict) and "training_iteration" in obj:
                records.append(obj)
                break
    return records


def trial_status(epochs_done: int | None, planned: int, diverged: bool, errored: bool, ended: bool) -> str:
    """The statuses of schema.STATUSES; `ended`: Tune ended the trial itself (not an interrupted study).

    `errored`: the trainable raised at least once. Tune keeps a trial's error after a retry succeeds, so a
    trial that reached its final epoch is finished whatever came before."""
    if errored and not (epochs_done is not None and epochs_done >= planned):
        return ERROR
    if diverged:
        return DIVERGED
    if epochs_done is not None and epochs_done >= planned:
        return FINISHED
    return STOPPED_EARLY if ended else INCOMPLETE


def trial_frame(study: str, trial_id: str, config: dict[str, Any], records: list[dict[str, Any]],
                errored: bool, ended: bool, resources: dict[str, float]) -> pd.DataFrame:
    """One trial's rows: one per epoch it trained (`iteration` 1, 2, ...; see stretches), or one empty row."""
    rows = [{m: r.get(m) for m in (*METRICS, *EVENTS, *COUNTS)} | {k: r[k] for k in RUNTIME_KEYS if k in r}
            | {"iteration": i} for i, r in enumerate(lineage(records), start=1)]
    frame = pd.DataFrame(rows, columns=[*METRICS, *EVENTS, *COUNTS, *RUNTIME_KEYS])
    if not frame.empty:
        frame["diverged"] = ranking.diverged_epochs(frame)  # NaN/inf (the trainer stopped) or an exploded loss
    diverged = bool(frame["diverged"].any()) if not frame.empty else False
    last = int(frame["epoch"].iloc[-1]) if not frame.empty else None  # where its lineage ended
    status = trial_status(last, int(config.get("epochs", 0)), diverged, errored, ended)
    if frame.empty:
        frame = pd.DataFrame([{m: math.nan for m in METRICS}])
    frame.insert(0, "study", study)
    frame.insert(1, "trial_id", trial_id)
    frame.insert(2, "seed", int(config.get("seed", 0)))
    frame.insert(3, "status", status)
    for name in CONFIG_FIELDS:
        frame[f"config/{name}"] = config.get(name)
    for key in RUNTIME_KEYS:
        if key in frame and frame[key].notna().any():
            frame[f"config/{key}"] = frame[key].dropna().iloc[-1]
    frame["resources/cpu"] = resources.get("cpu", math.nan)
    frame["resources/gpu"] = resources.get("gpu", math.nan)
    return frame.drop(columns=[k for k in RUNTIME_KEYS if k in frame])


def combine(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    columns = [*KEY_COLUMNS, *METRICS, *EVENTS, *COUNTS, *(f"config/{n}" for n in CONFIG_FIELDS), "resources/cpu",
               "resources/gpu", REUSED_FROM]
    if not frames:
        return pd.DataFrame(columns=columns)
    df = pd.concat(frames, ignore_index=True)
    df[REUSED_FROM] = df[REUSED_FROM].astype("string") if REUSED_FROM in df else pd.Series(pd.NA, index=df.index,
                                                                                             dtype="string")
    df["epoch"] = pd.to_numeric(df["epoch"], errors="coerce").astype("Int64")
    df["diverged"] = df["diverged"].astype("boolean").fillna(False).astype(bool)
    for name in EVENTS:
        df[name] = df[name].astype("string") if name in df else pd.Series(pd.NA, index=df.index, dtype="string")
    df["fused_members"] = fused_members(df)
    df["iteration"] = pd.to_numeric(df["iteration"], errors="coerce").astype("Int64")
    return df.sort_values(["trial_id", "iteration"], na_position="first").reset_index(drop=True)


def fused_members(df: pd.DataFrame) -> pd.Series:
    """Members that shared each epoch's cost: the recorded count, 1 where none is (a plain trial, older results)."""
    recorded = pd.to_numeric(df["fused_members"], errors="coerce") if "fused_members" in df else None
    return (recorded if recorded is not None else pd.Series(float("nan"), index=df.index)).fillna(1).astype(int)


def run_key(config: dict[str, Any]) -> str:
    """What makes two trials the same run: every TrainConfig field, epochs, seed and data (data_dir)
    included, but how it was launched."""
    def plain(v):
        v = _plain(v)
        return None if isinstance(v, float) and math.isnan(v) else v
    return json.dumps({k: plain(config.get(k)) for k in CONFIG_FIELDS if k not in NOT_OF_THE_RUN}, sort_keys=True)


def reusable(planned: Sequence[dict[str, Any]], earlier: dict[str, pd.DataFrame]) -> list[tuple[str, str] | None]:
    """For each planned trial's config, (study, trial id) of the trial an earlier study of the chain ran
    to its end (a status ranking.py counts) as the same run (run_key), or None."""
    done: dict[str, tuple[str, str]] = {}
    for name, df in earlier.items():
        last = last_rows(df)
        for _, row in last[last["status"].map(ranking.counts)].iterrows():
            source = row.get(REUSED_FROM)
            where = tuple(source.split("/", 1)) if isinstance(source, str) and source else (name, row["trial_id"])
            done.setdefault(run_key({k: row.get(f"config/{k}") for k in CONFIG_FIELDS}), where)
    return [done.get(run_key(c)) for c in planned]


def reused_rows(study: str, source: tuple[str, str], earlier: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The earlier trial's rows as a trial of `study`, marked as reused from it (no epoch trained again)."""
    name, trial_id = source  # (reusable names the trial that was trained, never a copy of it)
    rows = earlier[name][earlier[name]["trial_id"] == trial_id]
    return rows.assign(study=study, trial_id=f"{trial_id}-from-{name}", **{REUSED_FROM: f"{name}/{trial_id}"})


def trials_without_results(df: pd.DataFrame) -> list[str]:
    return sorted(df.loc[df["epoch"].isna(), "trial_id"].unique())


def last_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: the last epoch it trained (test metrics sit there), or its empty row."""
    order = "iteration" if "iteration" in df and df["iteration"].notna().any() else "epoch"
    return df.sort_values(order, na_position="first", kind="stable").groupby("trial_id", sort=False).tail(1)


def final_table(df: pd.DataFrame, keys: Sequence[str], metric: str, mode: str) -> pd.DataFrame:
    """One row per configuration: final metrics averaged over the trials ranking.py counts, best first.

    A configuration with no counted trial (a scheduler stopped it, it crashed) shows the mean of what
    its trials reached at their last epoch, what ASHA saw when it cut them, and `status` says so; it
    stays unranked.
    """
    cols = [f"config/{k}" for k in keys]
    last = last_rows(df)
    scored = ranking.score_configurations(last, cols, metric)
    counted = last["status"].map(ranking.counts)
    any_counted = counted.groupby([last[c] for c in cols], dropna=False).transform("any")
    shown = last[counted | ~any_counted]
    means = shown.groupby(cols, dropna=False)[list(FINAL_METRICS)].mean()
    table = scored.merge(means, left_on=cols, right_index=True, how="left")
    epochs = last.groupby(cols, dropna=False)["epoch"].max().rename("epochs")
    table = table.merge(epochs, left_on=cols, right_index=True, how="left")
    status = shown.groupby(cols, dropna=False)[["status", "epoch"]].apply(status_note).rename("status")
    table = table.merge(status, left_on=cols, right_index=True, how="left")
    table = ranking.rank(table, cols, mode)
    table["winner"] = ["*" if r == 1 else "" for r in table["rank"]]
    table = table.rename(columns={c: c.removeprefix("config/") for c in cols})
    table = table.rename(columns={"n_counted": "seeds", "n_trials": "trials"})
    return table[[*keys, "seeds", "trials", "epochs", "diverged", *FINAL_METRICS, "status", "winner"]].reset_index(drop=True)


def status_note(trials: pd.DataFrame) -> str:
    """`finished`, `diverged`, or for a configuration none of whose trials counts, where they ended:
    `stopped early at epoch 2 (not ranked)`."""
    if trials["status"].map(ranking.counts).any():
        return DIVERGED if (trials["status"] == DIVERGED).any() else FINISHED
    ends = sorted({(str(s).replace("_", " "), e) for s, e in zip(trials["status"], trials["epoch"])},
                  key=lambda se: (se[0], -1 if pd.isna(se[1]) else se[1]))
    return "; ".join(f"{s} at epoch {int(e)}" if pd.notna(e) else f"{s}, no epoch" for s, e in ends) + " (not ranked)"


def winner(df: pd.DataFrame, keys: Sequence[str], metric: str, mode: str) -> dict[str, Any] | None:
    table = final_table(df, keys, metric, mode)
    row = table[table["winner"] == "*"]
    if row.empty:
        return None
    return {k: _plain(row.iloc[0][k]) for k in keys}


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def format_table(table: pd.DataFrame) -> str:
    return table.to_string(index=False, float_format=lambda v: f"{v:.4f}")

"""The report's tables built from summary(): our value beside the published one and the difference."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.loading import format_value
from analysis.published import MIXUP_TRAIN_ACC_NOTE, TEST_LOSS_NOTE, PublishedTable, tables_for
from analysis.stats import FINAL_METRICS

METRIC_NAMES = {"train_loss": "train loss", "train_acc": "train acc", "val_loss": "val loss",
                "val_acc": "val acc", "test_loss": "test loss", "test_acc": "test acc"}
OURS_NOTE = ("Ours: mean over seeds at the final epoch, +/- the half-width of its 95% Student-t "
             "confidence interval (no interval with one seed). Losses are mean cross-entropy "
             "(nats per image); accuracies are fractions. Report: one seed.")


@dataclass
class Table:
    name: str  # "Table 1", or "lr summary" for a study the report does not have
    title: str
    frame: pd.DataFrame  # numeric, one row per configuration: what the CSV holds
    header: list[str]
    cells: list[list[str]]  # formatted, what the markdown holds
    notes: list[str] = field(default_factory=list)


def study_tables(summary_rows: pd.DataFrame, study: str, published: bool = True) -> list[Table]:
    """Tables for one experiment's summary rows: the report's ones for its study, else (or with `published`
    False: results on generated data) one summary table."""
    specs = tables_for(study) if published else ()
    if not specs:
        return [_table(f"{study} summary", f"Study {study}: final-epoch metrics",
                       _frame(summary_rows, FINAL_METRICS, None), FINAL_METRICS, published=False)]
    return [_table(f"Table {s.number}", s.title, _frame(summary_rows, s.metrics, s), s.metrics, published=True,
                   extra=_notes(s, summary_rows)) for s in specs]


def _frame(summary_rows: pd.DataFrame, metrics, spec: PublishedTable | None) -> pd.DataFrame:
    rows = []
    matched = set()
    for _, r in summary_rows.iterrows():
        key = _published_key(spec, r) if spec else None
        matched.add(key)
        rows.append(_row(r, metrics, spec, key))
    if spec:  # the report's rows we did not run still appear, with our columns blank
        missing = [k for k in spec.rows if k not in matched]
        rows += [_row(None, metrics, spec, k) for k in missing]
        rows.sort(key=lambda row: _position(spec, row["_key"]))
    return pd.DataFrame(rows).drop(columns="_key")


def _row(r: pd.Series | None, metrics, spec: PublishedTable | None, key) -> dict:
    row = {"_key": key,
           "configuration": r["configuration"] if r is not None else f"{spec.field}={format_value(spec.field, key)}",
           "seeds": int(r["n_counted"]) if r is not None else 0,  # seeds that count: none when none finished
           "status": _status(r)}
    for m in metrics:
        ours = r[f"{m}_mean"] if r is not None else math.nan
        row[m] = ours
        row[f"{m}_ci_low"] = r[f"{m}_ci_low"] if r is not None else math.nan
        row[f"{m}_ci_high"] = r[f"{m}_ci_high"] if r is not None else math.nan
        if spec:
            reported = spec.rows[key][spec.metrics.index(m)] if key is not None else math.nan
            row[f"{m}_report"] = reported
            row[f"{m}_diff"] = math.nan if m == "test_loss" else ours - reported
    return row


def _status(r: pd.Series | None) -> str:
    if r is None:
        return "not run"
    flags = [r["ended"]] if r.get("ended") else []  # no counted trial: "stopped early at epoch 2 (not ranked)"
    if r["diverged"]:
        flags.append(f"diverged ({r['n_diverged']}/{r['n_trials']} seeds)")
    if r["incomplete"]:
        flags.append(f"incomplete ({r['n_incomplete']}/{r['n_trials']} seeds)")
    if r.get("n_reused", 0):
        flags.append(f"{r['n_reused']}/{r['n_trials']} seeds reused from an earlier study's run")
    if r.get("n_copies", 0):
        flags.append(f"{r['n_copies']} repeated run(s) of a seed pooled")
    return "; ".join(flags) or "ok"


def _published_key(spec: PublishedTable, r: pd.Series):
    value = r.get(f"config/{spec.field}")
    for key in spec.rows:
        if isinstance(key, str) and value == key:
            return key
        if not isinstance(key, str) and _is_number(value) and math.isclose(float(value), key, rel_tol=1e-9):
            return key
    return None  # a configuration the report did not run: no published value


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _position(spec: PublishedTable, key) -> int:
    keys = list(spec.rows)
    return keys.index(key) if key in keys else len(keys)


def _notes(spec: PublishedTable, summary_rows: pd.DataFrame) -> list[str]:
    notes = []
    epochs = sorted(set(summary_rows["epochs"])) if len(summary_rows) else []
    if epochs and epochs != [spec.epochs]:
        notes.append(f"Our runs trained for {', '.join(map(str, epochs))} epoch(s); the report trained for "
                     f"{spec.epochs}, so the values are not expected to match.")
    if "test_loss" in spec.metrics:
        notes.append("(a) " + TEST_LOSS_NOTE)
    if spec.study == "mixup" and "train_acc" in spec.metrics:
        notes.append(MIXUP_TRAIN_ACC_NOTE)
    return notes


def _table(name, title, frame, metrics, published: bool, extra=()) -> Table:
    header = ["configuration", "seeds"]
    for m in metrics:
        label = METRIC_NAMES[m]
        header += [f"{label} (ours)"] + ([f"{label} (report)", f"{label} diff"] if published else [])
    header.append("status")
    cells = []
    for _, r in frame.iterrows():
        row = [r["configuration"], str(r["seeds"])]
        for m in metrics:
            row.append(_ours(r[m], r[f"{m}_ci_low"], r[f"{m}_ci_high"]))
            if published:
                comparable = m != "test_loss"
                row.append(_num(r[f"{m}_report"]) + ("" if comparable or _blank(r[f"{m}_report"]) else " (a)"))
                row.append(_signed(r[f"{m}_diff"]) if comparable else "not comparable")
        row.append(r["status"])
        cells.append(row)
    return Table(name, title, frame, header, cells, list(extra))


def _blank(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _num(x) -> str:
    return "" if _blank(x) else f"{x:.4f}"


def _signed(x) -> str:
    return "" if _blank(x) else f"{x:+.4f}"


def _ours(mean, low, high) -> str:
    if _blank(mean):
        return ""
    if _blank(low):
        return f"{mean:.4f}"
    return f"{mean:.4f} +/- {(high - low) / 2:.4f}"


def markdown_table(header: list[str], cells: list[list[str]]) -> str:
    def line(values):
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"
    return "\n".join([line(header), line(["---"] * len(header)), *map(line, cells)])


def table_markdown(table: Table) -> str:
    notes = "\n\n".join([OURS_NOTE, *table.notes])
    return f"**{table.name}.** {table.title}\n\n{markdown_table(table.header, table.cells)}\n\n{notes}\n"

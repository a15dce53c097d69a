"""What the studies are and what a command would run, as text: `--list`, `--dry-run`, `--help`.

Nothing here starts Ray, reads data or writes a file.
"""

from __future__ import annotations

import itertools
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from tune_cifar import search
from tune_cifar.config import TrainConfig
from tune_cifar.search import SearchPlan
from tune_cifar.studies import Study, load_study, study_order

if TYPE_CHECKING:
    from tune_cifar.experiment import Plan, Step

CARRIED = "carried from the previous study's winner"


def size(study: Study, seeds: int = 1, epochs: int | None = None, plan: SearchPlan | None = None) -> str:
    plan = plan or study.plan
    n = study.num_trials(seeds, plan)
    per = epochs or study.base_config().epochs
    text = f"{n} trials x {per} epochs = {n * per:,} trial-epochs"
    resolved = plan.resolved(per)
    if plan.scheduler == "asha":
        expected = n * search.asha_expected_trial_epochs(per, resolved.grace_period, resolved.reduction_factor)
        text += f" at most, ~{expected:,.0f} expected under ASHA (grace {resolved.grace_period}, " \
                f"reduction {resolved.reduction_factor})"
    if plan.scheduler == "pbt":
        text += f", PBT exploiting every {resolved.perturbation_interval} epochs"
    return text


def varies(study: Study) -> str:
    return "; ".join(f"{k} in {search.describe(v)}" for k, v in study.space.items())


def listing() -> str:
    """Every study: description, what varies, epochs, trials and trial-epochs (a chain per step and in total)."""
    lines = []
    for name in study_order():
        study = load_study(name)
        lines.append(f"{name}: {study.title}")
        lines.append(f"    {study.description}")
        if study.chain:
            for step in study.chain:
                sub = load_study(step)
                lines.append(f"    step {step}: varies {varies(sub)}; {size(sub)}")
            total = study.trial_epochs()
            lines.append(f"    total: {study.num_trials()} trials, {total:,} trial-epochs; each step carries the "
                         f"earlier winners (by {load_study(study.chain[0]).metric})")
        else:
            lines.append(f"    varies {varies(study)}; search {study.plan.label()}; {size(study)}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def one_line_each() -> str:
    """For --help: every study's name and title."""
    return "\n".join(f"  {name:<12} {load_study(name).title}" for name in study_order())


def settable_fields() -> str:
    return ", ".join(f.name for f in fields(TrainConfig))


def dry_run(plan: Plan) -> str:
    """Every trial's configuration (grid points x seeds) or the sampled space, and the totals, exactly as
    experiment.plan_run planned them (the settings in force, not the study module's)."""
    parts, carried = [], {}
    for step in plan.steps:
        parts.append(_step(step, plan.seeds, carried))
        carried = {**carried, **{k: CARRIED for k in step.study.space}}
    if plan.study.chain:
        trials = sum(s.study.num_trials(len(plan.seeds), s.search) for s in plan.steps)
        total = sum(s.study.num_trials(len(plan.seeds), s.search) * s.epochs for s in plan.steps)
        parts.append(f"{plan.study.name}: {trials} trials, {total:,} trial-epochs in all\n")
    return "\n".join(parts)


def _step(step: Step, seeds: tuple[int, ...], carried: dict[str, Any]) -> str:
    study, plan = step.study, step.search
    carried = {k: v for k, v in carried.items() if k not in study.space}
    lines = [f"{study.name}: {study.description}",
             f"  search {plan.label()}; {size(study, len(seeds), step.epochs, plan)}"]
    if step.scaled:
        lines.append(f"  at {step.epochs} epochs, the study's settings for its {step.own_epochs}: "
                     + ", ".join(f"{k} {own} -> {now}" for k, (own, now) in step.scaled.items()))
    if carried:
        lines.append("  " + ", ".join(f"{k}: {v}" for k, v in carried.items()))
    fixed = {k: v for k, v in step.base.to_dict().items() if k not in study.space and k not in carried
             and k not in ("data_dir", "download")}
    lines.append("  fixed: " + ", ".join(f"{k}={v}" for k, v in fixed.items()))
    sampled = search.sampled_fields(study.space)
    if sampled:
        lines.append("  sampled per trial: " + "; ".join(f"{k} ~ {search.describe(study.space[k])}" for k in sampled))
    grid = {k: v for k, v in study.space.items() if k not in sampled}
    rows = list(itertools.product(*grid.values())) or [()]
    if plan.search in ("grid", "random"):
        header = ["trial", "seed", *grid] + (["sample"] if plan.num_samples > 1 else [])
        table = []
        for n, (values, sample, seed) in enumerate(itertools.product(rows, range(plan.num_samples), seeds), 1):
            table.append([str(n), str(seed), *map(str, values)] + ([str(sample + 1)] if plan.num_samples > 1 else []))
        lines += _table(header, table)
    else:
        lines.append(f"  {plan.num_samples} configurations drawn by {plan.label()} at run time from "
                     + "; ".join(f"{k} in {search.describe(v)}" for k, v in study.space.items())
                     + (f", each with seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else ""))
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)] if rows else map(len, header)
    widths = list(widths)
    fmt = lambda cells: "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return [fmt(header), *(fmt(r) for r in rows)]

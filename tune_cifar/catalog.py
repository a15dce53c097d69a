"""What the studies are and what a command would run, as text: `--list`, `--dry-run`, `--help`.

Nothing here starts Ray, reads data or writes a file.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import fields
from typing import Any

from tune_cifar import search
from tune_cifar.config import TrainConfig
from tune_cifar.results import run_key
from tune_cifar.search import SearchPlan
from tune_cifar.studies import Study, load_study, study_order

CARRIED = "carried from the previous study's winner"
MAX_WINNER_CHOICES = 4096  # chain_repeats tries every choice of earlier winners, up to this many


def size(study: Study, seeds: int = 1, epochs: int | None = None, plan: SearchPlan | None = None) -> str:
    plan = plan or study.plan
    n = study.num_trials(seeds, plan)
    per = epochs or study.base_config().epochs
    text = f"{n} trials x {per} epochs = {n * per:,} trial-epochs"
    if plan.scheduler == "asha":
        resolved = plan.resolved(per)
        expected = n * search.asha_expected_trial_epochs(per, resolved.grace_period, resolved.reduction_factor)
        text += f" at most, ~{expected:,.0f} expected under ASHA (grace {resolved.grace_period}, " \
                f"reduction {resolved.reduction_factor})"
    return text


def chain_repeats(chain: Study, overrides: dict[str, Any] | None = None) -> dict[str, dict[int, str]]:
    """Step -> {index of its grid point: the earlier step whose trial it repeats}: the points that are the
    same run (results.run_key, every seed alike) as a trial of an earlier step, whichever configurations
    the earlier steps pick. The run reuses these (experiment.reuse; more if the winners happen to make
    another point a repeat)."""
    steps = [load_study(name) for name in chain.chain]
    overrides = overrides or {}
    out: dict[str, dict[int, str]] = {}
    for k, step in enumerate(steps):
        choices = [range(len(s.configs())) for s in steps[:k]]
        if math.prod(len(c) for c in choices) > MAX_WINNER_CHOICES:
            out[step.name] = {}
            continue
        always: dict[int, str] | None = None
        for winners in itertools.product(*choices):
            carried: dict[str, Any] = {}
            ran: dict[str, str] = {}
            for earlier, w in zip(steps[:k], winners):
                cfgs = [c.replace(**overrides) for c in earlier.configs(carried)]
                for c in cfgs:
                    ran.setdefault(run_key(c.to_dict()), earlier.name)
                carried = {**carried, **{f: getattr(cfgs[w], f) for f in earlier.space}}
            hits = {j: ran[key] for j, c in enumerate(step.configs(carried))
                    if (key := run_key(c.replace(**overrides).to_dict())) in ran}
            always = hits if always is None else {j: v for j, v in always.items() if hits.get(j) == v}
        out[step.name] = always or {}
    return out


def _repeat_note(sub: Study, repeats: dict[int, str], seeds: int, epochs: int) -> str:
    points = [", ".join(f"{k}={v}" for k, v in zip(sub.space, values))
              for values in itertools.product(*sub.space.values())]
    said = "; ".join(f"{points[j]} is a run the {src} study already made" for j, src in repeats.items())
    return (f"reuses {len(repeats) * seeds} trial(s), not trained again ({said}): "
            f"{len(repeats) * seeds * epochs:,} trial-epochs saved")


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
            repeats, saved = chain_repeats(study), 0
            for step in study.chain:
                sub = load_study(step)
                reuse = repeats[step]
                saved += len(reuse) * sub.base_config().epochs
                note = f"; {_repeat_note(sub, reuse, 1, sub.base_config().epochs)}" if reuse else ""
                lines.append(f"    step {step}: varies {varies(sub)}; {size(sub)}{note}")
            total = study.trial_epochs()
            lines.append(f"    total: {study.num_trials()} trials, {total:,} trial-epochs"
                         + (f" ({total - saved:,} trained, {saved:,} reused)" if saved else "")
                         + f"; each step carries the earlier winners (by {load_study(study.chain[0]).metric})")
        else:
            lines.append(f"    varies {varies(study)}; search {study.plan.label()}; {size(study)}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def one_line_each() -> str:
    """For --help: every study's name and title."""
    return "\n".join(f"  {name:<12} {load_study(name).title}" for name in study_order())


def settable_fields() -> str:
    return ", ".join(f.name for f in fields(TrainConfig))


def dry_run(study: Study, seeds: int, overrides: dict[str, Any], plan: SearchPlan | None = None,
            carried: dict[str, Any] | None = None) -> str:
    """Every trial's configuration (grid points x seeds) or the sampled space, and the totals."""
    if study.chain:
        parts, carried_keys, saved = [], {}, 0
        repeats = chain_repeats(study, overrides)
        for step in study.chain:
            sub = load_study(step)
            parts.append(dry_run(sub, seeds, overrides, carried=carried_keys))
            if repeats[step]:
                epochs = overrides.get("epochs") or sub.base_config().epochs
                parts[-1] += f"  {_repeat_note(sub, repeats[step], seeds, epochs)}\n"
                saved += len(repeats[step]) * seeds * epochs
            carried_keys = {**carried_keys, **{k: CARRIED for k in sub.space}}
        total = study.trial_epochs(seeds, overrides.get("epochs"))
        reused = f" ({total - saved:,} trained, {saved:,} reused from earlier steps)" if saved else ""
        return "\n".join(parts) + f"\n{study.name}: {study.num_trials(seeds)} trials, {total:,} trial-epochs in all{reused}\n"
    plan = plan or study.plan
    epochs = overrides.get("epochs")
    carried = {k: v for k, v in (carried or {}).items() if k not in study.space}
    base = study.base_config().replace(**{k: v for k, v in overrides.items()})
    lines = [f"{study.name}: {study.description}",
             f"  search {plan.label()}; {size(study, seeds, epochs, plan)}"]
    if carried:
        lines.append("  " + ", ".join(f"{k}: {v}" for k, v in carried.items()))
    fixed = {k: v for k, v in base.to_dict().items() if k not in study.space and k not in carried
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
        for n, (values, sample, seed) in enumerate(itertools.product(rows, range(plan.num_samples), range(seeds)), 1):
            table.append([str(n), str(seed), *map(str, values)] + ([str(sample + 1)] if plan.num_samples > 1 else []))
        lines += _table(header, table)
    else:
        lines.append(f"  {plan.num_samples} configurations drawn by {plan.label()} at run time from "
                     + "; ".join(f"{k} in {search.describe(v)}" for k, v in study.space.items())
                     + (f", each with seeds 0..{seeds - 1}" if seeds > 1 else ""))
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)] if rows else map(len, header)
    widths = list(widths)
    fmt = lambda cells: "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return [fmt(header), *(fmt(r) for r in rows)]

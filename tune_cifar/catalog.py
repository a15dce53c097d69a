"""What the studies are and what a command would run, as text: `--list`, `--dry-run`, `--help`.

Nothing here starts Ray, reads data or writes a file.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from tune_cifar import search
from tune_cifar.config import TrainConfig
from tune_cifar.results import run_key
from tune_cifar.search import SearchPlan
from tune_cifar.studies import Study, load_study, study_order

if TYPE_CHECKING:
    from tune_cifar.experiment import Plan, Step

CARRIED = "carried from the previous study's winner"
MAX_WINNER_CHOICES = 4096  # chain_repeats tries every choice of earlier winners, up to this many


def size(study: Study, seeds: int = 1, epochs: int | None = None, plan: SearchPlan | None = None) -> str:
    plan = plan or study.plan
    n = study.num_trials(seeds, plan)
    per = epochs or study.base_config().epochs
    text = f"{n} trials x {per} epochs = {n * per:,} trial-epochs"
    resolved = plan.resolved(per)
    if plan.scheduler == "asha":
        expected = n * search.asha_expected_trial_epochs(per, resolved.grace_period, resolved.reduction_factor,
                                                            resolved.brackets)
        text += f" at most, ~{expected:,.0f} expected under ASHA (grace {resolved.grace_period}, " \
                f"reduction {resolved.reduction_factor})"
    if plan.scheduler == "pbt":
        text += f", PBT exploiting every {resolved.perturbation_interval} epochs"
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


def listing(studies: list[Study] | None = None) -> str:
    """Every study (or `studies`): description, what varies, epochs, trials and trial-epochs (a chain per step
    and in total)."""
    lines = []
    for study in studies or [load_study(name) for name in study_order()]:
        name = study.name
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


def dry_run(plan: Plan) -> str:
    """Every trial's configuration (grid points, random draws, x seeds) or the sampled space, and the
    totals, exactly as experiment.plan_run planned them (the settings in force, not the study module's);
    for a chain, the trials it reuses from its earlier steps (chain_repeats) instead of training."""
    parts, carried, saved = [], {}, 0
    repeats = chain_repeats(plan.study, plan.overrides) if plan.study.chain else {}
    n = len(plan.seeds)
    for step in plan.steps:
        parts.append(_step(step, plan.seeds, carried))
        if repeats.get(step.study.name):
            reuse = repeats[step.study.name]
            parts[-1] += f"  {_repeat_note(step.study, reuse, n, step.epochs)}\n"
            saved += len(reuse) * n * step.epochs
        carried = {**carried, **{k: CARRIED for k in step.study.space}}
    if plan.study.chain:
        trials = sum(s.study.num_trials(n, s.search) for s in plan.steps)
        total = sum(s.study.num_trials(n, s.search) * s.epochs for s in plan.steps)
        reused = f" ({total - saved:,} trained, {saved:,} reused from earlier steps)" if saved else ""
        parts.append(f"{plan.study.name}: {trials} trials, {total:,} trial-epochs in all{reused}\n")
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
    if step.start:
        lines.append(f"  tried first ({len(step.start)}): " + "; ".join(
            ", ".join(f"{k}={v}" for k, v in p.items()) for p in step.start))
    if step.warm is not None:
        w = step.warm
        lines.append(f"  warm-started from {w.source}: {len(w.points)} of its {w.trials} trials told to the searcher "
                     f"as done (best {study.metric} {w.best:.4f}; their {w.trial_epochs:,} trial-epochs count in the "
                     f"budget comparison)" + (f"; {w.skipped} outside this space left out" if w.skipped else ""))
    sampled = search.sampled_fields(study.space)
    if sampled:
        lines.append(("  drawn with --search-seed " + str(plan.search_seed) + ": " if plan.search == "random" else
                      "  sampled per trial: ") + "; ".join(f"{k} ~ {search.describe(study.space[k])}" for k in sampled))
    if plan.search in ("grid", "random"):  # exactly the points the run gives Tune (search.points), each per seed
        header = ["trial", "seed", *study.space]
        table = [[str(n), str(seed), *(str(point[k]) for k in study.space)]
                 for n, (point, seed) in enumerate(itertools.product(search.points(study.space, plan), seeds), 1)]
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

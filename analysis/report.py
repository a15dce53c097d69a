"""`python -m analysis.report RESULTS [--out DIR]`: tables, figures and report.md/.html from a results folder.

Building the report (blocks of text, tables and figures, all in memory) is kept apart from writing
it (`write`): a test can read what the report says without touching the disk.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis import budget, figures
from analysis.loading import (IDENTITY_FIELDS, AnalysisError, format_value, load, read_chains, readable,
                              study_metadata)
from analysis.published import tables_for
from analysis.render import Block, Bullets, Grid, Heading, Image, Para, to_html, to_markdown
from analysis.stats import compare_winner, ranked, summary, trials, welch
from analysis.tables import OURS_NOTE, Table, markdown_table, study_tables, table_markdown
from tune_cifar.schema import USED_ONLY_WHEN
from tune_cifar.storage import is_uri, join, list_files, read_bytes, write_atomic

TITLE = "Reproduction report: MobileNet on CIFAR-100, four hyperparameter studies and beyond"
# The report's winning configuration (its mixup study): what every later study is compared with.
REPORT_BEST = dict(model="mobilenet", lr=0.05, schedule="cosine", weight_decay=5e-4, mixup_alpha=0.2)
METHOD = ("Every number is taken at a trial's final epoch. With several seeds per configuration we give "
          "the mean and a 95% Student-t confidence interval over seeds, and test whether the winner "
          "beats each other configuration beyond seed noise with a two-sided Welch's t-test (unequal "
          "variances, scipy.stats.ttest_ind(equal_var=False)); with more than two configurations the "
          "p-values are Holm-corrected, because the winner was picked from the same data. With one seed "
          "per configuration, as in the report, the comparison is untested. Only trials that reached "
          "their final epoch (or diverged) count; crashed, interrupted and early-stopped trials are "
          "flagged and left out. A configuration with a diverged seed is never ranked above one without.")


@dataclass
class Report:
    """What the report says (blocks) and the files it refers to, not yet written anywhere."""

    blocks: list[Block] = field(default_factory=list)
    files: dict[str, str | bytes] = field(default_factory=dict)  # path relative to the report -> content
    figures: dict[str, Figure] = field(default_factory=dict)  # stem relative to the report -> figure


def build(results: str | Path, log=print) -> Report:
    """Read `results` (a folder or a URI) and build the whole report in memory."""
    with readable(results) as folder:
        df = load(folder)
        meta = study_metadata(folder)
        chains = read_chains(folder)
    t = trials(df)
    s = summary(df)
    report = Report()
    report.files["tables/summary.csv"] = s.to_csv(index=False)
    report.files["tables/trials.csv"] = t.to_csv(index=False)
    report.blocks += [Heading(1, TITLE), Para(_intro(results, df)), Para(METHOD), Para(OURS_NOTE)]
    for number, experiment in enumerate(dict.fromkeys(df["experiment"]), start=1):
        log(f"report: {experiment}")
        report.blocks += _study_section(number, experiment, df[df["experiment"] == experiment],
                                        t[t["experiment"] == experiment], s[s["experiment"] == experiment],
                                        meta.get(experiment, {}), report)
    for name, chain in chains.items():
        report.blocks += _chain_section(name, chain, t, s, meta)
    report.blocks += _budget_section(df, meta, report)
    report.blocks += _ranking_section(t, s, report)
    report.blocks += _cost_section(t)
    return report


def write(report: Report, out: str | Path) -> dict[str, Path]:
    """Write the report's files, figures (PNG + SVG), report.md and a self-contained report.html."""
    out = Path(out)
    for rel, content in report.files.items():
        write_atomic(out / rel, content)
    for stem, fig in report.figures.items():
        figures.save(fig, out / stem)
    md = Path(write_atomic(out / "report.md", to_markdown(report.blocks)))
    page = Path(write_atomic(out / "report.html", to_html(report.blocks, out, TITLE)))
    return {"markdown": md, "html": page, "tables": out / "tables", "figures": out / "figures"}


def write_report(results: str | Path, out: str | Path | None = None, log=print) -> dict[str, Path | str]:
    """Load `results`, write tables/, figures/, report.md and report.html under `out`; return their paths.

    `out` may be a URI (the default for URI results: RESULTS/report): the report is written to a temporary
    folder, then each file is uploaded."""
    out = out or (join(results, "report") if is_uri(results) else Path(results) / "report")
    report = build(results, log)
    if not is_uri(out):
        return write(report, Path(out))
    with tempfile.TemporaryDirectory(prefix="tune-cifar-report-") as tmp:
        paths = write(report, tmp)
        for rel in list_files(tmp):
            write_atomic(join(out, rel), read_bytes(Path(tmp, rel)))
    return {name: join(out, Path(p).relative_to(tmp).as_posix()) for name, p in paths.items()}


def _intro(results: Path, df: pd.DataFrame) -> str:
    return (f"Results read from `{results}`: {df['experiment'].nunique()} experiment(s), "
            f"{df.groupby('experiment')['trial_id'].nunique().sum()} trial(s). The reference is the NTU AI6103 "
            "report (2023), which trained MobileNet v1 on a 40,000/10,000 split of CIFAR-100's training set "
            "with SGD (batch 128, momentum 0.9), one seed per configuration, each study carrying the "
            "previous winner forward.")


def _study_section(number: int, experiment: str, df: pd.DataFrame, t: pd.DataFrame, s: pd.DataFrame,
                   meta: dict, report: Report) -> list[Block]:
    study = df["study"].iloc[0]
    metric, mode = meta.get("metric", "val_acc"), meta.get("mode", "max")
    keys = _rank_keys(s, meta)
    blocks: list[Block] = [Heading(2, f"{number}. {study_title(study, meta)} (`{experiment}`)")]
    if meta.get("description"):
        blocks.append(Para(meta["description"]))
    blocks.append(Bullets(tuple(_setup(df, s, meta, metric, mode))))
    for table in study_tables(s, study):
        blocks += _table_blocks(table, experiment, report)
    blocks += [Heading(3, "Figures")] + _figures(experiment, study, df, meta, report)
    blocks += [Heading(3, "Winner")] + _winner(study, t, s, metric, mode, keys)
    return blocks


def study_title(study: str, meta: dict) -> str:
    """The study module's TITLE, as recorded in study.json (else read from search_spaces/, else the name)."""
    if meta.get("title"):
        return meta["title"]
    try:
        from tune_cifar.studies import load_study

        return load_study(study).title
    except Exception:  # a study whose module is gone: its name will do
        return study


def _rank_keys(s: pd.DataFrame, meta: dict) -> list[str]:
    """The study's varied fields first, then the other identity fields: ties break as the runner breaks them."""
    space = [f"config/{k}" for k in (meta.get("space") or {}) if f"config/{k}" in s]
    return space + [c for c in s.columns if c.startswith("config/") and c not in space]


def _in_use(df: pd.DataFrame, field: str) -> bool:
    """False when `field` only matters under settings no trial here used (step milestones under cosine)."""
    if field not in USED_ONLY_WHEN:
        return True
    other, values = USED_ONLY_WHEN[field]
    return f"config/{other}" not in df or df[f"config/{other}"].isin(values).any()


def _setup(df: pd.DataFrame, s: pd.DataFrame, meta: dict, metric: str, mode: str) -> list[str]:
    space = meta.get("space") or {}
    varied = [f"`{k}` in {{{', '.join(format_value(k, v) for v in values)}}}" for k, values in space.items()]
    fixed = [f"{k}={format_value(k, df[f'config/{k}'].iloc[0])}" for k in IDENTITY_FIELDS
             if k not in space and f"config/{k}" in df and df[f"config/{k}"].nunique(dropna=False) == 1
             and _in_use(df, k)]
    items = [f"**What varied:** {'; '.join(varied) or ', '.join(s['configuration'])}",
             f"**Fixed:** {', '.join(fixed)}"]
    if meta.get("carried"):
        items.append("**Carried from the previous study:** "
                     + ", ".join(f"{k}={format_value(k, v)}" for k, v in meta["carried"].items()))
    seeds = sorted(set(s["n_seeds"]))
    items.append(f"**Seeds per configuration:** {', '.join(map(str, seeds))}; "
                 f"{df['trial_id'].nunique()} trial(s) in all")
    items.append(f"**Ranked by:** final-epoch `{metric}` ({'higher' if mode == 'max' else 'lower'} is better)")
    flagged = s[s["diverged"] | s["incomplete"] | (s["n_stopped_early"] > 0)]
    for _, r in flagged.iterrows():
        what = [f"diverged in {r['n_diverged']}/{r['n_trials']} seed(s)"] if r["diverged"] else []
        what += [f"incomplete: {r['missing']}"] if r["incomplete"] else []
        what += ([f"stopped early by the scheduler in {r['n_stopped_early']}/{r['n_trials']} trial(s), "
                  f"{r['epochs_saved']} trial-epochs saved"] if r["n_stopped_early"] else [])
        if r["n_counted"] == 0:
            what.append("no trial reached its final epoch, so it is not ranked")
        items.append(f"**Flag, {r['configuration']}:** " + "; ".join(what))
    return items


def _table_blocks(table: Table, experiment: str, report: Report) -> list[Block]:
    rel = "tables/" + figures.sanitise(f"{experiment}_{table.name.replace(' ', '').lower()}")
    report.files[f"{rel}.csv"] = table.frame.to_csv(index=False)
    report.files[f"{rel}.md"] = table_markdown(table)
    return ([Heading(3, f"{table.name}. {table.title}"),
             Grid(tuple(table.header), tuple(tuple(c) for c in table.cells))]
            + [Para(n) for n in table.notes] + [Para(f"CSV: [{rel}.csv]({rel}.csv)")])


def _figures(experiment: str, study: str, df: pd.DataFrame, meta: dict, report: Report) -> list[Block]:
    name = study_title(study, meta)
    df = df.dropna(subset=["epoch"])
    made = [(figures.study_overlay(df, f"{name} ({experiment}): all configurations"),
             f"{experiment}_overlay", f"{name}: every configuration's curves")]
    for config, g in df.groupby("configuration", sort=False):
        n = g["trial_id"].nunique()
        made.append((figures.learning_curves(g, f"{experiment}: {config} ({n} seed{'s' if n > 1 else ''})"),
                     f"{experiment}_{config}_curves", f"learning curves, {config}"))
    if "schedule" in (meta.get("space") or {}) or study == "lrs":
        made.append((figures.lr_schedules(df), f"{experiment}_lr_schedule", "learning rate per epoch (Fig 5)"))
    if "mixup_alpha" in (meta.get("space") or {}) or study == "mixup":
        made.append((figures.beta_densities(df["config/mixup_alpha"].unique()), f"{experiment}_beta",
                     "Beta(alpha, alpha) density (Fig 10)"))
    if "donor" in df and df["donor"].notna().any():
        made.append((figures.pbt_lineage(df), f"{experiment}_pbt_lineage",
                     "PBT: learning rate per member and epoch, exploits from their donors"))
    blocks: list[Block] = []
    for fig, stem, alt in made:
        rel = "figures/" + figures.sanitise(stem)
        report.figures[rel] = fig
        blocks.append(Image(f"{rel}.png", alt))
    return blocks


def _winner(study: str, t: pd.DataFrame, s: pd.DataFrame, metric: str, mode: str, keys: list[str]) -> list[Block]:
    if not (s["n_counted"] > 0).any():
        return [Para("No configuration has a trial that reached its final epoch: nothing is ranked.")]
    c = compare_winner(t, s, metric, mode, keys=keys)
    best = ranked(s, metric, mode, keys).iloc[0]
    text = f"**{c.winner}** has the best final-epoch `{metric}`: {best[f'{metric}_mean']:.4f}"
    if c.runner_up is not None:
        runner = s[s["configuration"] == c.runner_up].iloc[0]
        text += (f" against {runner[f'{metric}_mean']:.4f} for {c.runner_up} "
                 f"(margin {c.margin:+.4f}; seeds {c.n_winner} vs {c.n_runner_up}).")
    blocks: list[Block] = [Para(text), Para(f"Comparison with the runner-up: {c.verdict}.")]
    if c.family:
        blocks.append(Para(c.family))
    if best["diverged"]:
        blocks.append(Para("Every configuration had a diverged seed; the ranking is among diverged runs."))
    theirs = _published_winner(study, metric)
    if theirs:
        agree = "agrees" if theirs == c.winner.split(", ")[0] else "differs"
        if c.verdict.startswith("tied"):
            agree = "is a tie"
        blocks.append(Para(f"The report's winner was {theirs} (one seed); ours {agree}."))
    return blocks


def _published_winner(study: str, metric: str) -> str | None:
    for spec in tables_for(study):
        if metric in spec.metrics:
            i = spec.metrics.index(metric)
            key = max(spec.rows, key=lambda k: spec.rows[k][i]) if metric.endswith("acc") else \
                min(spec.rows, key=lambda k: spec.rows[k][i])
            return f"{spec.field}={format_value(spec.field, key)}"
    return None


def _chain_section(name: str, chain: dict, t: pd.DataFrame, s: pd.DataFrame, meta: dict) -> list[Block]:
    order = chain.get("order", [])
    carried = chain.get("carried", {})  # stage -> everything carried into it (cumulative)
    recorded = chain.get("winners", {})  # stage -> the winner the runner carried forward
    rows = []
    for stage in order:
        experiment = f"{name}/{stage}"
        mine = s[s["experiment"] == experiment]
        into = ", ".join(f"{k}={format_value(k, v)}" for k, v in carried.get(stage, {}).items()) or "(nothing)"
        theirs = ", ".join(f"{k}={format_value(k, v)}" for k, v in recorded.get(stage, {}).items())
        if mine.empty:
            rows.append((stage, into, "not run", "", theirs, ""))
            continue
        m = meta.get(experiment, {})
        metric, mode = m.get("metric", "val_acc"), m.get("mode", "max")
        keys = _rank_keys(mine, m)
        if not (mine["n_counted"] > 0).any():
            rows.append((stage, into, "nothing finished", "", theirs, ""))
            continue
        best = ranked(mine, metric, mode, keys).iloc[0]
        verdict = compare_winner(t, mine, metric, mode, keys=keys).verdict.split(":")[0]
        agree = "" if not theirs else ("yes" if theirs == best["configuration"] else "no")
        rows.append((stage, into, f"{best['configuration']} ({best[f'{metric}_mean']:.4f} {metric})",
                     verdict, theirs, agree))
    return [Heading(2, f"Carried-forward chain (`{name}`)"),
            Para(f"The studies ran in the order {' -> '.join(order)}; each started from the winners of the "
                 "ones before it, chosen by validation accuracy. `carried in` is what a study started from; "
                 "`carried forward` is the winner the runner passed on; `margin vs seed noise` is the "
                 "winner-vs-runner-up verdict from the study's section."),
            Grid(("study", "carried in", "winner (this report)", "margin vs seed noise", "carried forward",
                  "same?"), tuple(rows))]


def _budget_section(df: pd.DataFrame, meta: dict, report: Report) -> list[Block]:
    """The greedy chain against searches of the same question, at equal trial-epochs (only when both ran)."""
    b = budget.budget(df, meta)
    if b.empty or b["strategy"].nunique() < 2 or not b["strategy"].str.startswith(budget.CHAIN).any():
        return []
    target, _, _ = budget.first_to_reach(b)
    summary_table = budget.table(b)
    report.files["tables/budget.csv"] = summary_table.to_csv(index=False)
    report.files["tables/budget_trials.csv"] = b.to_csv(index=False)
    curves = budget.curves(b)
    report.files["tables/budget_curves.csv"] = curves.to_csv(index=False)
    report.figures["figures/budget"] = figures.budget_curves(b, curves, target)
    rows = tuple((r["strategy"], str(r["runs"]), f"{r['trial_epochs']:,.0f}", f"{r['gpu_hours']:.3f}",
                  f"{r['best_val_acc']:.4f}" + (f" (sd {r['best_val_acc_sd']:.4f})" if r["runs"] > 1 else ""),
                  f"{r['test_acc_of_best']:.4f}") for _, r in summary_table.iterrows())
    header = ("strategy", "runs", "trial-epochs", "GPU-hours", "best val acc", "its test acc")
    report.files["tables/budget.md"] = markdown_table(list(header), [list(r) for r in rows]) + "\n"
    return [Heading(2, "Search strategies at equal cost"),
            Para("Each strategy's best final-epoch validation accuracy found so far against the trial-epochs it "
                 "had spent, trials taken in the order they ended. A trial that an early-stopping scheduler cut "
                 "is paid for but not counted as found. With several runs (search seeds), the line is their mean "
                 "and the band their range."),
            Grid(header, rows), Para(budget.sentence(b)), Image("figures/budget.png", "best found against budget")]


def _ranking_section(t: pd.DataFrame, s: pd.DataFrame, report: Report) -> list[Block]:
    """Every configuration ever run, ranked by validation accuracy, against the report's best configuration."""
    ranked_rows = s[s["n_counted"] > 0].sort_values("val_acc_mean", ascending=False, kind="stable")
    if len(ranked_rows) < 2:
        return []
    best = {f"config/{k}": v for k, v in REPORT_BEST.items()}
    is_best = pd.Series(True, index=s.index)
    for column, value in best.items():
        if column in s:
            is_best &= s[column] == value
    reference = s[is_best & (s["n_counted"] > 0)].sort_values("n_counted", ascending=False)
    ref = reference.iloc[0] if len(reference) else None
    rows = []
    for rank, (_, r) in enumerate(ranked_rows.iterrows(), start=1):
        diff = test = ""
        if ref is not None and r["epochs"] == ref["epochs"]:
            diff = f"{r['val_acc_mean'] - ref['val_acc_mean']:+.4f}"
            a, b = (t[(t["experiment"] == x["experiment"]) & (t["configuration"] == x["configuration"])
                      & t["finished"]]["val_acc"] for x in (r, ref))
            if r.name != ref.name and min(len(a), len(b)) >= 2:
                test = f"p = {welch(a, b).p_value:.3g}"
        rows.append((str(rank), r["experiment"], r["configuration"], str(r["n_counted"]), str(r["epochs"]),
                     _with_ci(r, "val_acc"), _with_ci(r, "test_acc"), diff, test))
    header = ("rank", "study", "configuration", "seeds", "epochs", "val acc", "test acc",
              "val acc vs report's best", "Welch vs report's best")
    report.files["tables/ranking.md"] = markdown_table(list(header), [list(r) for r in rows]) + "\n"
    where = (f"{ref['experiment']}: {ref['configuration']}, {ref['n_counted']} seed(s)" if ref is not None
             else "not run here, so no difference is given")
    return [Heading(2, "Every configuration, ranked"),
            Para("All configurations that reached their final epoch, best final-epoch validation accuracy first "
                 "(mean +/- 95% CI half-width over seeds). The report's best configuration is lr 0.05, cosine, "
                 f"weight decay 5e-4, mixup alpha 0.2 (its published validation accuracy 0.6983, test 0.7066); ours "
                 f"of it: {where}. Differences are only given between runs of the same length."),
            Grid(header, tuple(rows))]


def _with_ci(r: pd.Series, metric: str) -> str:
    mean, low, high = r[f"{metric}_mean"], r[f"{metric}_ci_low"], r[f"{metric}_ci_high"]
    if pd.isna(mean):
        return ""
    return f"{mean:.4f}" + ("" if pd.isna(low) else f" +/- {(high - low) / 2:.4f}")


def _cost_section(t: pd.DataFrame) -> list[Block]:
    rows = []
    for experiment, g in t.groupby("experiment", sort=False):
        rows.append((experiment, str(len(g)), str(int(g["epochs_done"].sum())), f"{g['wall_s'].sum() / 3600:.3f}",
                     f"{g['gpu_hours'].sum():.3f}", f"{g['cpu_hours'].sum():.3f}"))
    rows.append(("total", str(len(t)), str(int(t["epochs_done"].sum())), f"{t['wall_s'].sum() / 3600:.3f}",
                 f"{t['gpu_hours'].sum():.3f}", f"{t['cpu_hours'].sum():.3f}"))
    return [Heading(2, "Cost"),
            Para("Trial-hours are the summed epoch times (training plus evaluation) of every trial; GPU-hours "
                 "and CPU-hours multiply each trial's time by the GPUs and CPUs Tune gave it (a quarter GPU "
                 "for an hour is 0.25 GPU-hours). Start-up and data loading outside epochs are not counted."),
            Grid(("study", "trials", "epochs run", "trial-hours", "GPU-hours", "CPU-hours"), tuple(rows))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__)
    parser.add_argument("results", help="one study's experiment folder or a results root")
    parser.add_argument("--out", help="output folder (default: RESULTS/report)")
    args = parser.parse_args(argv)
    try:
        paths = write_report(args.results, args.out, log=lambda msg: print(msg, file=sys.stderr))
    except (AnalysisError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(paths["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

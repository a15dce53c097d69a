"""`python -m analysis.report RESULTS [--out DIR]`: tables, figures and report.md/.html from a results folder.

Building the report (blocks of text, tables and figures, all in memory) is kept apart from writing
it (`write`): a test can read what the report says without touching the disk.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis import budget, figures, views
from analysis.loading import (IDENTITY_FIELDS, AnalysisError, format_value, load, read_chains, readable,
                              study_metadata)
from analysis.published import tables_for
from analysis.render import Block, Bullets, Grid, Heading, Image, Para, to_html, to_markdown
from analysis.stats import compare_winner, counted_values, ranked, summary, trials, welch
from analysis.tables import OURS_NOTE, Table, markdown_table, study_tables, table_markdown
from search_spaces._report_best import BEST
from tune_cifar.config import TrainConfig
from tune_cifar.results import REUSED_FROM
from tune_cifar.schema import CONFIGURATION_FIELDS, DATASET_TITLES, USED_ONLY_WHEN
from tune_cifar.storage import is_uri, join, list_files, read_bytes, write_atomic

MODEL_NAMES = {"mobilenet": "MobileNet", "mobilenetv2": "MobileNetV2", "resnet18": "ResNet-18"}
# The report's winning configuration (its mixup study), on every configuration field: what every later
# study is compared with. Left open: the run's length (ours may be shorter; differences are only given
# between runs of one length), which 10,000 images were held out, the arithmetic (fp32/bf16), and the dataset
# (each dataset's configurations are ranked apart, against that configuration on their own dataset).
REPORT_BEST = {k: v for k, v in TrainConfig.from_dict(BEST).to_dict().items()
               if k in CONFIGURATION_FIELDS and k not in ("epochs", "split_seed", "precision", "dataset")}
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

    title: str = "Report"
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
    experiments = list(dict.fromkeys(df["experiment"]))
    for e in experiments:  # what each trained on, with the dataset its configurations name
        info = meta.get(e, {})
        meta[e] = {**info, "data": {**info.get("data", {}), "dataset": dataset_of(df[df["experiment"] == e])}}
    generated = [e for e in experiments if meta[e]["data"].get("generated")]
    datasets = list(dict.fromkeys(meta[e]["data"]["dataset"] for e in experiments))
    report = Report(title=report_title(df, meta))
    report.files["tables/summary.csv"] = s.to_csv(index=False)
    report.files["tables/trials.csv"] = t.to_csv(index=False)
    report.blocks += [Heading(1, report.title)] + ([Para(_generated_warning(generated, experiments, meta))]
                                                   if generated else [])
    report.blocks += [Para(_intro(results, df, datasets)), Para(METHOD), Para(OURS_NOTE)]
    for number, experiment in enumerate(experiments, start=1):
        log(f"report: {experiment}")
        report.blocks += _study_section(number, experiment, df[df["experiment"] == experiment],
                                        t[t["experiment"] == experiment], s[s["experiment"] == experiment],
                                        meta.get(experiment, {}), report)
    across: list[Block] = []  # the sections over every experiment
    for name, chain in chains.items():
        across += _chain_section(name, chain, t, s, meta)
    across += _budget_section(df, meta, report)
    for dataset in datasets:  # configurations are ranked against others of their own dataset only
        ran = [e for e in experiments if meta[e]["data"]["dataset"] == dataset]
        across += _ranking_section(t[t["experiment"].isin(ran)], s[s["experiment"].isin(ran)], report,
                                   published=published_applies(dataset, generated), dataset=dataset,
                                   alone=len(datasets) == 1)
    across += _cost_section(t)
    if generated:
        note = _generated_note(generated, experiments, meta)
        across = _stamped(across, note)
        for rel in [r for r in report.files if r.startswith("tables/ranking")] + ["tables/budget.md"]:
            if rel in report.files:
                report.files[rel] += f"\n{note}\n"
    report.blocks += across
    return report


def dataset_of(df: pd.DataFrame) -> str:
    """The dataset an experiment's trials trained on (TrainConfig.dataset); results from before the field
    are CIFAR-100's, the only dataset there was."""
    values = df["config/dataset"].dropna() if "config/dataset" in df else ()
    return str(values.iloc[0]) if len(values) else "cifar100"


def published_applies(dataset: str, generated: list[str]) -> bool:
    """The report's figures are CIFAR-100's: compared with real CIFAR-100 results only."""
    return dataset == "cifar100" and not generated


def report_title(df: pd.DataFrame, meta: dict) -> str:
    """What the report holds: its models, its data, how many studies. A reproduction only on CIFAR-100."""
    data = [meta.get(e, {}).get("data", {}) for e in dict.fromkeys(df["experiment"])]
    generated = [d for d in data if d.get("generated")]
    classes = sorted({d["classes"] for d in generated if d.get("classes")})
    formats = sorted({DATASET_TITLES[d.get("dataset", "cifar100")] for d in generated} - {"CIFAR-100"})
    real = list(dict.fromkeys(DATASET_TITLES[d.get("dataset", "cifar100")] for d in data if not d.get("generated")))
    parts = []
    if generated:
        details = ([f"{', '.join(map(str, classes))} classes"] if classes else []) + [f"{f} format" for f in formats]
        parts.append("generated data" + (f" ({', '.join(details)})" if details else ""))
    on = " and ".join(parts + real)
    models = ", ".join(MODEL_NAMES.get(m, m) for m in dict.fromkeys(df["config/model"].dropna()))
    n = len(data)
    kind = "Reproduction report" if not generated and real == ["CIFAR-100"] else "Report"
    return f"{kind}: {models} on {on}, {n} stud{'y' if n == 1 else 'ies'}"


def _titles(experiments: list[str], meta: dict) -> str:
    """`CIFAR-100`, `CIFAR-10 or CIFAR-100`: the datasets these experiments' data stands in for."""
    return " or ".join(dict.fromkeys(DATASET_TITLES[meta.get(e, {}).get("data", {}).get("dataset", "cifar100")]
                                     for e in experiments))


def _generated_note(generated: list[str], experiments: list[str], meta: dict) -> str:
    """Said under every table the generated experiments reach (one study's, or those over all of them)."""
    which = ("this study" if len(experiments) == 1 else "every study here" if generated == experiments
             else ", ".join(f"`{e}`" for e in generated))
    return (f"**Generated data:** {which} trained on generated images (`--smoke` or `python -m tune_cifar.data "
            f"synthetic`), not {_titles(generated, meta)}; no published value applies.")


def _generated_warning(generated: list[str], experiments: list[str], meta: dict) -> str:
    return (_generated_note(generated, experiments, meta) + " These numbers show that the pipeline learns; they "
            f"say nothing about {_titles(generated, meta)}, so the published columns and comparisons are left out of "
            "those studies. Each study's **Data** line gives its image counts.")


def _other_dataset_note(dataset: str) -> str:
    return (f"**{DATASET_TITLES[dataset]}:** this study trained on {DATASET_TITLES[dataset]}; the report's "
            "published figures are CIFAR-100's, so no published value applies.")


def _data_line(df: pd.DataFrame, data: dict) -> str:
    """The data a study trained on, with its real sizes (the validation images come out of the training set)."""
    title = DATASET_TITLES[data.get("dataset", "cifar100")]
    what = f"generated images, not {title}" if data.get("generated") else title
    if "train_images" not in data:
        return f"**Data:** {what}"
    fraction = float(df["config/val_fraction"].iloc[0]) if "config/val_fraction" in df else 0.0
    val = round(data["train_images"] * fraction)
    return (f"**Data:** {what}: {data['train_images'] - val:,} training, {val:,} validation and "
            f"{data['test_images']:,} test images of {data['classes']} classes")


def _stamped(blocks: list[Block], note: str) -> list[Block]:
    """`note` right after every table in `blocks`."""
    out: list[Block] = []
    for b in blocks:
        out.append(b)
        if isinstance(b, Grid):
            out.append(Para(note))
    return out


def write(report: Report, out: str | Path) -> dict[str, Path]:
    """Write the report's files, figures (PNG + SVG), report.md and a self-contained report.html."""
    out = Path(out)
    for rel, content in report.files.items():
        write_atomic(out / rel, content)
    for stem, fig in report.figures.items():
        figures.save(fig, out / stem)
    md = Path(write_atomic(out / "report.md", to_markdown(report.blocks)))
    page = Path(write_atomic(out / "report.html", to_html(report.blocks, out, report.title)))
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


def _intro(results: Path, df: pd.DataFrame, datasets: list[str]) -> str:
    others = [DATASET_TITLES[d] for d in datasets if d != "cifar100"]
    return (f"Results read from `{results}`: {df['experiment'].nunique()} experiment(s), "
            f"{df.groupby('experiment')['trial_id'].nunique().sum()} trial(s). The reference is the NTU AI6103 "
            "report (2023), which trained MobileNet v1 on a 40,000/10,000 split of CIFAR-100's training set "
            "with SGD (batch 128, momentum 0.9), one seed per configuration, each study carrying the "
            "previous winner forward." + (f" Studies on {' and '.join(others)} have no published figure to compare "
                                          "with, and are ranked apart." if others else ""))


def _study_section(number: int, experiment: str, df: pd.DataFrame, t: pd.DataFrame, s: pd.DataFrame,
                   meta: dict, report: Report) -> list[Block]:
    study = df["study"].iloc[0]
    metric, mode = meta.get("metric", "val_acc"), meta.get("mode", "max")
    keys = _rank_keys(s, meta)
    data = meta.get("data", {})
    dataset = data.get("dataset", "cifar100")
    note = (_generated_note([experiment], [experiment], {experiment: meta}) if data.get("generated")
            else _other_dataset_note(dataset) if not published_applies(dataset, []) else None)
    blocks: list[Block] = [Heading(2, f"{number}. {study_title(study, meta)} (`{experiment}`)")]
    if meta.get("description"):
        blocks.append(Para(meta["description"]))
    blocks.append(Bullets(tuple(_setup(df, s, meta, metric, mode) + [_data_line(df, data)])))
    for table in study_tables(s, study, published=note is None):  # generated data, CIFAR-10: no published columns
        table.notes[:0] = [note] if note else []  # right under the table, and in its .md file
        blocks += _table_blocks(table, experiment, report)
    blocks += [Heading(3, "Figures")] + _figures(experiment, study, df, meta, report)
    blocks += _search_views(experiment, t, meta, metric, mode, report)
    # (a study named "" has no published winner to compare with)
    blocks += [Heading(3, "Winner")] + _winner(study if note is None else "", t, s, metric, mode, keys)
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
    varied = [f"`{k}` ~ {values}" if isinstance(values, str)  # sampled: study.json's `loguniform(0.001, 1)`
              else f"`{k}` in {{{', '.join(format_value(k, v) for v in values)}}}" for k, values in space.items()]
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
    # curves follow each trial's lineage: an epoch a PBT member trained twice is drawn as the second time
    df = df.dropna(subset=["epoch"]).drop_duplicates(["trial_id", "epoch"], keep="last")
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


def _search_views(experiment: str, t: pd.DataFrame, meta: dict, metric: str, mode: str, report: Report
                  ) -> list[Block]:
    """For a sampled space or more than one varied field (analysis.views.applies): the optimisation history,
    parallel coordinates, hyperparameter importance and, for two fields, their 2-D view; each figure's data
    as CSV beside it. Nothing for a one-field grid, where the tables and curves already say it all."""
    space = meta.get("space") or {}
    if not views.applies(t, space):
        return []
    fields = views.varied_fields(t, space)
    rel = "figures/" + figures.sanitise(f"{experiment}_")
    imp = views.importance(t, fields, metric, mode, space)
    made = []
    if len(views.history(t, metric, mode)):
        made.append((figures.optimisation_history(t, metric, mode), "history", views.history(t, metric, mode),
                     f"optimisation history: each trial's final {metric} in end order, and the best so far"))
    if len(views.results(t, metric)):
        made.append((figures.parallel_coordinates(t, fields, metric, space, mode), "parallel",
                     views.parallel(t, fields, metric, space),
                     f"parallel coordinates of {', '.join(fields)}, coloured by {metric}"))
        if len(fields) == 2:
            made.append((figures.field_scatter(t, *fields, metric=metric, space=space), "scatter",
                         views.parallel(t, fields, metric, space), f"{metric} over {fields[0]} and {fields[1]}"))
    if len(imp):
        made.append((figures.hyperparameter_importance(t, fields, metric, mode, space), "importance", imp,
                     "hyperparameter importance (fANOVA)"))
    blocks: list[Block] = [Heading(3, "Search views")]
    for fig, name, data, alt in made:
        report.figures[rel + name] = fig
        report.files[f"{rel}{name}.csv"] = data.to_csv(index=False)
        blocks += [Image(f"{rel}{name}.png", alt), Para(f"Data: [{rel}{name}.csv]({rel}{name}.csv)")]
    return blocks + [Para(views.importance_note(imp))]


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
    vs = budget.versus_chain(b)
    report.files["tables/budget_vs_chain.csv"] = vs.to_csv(index=False)
    rows = tuple((r["strategy"], str(r["runs"]), f"{r['trial_epochs']:,.0f}", f"{r['gpu_hours']:.3f}",
                  f"{r['best_val_acc']:.4f}" + (f" (sd {r['best_val_acc_sd']:.4f})" if r["runs"] > 1 else ""),
                  f"{r['test_acc_of_best']:.4f}",
                  "" if pd.isna(r["vs_chain_at_its_budget"]) else f"{r['vs_chain_at_its_budget']:+.4f}",
                  "" if pd.isna(r["p_vs_chain"]) else f"{r['p_vs_chain']:.3f}") for _, r in summary_table.iterrows())
    header = ("strategy", "runs", "trial-epochs", "GPU-hours", "best val acc", "its test acc",
              "vs chain at its budget", "Welch p")
    report.files["tables/budget.md"] = markdown_table(list(header), [list(r) for r in rows]) + "\n"
    return [Heading(2, "Search strategies at equal cost"),
            Para("Each strategy's best final-epoch validation accuracy found so far against the trial-epochs it "
                 "had spent, trials taken in the order they ended. A trial that an early-stopping scheduler cut "
                 "is paid for but not counted as found. With several runs (search seeds), the line is their mean "
                 "and the band their range."),
            Grid(header, rows), Para(budget.sentence(b)), Para(budget.noise_sentence(b)),
            Image("figures/budget.png", "best found against budget")]


def _ranking_section(t: pd.DataFrame, s: pd.DataFrame, report: Report, published: bool = True,
                     dataset: str = "cifar100", alone: bool = True) -> list[Block]:
    """Every configuration run on `dataset`, ranked by tune_cifar.ranking's rule on validation accuracy,
    against our run of the report's best configuration (its published figures only on real CIFAR-100).
    With more than one dataset, one section each (`alone` False): heading and file name say which."""
    counted, also = _without_reused(t, s[s["n_counted"] > 0])
    ranked_rows = ranked(counted, "val_acc", "max", [c for c in s.columns if c.startswith("config/")])
    if len(ranked_rows) < 2:
        return []
    reference = counted[is_report_best(counted)].sort_values("n_counted", ascending=False, kind="stable")
    ref = reference.iloc[0] if len(reference) else None
    rows = []
    for rank, (_, r) in enumerate(ranked_rows.iterrows(), start=1):
        diff = test = ""
        if ref is not None and r["epochs"] == ref["epochs"]:
            diff = f"{r['val_acc_mean'] - ref['val_acc_mean']:+.4f}"
            # one sample per distinct seed: copies of a seed (same configuration and seed) are pooled
            a, b = (counted_values(t, x, "val_acc") for x in (r, ref))
            if r.name != ref.name and min(len(a), len(b)) >= 2:
                test = f"p = {welch(a, b).p_value:.3g}"
        seeds = str(r["n_counted"]) + (f" ({r['n_diverged']} diverged)" if r["diverged"] else "")
        label = r["configuration"] + "".join(f" (also the {e} study's {c})" for e, c in also.get(r.name, []))
        rows.append((str(rank), r["experiment"], label, seeds, str(r["epochs"]),
                     _with_ci(r, "val_acc"), _with_ci(r, "test_acc"), diff, test))
    header = ("rank", "study", "configuration", "seeds", "epochs", "val acc", "test acc",
              "val acc vs report's best", "Welch vs report's best")
    report.files["tables/ranking.md" if alone else f"tables/ranking_{dataset}.md"] = markdown_table(
        list(header), [list(r) for r in rows]) + "\n"
    where = (f"{ref['experiment']}: {ref['configuration']}, {ref['n_counted']} seed(s)" if ref is not None
             else "not run here, so no difference is given")
    return [Heading(2, "Every configuration, ranked" + ("" if alone else f" ({DATASET_TITLES[dataset]})")),
            Para("All configurations that reached their final epoch, by the one ranking rule: best mean final-epoch "
                 "validation accuracy first (+/- 95% CI half-width over seeds), a configuration with a diverged "
                 "seed below every one without. The report's best configuration is MobileNet, lr 0.05, cosine, "
                 "weight decay 5e-4, mixup alpha 0.2"
                 + (" (its published validation accuracy 0.6983, test 0.7066 on CIFAR-100)" if published else "")
                 + f"; ours of it: {where}. Differences are only given between runs of the same length."),
            Grid(header, tuple(rows))]


def _without_reused(t: pd.DataFrame, s: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """`s` less the configurations whose counted trials are all a chain's reuse of an earlier study's trials
    (one run, listed once: under the study that trained it), and, per kept row's index, the (experiment,
    configuration) pairs that reused it."""
    reused = t[REUSED_FROM].fillna("").astype(str) != "" if REUSED_FROM in t else pd.Series(False, index=t.index)
    keep, also = [], {}
    for index, r in s.iterrows():
        mine = t[(t["experiment"] == r["experiment"]) & (t["configuration"] == r["configuration"]) & t["finished"]]
        if len(mine) == 0 or not reused[mine.index].all():
            keep.append(index)
            continue
        parent = r["experiment"].rsplit("/", 1)[0] + "/" if "/" in r["experiment"] else ""
        for source in dict.fromkeys(mine[REUSED_FROM]):
            study, trial_id = source.split("/", 1)
            found = t[(t["experiment"] == parent + study) & (t["trial_id"] == trial_id)]
            hit = s[(s["experiment"] == parent + study) & s["configuration"].isin(found["configuration"])]
            for h in hit.index:
                if (r["experiment"], r["configuration"]) not in also.setdefault(h, []):
                    also[h].append((r["experiment"], r["configuration"]))
    return s.loc[keep], also


def is_report_best(s: pd.DataFrame) -> pd.Series:
    """Rows that ran the report's best configuration: equal on every field of REPORT_BEST that is in force
    (cutmix's settings under mixup change nothing, so the cutmix study's mixup row is it)."""
    match = pd.Series(True, index=s.index)
    for name, value in REPORT_BEST.items():
        column = f"config/{name}"
        if column not in s:
            continue
        same = s[column].map(lambda v, value=value: _same(v, value))
        if name in USED_ONLY_WHEN:
            other, values = USED_ONLY_WHEN[name]
            same |= ~s[f"config/{other}"].isin(values) if f"config/{other}" in s else False
        match &= same
    return match


def _same(a, b) -> bool:
    if isinstance(b, float) and not isinstance(a, (str, bool)) and a is not None:
        try:
            return math.isclose(float(a), b, rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return a == b


def _with_ci(r: pd.Series, metric: str) -> str:
    mean, low, high = r[f"{metric}_mean"], r[f"{metric}_ci_low"], r[f"{metric}_ci_high"]
    if pd.isna(mean):
        return ""
    return f"{mean:.4f}" + ("" if pd.isna(low) else f" +/- {(high - low) / 2:.4f}")


def _cost_section(t: pd.DataFrame) -> list[Block]:
    rows = []
    for experiment, g in t.groupby("experiment", sort=False):
        # epochs_trained: a chain's reused trial trained none (its epochs are the earlier study's)
        rows.append((experiment, str(len(g)), str(int(g["epochs_trained"].sum())), f"{g['wall_s'].sum() / 3600:.3f}",
                     f"{g['gpu_hours'].sum():.3f}", f"{g['cpu_hours'].sum():.3f}"))
    rows.append(("total", str(len(t)), str(int(t["epochs_trained"].sum())), f"{t['wall_s'].sum() / 3600:.3f}",
                 f"{t['gpu_hours'].sum():.3f}", f"{t['cpu_hours'].sum():.3f}"))
    return [Heading(2, "Cost"),
            Para("Trial-hours are the summed epoch times (training plus evaluation) of every trial; GPU-hours "
                 "and CPU-hours multiply each trial's time by the GPUs and CPUs Tune gave it (a quarter GPU "
                 "for an hour is 0.25 GPU-hours); the members of a fused group share each epoch's time and "
                 "resources equally, so they add up to the group's. A chain's trial reused from an earlier study's "
                 "run trained nothing: it adds no epochs and no time. Start-up and data loading outside epochs are "
                 "not counted."),
            Grid(("study", "trials", "epochs run", "trial-hours", "GPU-hours", "CPU-hours"), tuple(rows))]


def main(argv: list[str] | None = None) -> int:
    # (`tune-cifar-report` is this function too: pyproject's [project.scripts])
    prog = "tune-cifar-report" if Path(sys.argv[0]).name == "tune-cifar-report" else "python -m analysis.report"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
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

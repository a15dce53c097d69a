"""Run a study through Ray Tune:  python -m tune_cifar.run STUDY [options]

Also runs as a plain script (`ray submit cluster.yaml tune_cifar/run.py lrs` copies only this file),
so it imports the installed package by absolute name.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a file: drop this folder from sys.path (its data.py / config.py would shadow other
    # packages' modules) and, inside a checkout, put the repository root there instead.
    here = Path(__file__).resolve().parent
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != here]
    if (here.parent / "search_spaces").is_dir():
        sys.path.insert(0, str(here.parent))

from tune_cifar import catalog  # noqa: E402
from tune_cifar.config import ConfigError, TrainConfig  # noqa: E402
from tune_cifar.data import RELEASES, DataError, has_dataset, load_cifar, read_cifar, write_synthetic  # noqa: E402
from tune_cifar.experiment import (ExperimentError, Interrupted, RunOptions, check_storage, next_steps,  # noqa: E402
                                   plan_run, run)
from tune_cifar.schema import DEVICES  # noqa: E402
from tune_cifar.search import SAMPLERS, SCHEDULERS, SEARCHES  # noqa: E402
from tune_cifar.storage import StorageError, check_writable  # noqa: E402
from tune_cifar.studies import StudyError, load_study  # noqa: E402

# --smoke: the real MobileNet on generated images, sized so that the report's four studies decide
# something in a few minutes on 2 CPU cores: 40 classes (chance 0.025), pixel noise that takes a few
# epochs to see through, 20% of labels redrawn at random (so no configuration reaches 100% and
# regularisation matters), batches of 64 so that the 800 training images make 13 steps per epoch.
SMOKE = dict(train=1000, test=200, classes=40, noise=30.0, label_noise=0.2, epochs=5, batch_size=64)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=_prog(), description="Run a hyperparameter study with Ray Tune.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"studies (--list says more):\n{catalog.one_line_each()}\n\n--set accepts any TrainConfig field: "
               f"{catalog.settable_fields()}")
    p.add_argument("study", nargs="?", help="the study to run: a name (see --list) or the path of a study file of "
                   "your own (my_study.py; the contract is search_spaces/__init__.py's)")
    p.add_argument("--list", action="store_true", help="list every study (or the one named) with what it varies and "
                   "its size, then exit")
    p.add_argument("--dry-run", action="store_true",
                   help="print every trial's configuration and the totals; start nothing, write nothing")
    p.add_argument("--smoke", action="store_true",
                   help=f"generated data ({SMOKE['train']} train / {SMOKE['test']} test images of {SMOKE['classes']} "
                        f"classes, 10 for --set dataset=cifar10), {SMOKE['epochs']} epochs, batch "
                        f"{SMOKE['batch_size']}: learns in a few minutes")
    p.add_argument("--data-dir", default="./data", help="folder holding the dataset's release (cifar-100-python/, or "
                   "cifar-10-batches-py/ with --set dataset=cifar10); downloaded there when missing (default ./data)")
    p.add_argument("--no-download", dest="download", action="store_false", help="never download; fail if data is missing")
    p.add_argument("--epochs", type=int, help="override every study's epochs")
    p.add_argument("--seeds", type=int, help="repeat every configuration with seeds 0..N-1 (default 1)")
    s = p.add_argument_group("search (defaults: the study module's own)")
    s.add_argument("--search", choices=SEARCHES, help="how configurations are chosen (grid: lists crossed)")
    s.add_argument("--num-samples", type=int, help="configurations a sampler draws (random, optuna, hyperopt)")
    s.add_argument("--scheduler", choices=SCHEDULERS, help="fifo: every trial to its end; asha: stop the worst "
                   "early; pbt: population-based training")
    s.add_argument("--grace-period", type=int, help="ASHA: epochs before the first cut (default epochs // 16)")
    s.add_argument("--reduction-factor", type=int, help="ASHA: 1 in this many trials goes on at each rung (default 4)")
    s.add_argument("--perturbation-interval", type=int, help="PBT: epochs between exploits (default epochs // 10)")
    s.add_argument("--search-seed", type=int, help="seed of the sampler and the scheduler (default 0)")
    s.add_argument("--sampler", choices=SAMPLERS,
                   help="Optuna's sampler, with --search optuna (default tpe; tpe-mv: multivariate TPE)")
    s.add_argument("--startup-trials", type=int, help="Optuna (tpe, tpe-mv, gp, cmaes): random draws before the "
                   "sampler's model takes over (default Optuna's 10: a search of fewer trials is a random search)")
    s.add_argument("--brackets", type=int, help="ASHA: Hyperband brackets, each starting its cuts later "
                   "(grace period x reduction factor per bracket; default 1)")
    s.add_argument("--start", action="append", default=[], metavar="FIELD=VALUE,...",
                   help="a configuration a model-based search (optuna, hyperopt) tries first, every varied field "
                        "given, e.g. --start lr=0.05,schedule=cosine,weight_decay=5e-4,mixup_alpha=0.2 (repeatable; "
                        "over the study's START)")
    s.add_argument("--warm-start", metavar="EXPERIMENT", help="an earlier experiment's folder (<storage>/<study>): its "
                   "finished trials are told to Optuna as already evaluated before it draws (--search optuna)")
    s.add_argument("--fuse", type=int, metavar="K", help="train up to K compatible configurations (seeds included) "
                   "as one fused model per trial, with one trial's resources (grid search, FIFO)")
    r = p.add_argument_group("resources and storage")
    r.add_argument("--gpus-per-trial", type=float,
                   help="GPU share per trial (default 0.25 when the cluster has GPUs and --device is not cpu, else 0)")
    r.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (default 1)")
    r.add_argument("--storage-path", default="./results",
                   help="where experiments go: a local path, NFS, s3:// or gs:// (default ./results)")
    r.add_argument("--address", default=None, help="Ray cluster to join (default RAY_ADDRESS, else a local Ray)")
    r.add_argument("--resume", action="store_true", help="continue an interrupted experiment (Tuner.restore)")
    r.add_argument("--dashboard", action="store_true", help="start the local Ray with its dashboard (off by default: "
                   "it costs a few seconds and a port); a cluster's dashboard is the head node's")
    r.add_argument("--max-concurrent", type=int, help="at most this many trials at once (searchers too)")
    r.add_argument("--max-failures", type=int, help="retries of a crashed trial from its checkpoint (default 2)")
    r.add_argument("--checkpoint-every", type=int,
                   help="epochs between checkpoints, exactly (default: at most 30 per trial and one per 5 minutes of "
                        "its time; a short trial saves none, a killed one repeats at most that much)")
    r.add_argument("--device", choices=DEVICES, help="where trials train (default auto: cuda when the trial has a GPU)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="fix a TrainConfig field for every trial, e.g. --set batch_size=256 (repeatable)")
    p.add_argument("--verbose", action="store_true", help="Tune's own trial tables instead of one progress line")
    return p.parse_args(argv)


def _prog() -> str:
    """The command as the user typed it: the `tune-cifar` script (pyproject's [project.scripts]) or the module."""
    return "tune-cifar" if Path(sys.argv[0]).name == "tune-cifar" else "python -m tune_cifar.run"


def validate(args: argparse.Namespace) -> None:
    """Bad option values, caught before Ray starts or anything is written."""
    g = args.gpus_per_trial
    problems = [
        (args.seeds is not None and args.seeds < 1, f"--seeds must be >= 1, not {args.seeds}"),
        (args.epochs is not None and args.epochs < 1, f"--epochs must be >= 1, not {args.epochs}"),
        (g is not None and (g < 0 or (g > 1 and not float(g).is_integer())),
         f"--gpus-per-trial must be a fraction in [0, 1] or a whole number of GPUs, not {g}"),
        (g and args.device == "cpu",
         f"--gpus-per-trial {g} with --device cpu: CPU trials use no GPU; drop --gpus-per-trial or use --device auto"),
        (args.cpus_per_trial is not None and args.cpus_per_trial <= 0,
         f"--cpus-per-trial must be > 0, not {args.cpus_per_trial}"),
        (args.max_concurrent is not None and args.max_concurrent < 1, "--max-concurrent must be >= 1"),
        (args.max_failures is not None and args.max_failures < 0, "--max-failures must be >= 0"),
        (args.checkpoint_every is not None and args.checkpoint_every < 1, "--checkpoint-every must be >= 1"),
        (args.dashboard and (args.address or os.environ.get("RAY_ADDRESS")),
         "--dashboard starts a local Ray's dashboard, but this run joins a cluster; open the head node's instead "
         "(ray start --head --include-dashboard=true, port 8265)"),
    ]
    for bad, message in problems:
        if bad:
            raise ConfigError(message)
    overrides(args)  # names the field of a bad --set value


def check_data(args: argparse.Namespace, dataset: str) -> None:
    """Data that is missing and may not be downloaded: its one-line DataError, for the dry run too."""
    if not args.smoke and not args.download and not has_dataset(args.data_dir, dataset):
        load_cifar(args.data_dir, download=False, dataset=dataset)


# TrainConfig fields that have an option of their own, which is their one source: the schedulers, the
# progress totals and the experiment's record read the option, so a --set beside it would disagree.
OWN_OPTIONS = {"epochs": "--epochs N", "device": "--device", "data_dir": "--data-dir", "download": "--no-download"}


def overrides(args: argparse.Namespace) -> dict[str, object]:
    """--set FIELD=VALUE pairs, typed and validated by TrainConfig."""
    pairs: dict[str, str] = {}
    for item in args.overrides:
        field, sep, value = item.partition("=")
        field = field.strip().replace("-", "_")
        if not sep or not field:
            raise ConfigError(f"--set takes FIELD=VALUE, not {item!r}")
        if field in OWN_OPTIONS:
            raise ConfigError(f"--set {item.strip()}: {field} has an option of its own, its one source; use "
                              f"{OWN_OPTIONS[field]} instead")
        if field in pairs and pairs[field] != value.strip():
            raise ConfigError(f"--set {field} given twice ({pairs[field]} and {value.strip()}); pass it once")
        pairs[field] = value.strip()
    typed = TrainConfig.from_dict(pairs)
    return {k: getattr(typed, k) for k in pairs}


# Run options a command line may leave out; left out, they take RunOptions' defaults, or on --resume
# the values the experiment was started with.
OPTIONAL = ("epochs", "seeds", "gpus_per_trial", "cpus_per_trial", "max_concurrent", "max_failures",
            "checkpoint_every", "device", "fuse")
PLAN_OPTIONS = ("search", "num_samples", "scheduler", "grace_period", "reduction_factor", "perturbation_interval",
                "search_seed", "sampler", "startup_trials", "brackets")


def options(args: argparse.Namespace, data_dir: str) -> tuple[RunOptions, set[str]]:
    """The run options, and the names of those the command line gave."""
    given = {name for name in OPTIONAL if getattr(args, name) is not None}
    values = {name: getattr(args, name) for name in given}
    if args.smoke and args.epochs is None:
        values["epochs"] = SMOKE["epochs"]
    plan = tuple((name, getattr(args, name)) for name in PLAN_OPTIONS if getattr(args, name) is not None)
    extra = ({"batch_size": SMOKE["batch_size"]} if args.smoke else {}) | overrides(args)
    opts = RunOptions(storage_path=args.storage_path, data_dir=data_dir, download=args.download,
                      resume=args.resume, extra=tuple(extra.items()), plan=plan, verbose=args.verbose,
                      start=tuple(args.start), warm_start=args.warm_start, **values)
    return opts, given


def smoke_classes(dataset: str) -> int:
    """How many classes the smoke data of `dataset` has: SMOKE's 40, or all 10 of CIFAR-10."""
    return min(SMOKE["classes"], RELEASES[dataset].classes)


def write_smoke(folder: str, dataset: str = "cifar100") -> None:
    """The smoke data in `dataset`'s format: its 40 classes, or all 10 of CIFAR-10 (chance 0.1)."""
    classes = smoke_classes(dataset)
    write_synthetic(folder, SMOKE["train"], SMOKE["test"], seed=0, classes=classes, noise=SMOKE["noise"],
                    label_noise=SMOKE["label_noise"], dataset=dataset)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.list:  # every study, or the one named (a study file's too)
            print(catalog.listing([load_study(args.study)] if args.study else None), end="")
            return 0
        if not args.study:
            raise StudyError("name a study to run; `python -m tune_cifar.run --list` lists them")
        study = load_study(args.study)
        validate(args)
        opts, given = options(args, args.data_dir)
        plan = plan_run(study, opts)  # the dry run and the run: one set of refusals, all before Ray starts
        check_writable(args.storage_path)  # a probe file written and deleted: an object store's errors show here
        # on --resume, the plan with the saved experiment's options, which run() takes for what was left out
        in_force = check_storage(plan, opts, given)  # (it reads the storage: the probe's one-line errors come first)
        dataset = in_force.dataset  # the study's, or --set dataset=...: known before any data is read
        check_data(args, dataset)
        if args.dry_run:
            print(catalog.dry_run(in_force), end="")
            return 0
        if args.smoke:
            # Generated, read into memory, then deleted: trials get the arrays through Ray's object store.
            with tempfile.TemporaryDirectory(prefix="tune-cifar-smoke-") as smoke_dir:
                write_smoke(smoke_dir, dataset)
                data, data_dir = read_cifar(smoke_dir, dataset), "<generated>"
        else:
            data, data_dir = load_cifar(args.data_dir, args.download, dataset), str(Path(args.data_dir).absolute())
        _start_ray(args.address, args.dashboard)
        frames = run(study, data, replace(opts, data_dir=data_dir), given)
    except (ConfigError, DataError, StudyError, ExperimentError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (Interrupted, KeyboardInterrupt) as e:
        print(f"interrupted: {e or 'stopped'}; finish with: python -m tune_cifar.run {args.study} --resume "
              f"--storage-path {args.storage_path} (and the same options)", file=sys.stderr)
        return 130
    print(next_steps(args.storage_path, study), flush=True)
    failed = sum(df.attrs.get("failed_trials", 0) for df in frames.values())
    if failed:
        print(f"error: {failed} trial(s) failed (their errors are in the trial folders under {args.storage_path}); "
              f"the others finished and are in results.parquet; --resume retries the failed ones", file=sys.stderr)
        return 1
    return 0


def _start_ray(address: str | None, dashboard: bool = False) -> None:
    # With --checkpoint-every 1 on short trials Tune warns that its state is saved often; that is the point there.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray reports usage statistics over the network unless told not to; nothing here reaches the network
    # but the optional CIFAR download (a user may still set RAY_USAGE_STATS_ENABLED=1)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    print(f"connecting to Ray at {address}" if address else "starting a local Ray", file=sys.stderr)
    if address:
        ray.init(address=address)
    else:
        context = ray.init(include_dashboard=dashboard)
        if dashboard:
            token = Path.home() / ".ray" / "auth_token"  # Ray 2.5x+ turns on token auth (RAY_AUTH_MODE)
            note = f" (Ray's token auth is on: it wants the token in {token})" if token.exists() else ""
            print(f"Ray dashboard: http://{context.dashboard_url}{note}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

"""A trial's exact configuration and seed from its run_info.json, for `python -m tune_cifar.train --from`:

    python -m tune_cifar.train --from results/lr/<trial folder>/run_info.json [--set FIELD=VALUE ...]
    python -m tune_cifar.train --from results/lr/<group folder>/run_info.json --member 1   # a fused member

No Ray. With the same data, on CPU, every epoch's metrics equal the ones the trial recorded: the config is
the one it resolved (device and precision included) and the loop uses as many threads as the trial had
CPUs, since the thread count decides how CPU kernels split their sums.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from typing import Any

from tune_cifar.config import ConfigError, TrainConfig, add_config_flags
from tune_cifar.storage import read_text

GENERATED = "<generated>"  # the data_dir a --smoke run records (tune_cifar/run.py)
_UNSET = object()


def add_flags(parser: argparse.ArgumentParser) -> None:
    r = parser.add_argument_group("rerun a trial")
    r.add_argument("--from", dest="rerun", metavar="RUN_INFO",
                   help="a trial's run_info.json (path or URI): train its exact configuration and seed again")
    r.add_argument("--member", type=int, metavar="K", help="with --from on a fused group's run_info.json: the "
                   "member to rerun (its trial id ends in -K)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="with --from: change one field of the recorded configuration (repeatable)")


def config_from_run_info(args: argparse.Namespace, argv: list[str] | None) -> TrainConfig:
    """The recorded configuration with the --set changes; sets torch's thread count to the trial's CPUs and
    says on stderr what is rerun."""
    import torch

    given = _config_flags_given(argv)
    if given:
        raise ConfigError(f"--from takes the trial's configuration; change a field with --set {given[0]}=VALUE, "
                          f"not --{given[0].replace('_', '-')}")
    info = read_run_info(args.rerun)
    recorded, which = member_config(info, args.member, args.rerun)
    changes = parse_sets(args.overrides)
    data = info.get("data") or {}
    if recorded.get("data_dir") == GENERATED and "data_dir" not in changes:
        raise ConfigError(f"the trial trained on generated data, which was not kept: write it again and pass "
                          f"--set data_dir=DIR ({regenerate_hint(data, recorded.get('dataset', 'cifar100'))})")
    if data.get("generated") and "download" not in changes:
        changes["download"] = False  # a missing folder must not become the real CIFAR-100 in its place
    cfg = TrainConfig.from_dict({**recorded, **changes})
    threads = max(1, int((info.get("resources") or {}).get("cpu") or 1))  # as the trainable sets them
    torch.set_num_threads(threads)
    study = _json_at(args.rerun.rsplit("/", 2)[0] + "/study.json") if "/" in args.rerun else None
    if ((study or {}).get("search") or {}).get("scheduler") == "pbt":
        print("warning: PBT changed this trial's hyperparameters (and cloned donors' weights) as it ran; this "
              "reruns the configuration it started with", file=sys.stderr)
    changed = ", ".join(f"{k}={getattr(cfg, k)!r}" for k in changes) or "nothing changed"
    print(f"rerunning {which} of study {info.get('study')!r} (seed {cfg.seed}, {threads} thread(s) as it had; "
          f"{changed})", file=sys.stderr)
    return cfg


def read_run_info(path: str) -> dict[str, Any]:
    text = read_text(path)
    if text is None:
        raise ConfigError(f"--from {path}: no such file; pass a trial folder's run_info.json")
    try:
        info = json.loads(text)
    except ValueError:
        info = None
    if not isinstance(info, dict) or not ("config" in info or "members" in info):
        raise ConfigError(f"--from {path}: not a trial's run_info.json (no config in it)")
    return info


def member_config(info: dict[str, Any], member: int | None, path: str) -> tuple[dict[str, Any], str]:
    """(the config to rerun, which trial it is): the trial's, or a fused group's member's own."""
    members = info.get("members")
    if not members:
        if member is not None:
            raise ConfigError(f"--member {member}: {path} is one trial's, not a fused group's; drop --member")
        return info["config"], f"trial {info.get('trial_id')}"
    ids = ", ".join(f"{k} ({m['trial_id']})" for k, m in enumerate(members))
    if member is None or not 0 <= member < len(members):
        asked = "" if member is None else f"there is no member {member}; "
        raise ConfigError(f"{path} is a fused group of {len(members)} members: {asked}pick one with --member K "
                          f"(K: {ids})")
    return members[member]["config"], f"trial {members[member]['trial_id']}"


def parse_sets(items: list[str]) -> dict[str, Any]:
    """--set FIELD=VALUE pairs as strings (TrainConfig types them and names a bad one)."""
    pairs: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise ConfigError(f"--set takes FIELD=VALUE, not {item!r}")
        pairs[name] = value.strip()
    TrainConfig.from_dict(pairs)  # unknown fields and bad values are refused by name
    return pairs


def regenerate_hint(data: dict[str, Any], dataset: str = "cifar100") -> str:
    """How to write the trial's generated data again: a --smoke run's exactly, else what is known of it."""
    from tune_cifar.data import RELEASES
    from tune_cifar.run import SMOKE, smoke_classes

    dataset = dataset if dataset in RELEASES else "cifar100"
    classes = smoke_classes(dataset)
    sizes = (data.get("train_images"), data.get("test_images"), data.get("classes"))
    if sizes == (SMOKE["train"], SMOKE["test"], classes):
        flag = f" --dataset {dataset}" if dataset != "cifar100" else ""
        return (f"a --smoke run's: python -m tune_cifar.data synthetic{flag} --out DIR --train {SMOKE['train']} "
                f"--test {SMOKE['test']} --classes {classes} --noise {SMOKE['noise']:g} "
                f"--label-noise {SMOKE['label_noise']:g}")
    return (f"{sizes[0]} train and {sizes[1]} test images of {sizes[2]} classes, from python -m tune_cifar.data "
            f"synthetic with the options it was written with")


def warn_if_other_data(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    """A line on stderr when the data read differs from what the trial recorded (its metrics will differ)."""
    recorded = read_run_info(args.rerun).get("data") or {}
    differ = [f"{k} {recorded[k]} there, {summary[k]} here" for k in summary if k in recorded and recorded[k] != summary[k]]
    if differ:
        print(f"warning: this data differs from the trial's ({'; '.join(differ)}); its metrics will not match",
              file=sys.stderr)


def _json_at(path: str) -> dict[str, Any] | None:
    try:
        value = json.loads(read_text(path) or "null")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _config_flags_given(argv: list[str] | None) -> list[str]:
    """The TrainConfig fields given as their own flags (`--lr 0.1`), even at their default value."""
    probe = argparse.ArgumentParser(add_help=False)
    add_config_flags(probe)
    probe.set_defaults(**{f.name: _UNSET for f in fields(TrainConfig)})
    known, _ = probe.parse_known_args(sys.argv[1:] if argv is None else argv)
    return [f.name for f in fields(TrainConfig) if getattr(known, f.name) is not _UNSET]

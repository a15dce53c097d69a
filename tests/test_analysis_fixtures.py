"""Hand-written results in the layout the Tune side writes, with metrics the tests choose.

No tests here; test_analysis*.py import these builders (tests/ is on sys.path under pytest).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from tune_cifar.config import TrainConfig

BASE = TrainConfig(epochs=4, data_dir="/tmp/data", device="cpu").to_dict()


def final_acc(index: int, seed: int) -> float:
    """Configuration `index` of a study reaches 0.3 + 0.1 * index, plus 0.01 per seed."""
    return 0.3 + 0.1 * index + 0.01 * seed


def epoch_rows(config: dict, index: int, seed: int, epochs: int, diverge_at: int | None = None) -> list[dict]:
    rows = []
    for epoch in range(1, epochs + 1):
        acc = final_acc(index, seed) * epoch / epochs
        diverged = diverge_at is not None and epoch >= diverge_at
        lr = config["lr"] * ((1 + math.cos(math.pi * (epoch - 1) / epochs)) / 2 if config["schedule"] == "cosine" else 1)
        row = {"epoch": epoch, "lr": lr, "train_loss": math.nan if diverged else 4.0 / epoch,
               "train_acc": acc + 0.05, "val_loss": math.nan if diverged else 4.2 - 2.0 * epoch / epochs,
               "val_acc": 0.01 if diverged else acc, "diverged": diverged,
               "images_per_s": 1000.0, "epoch_s": 36.0, "timestamp": 1_700_000_000 + 40 * epoch}
        if epoch == epochs or diverged:
            row.update(test_loss=row["val_loss"] + 0.1, test_acc=row["val_acc"] - 0.01)
        rows.append(row)
        if diverged:
            break  # the trainer stops a diverged trial
    return rows


def write_study(root: Path, study: str, space: dict, *, seeds=(0,), epochs: int = 4, chain: str | None = None,
                carried: dict | None = None, diverge: dict | None = None, drop: dict | None = None,
                crash: dict | None = None, parquet: bool = False, gpu: float = 0.25) -> Path:
    """One experiment folder: study.json plus a Tune trial folder per configuration and seed.

    diverge/drop/crash map (config index, seed) -> epoch: diverges there, lacks that result line,
    or stops after it (with Tune's error.txt).
    """
    folder = root / study
    folder.mkdir(parents=True)
    base = {**BASE, "epochs": epochs, **(carried or {})}
    (folder / "study.json").write_text(json.dumps({
        "study": study, "description": f"hand-built {study} study", "metric": "val_acc", "mode": "max",
        "space": space, "base": base, "carried": carried or {}, "seeds": len(seeds),
        "resources": {"cpu": 1.0, "gpu": gpu}, "chain": chain}))
    key = next(iter(space))
    frames = []
    for index, value in enumerate(space[key]):
        for seed in seeds:
            config = {**base, key: value, "seed": seed}
            trial_id = f"{study}_{index:05d}_{seed}"
            rows = epoch_rows(config, index, seed, epochs, (diverge or {}).get((index, seed)))
            if (index, seed) in (crash or {}):
                rows = rows[:crash[(index, seed)]]
            rows = [r for r in rows if r["epoch"] != (drop or {}).get((index, seed))]
            trial = folder / f"train_{trial_id}_{key}={value}_2024-01-01_00-00-00"
            trial.mkdir()
            (trial / "params.json").write_text(json.dumps(config))
            tune_keys = [{"trial_id": trial_id, "training_iteration": r["epoch"], "time_this_iter_s": r["epoch_s"],
                          "done": False, "config": config} for r in rows]
            (trial / "result.json").write_text("".join(json.dumps({**r, **k}) + "\n" for r, k in zip(rows, tune_keys)))
            (trial / "run_info.json").write_text(json.dumps({
                "trial_id": trial_id, "config": config, "seed": seed, "versions": {}, "git_revision": "abc",
                "resources": {"cpu": 1.0, "gpu": gpu}, "gpu_ids": [0], "hostname": "h", "start_time": 0,
                "study": study}))
            if (index, seed) in (crash or {}):
                (trial / "error.txt").write_text("RuntimeError: killed\n")
            frames.append(_parquet_rows(study, trial_id, seed, config, rows, gpu, "error" if (index, seed) in (crash or {})
                                        else ("diverged" if (index, seed) in (diverge or {}) else "finished")))
    if parquet:
        pd.concat(frames, ignore_index=True).to_parquet(folder / "results.parquet")
    return folder


def _parquet_rows(study, trial_id, seed, config, rows, gpu, status) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for name in ("test_loss", "test_acc"):
        if name not in df:
            df[name] = math.nan
    head = pd.DataFrame({"study": study, "trial_id": trial_id, "seed": seed, "status": status}, index=df.index)
    cfg = pd.DataFrame({f"config/{k}": [v] * len(df) for k, v in config.items()}, index=df.index)
    res = pd.DataFrame({"resources/cpu": 1.0, "resources/gpu": gpu}, index=df.index)
    return pd.concat([head, cfg, df, res], axis=1)


def write_root(root: Path, seeds=(0, 1)) -> Path:
    """All four studies plus the chained `all` run of lr and lrs, as a results root."""
    write_study(root, "lr", {"lr": [0.01, 0.05, 0.5]}, seeds=seeds, parquet=True)
    write_study(root, "lrs", {"schedule": ["constant", "cosine"]}, seeds=seeds)
    write_study(root, "wd", {"weight_decay": [0.0001, 0.0005]}, seeds=(0,))
    write_study(root, "mixup", {"mixup_alpha": [0.0, 0.2]}, seeds=(0,))
    chain_root = root / "all"
    write_study(chain_root, "lr", {"lr": [0.01, 0.05]}, chain="all")
    write_study(chain_root, "lrs", {"schedule": ["constant", "cosine"]}, chain="all", carried={"lr": 0.05})
    (chain_root / "chain.json").write_text(json.dumps({
        "order": ["lr", "lrs", "wd", "mixup"], "carried": {"lr": {}, "lrs": {"lr": 0.05}},
        "winners": {"lr": {"lr": 0.05}, "lrs": {"schedule": "cosine"}}}))
    return root

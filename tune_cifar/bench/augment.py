"""Part 1: augmentation + batching, ours on the device against torchvision's transforms in a DataLoader."""

from __future__ import annotations

import argparse
import itertools
from typing import Any

import torch

from tune_cifar.bench.baseline import template_loader
from tune_cifar.bench.common import device_data, interleaved_best, log, sync
from tune_cifar.data import EpochPlan


def bench_augment(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    dd = device_data(args.augment_images, args.batch_size, device, args.data_dir)
    epoch = itertools.count()  # a fresh plan every pass, as every training epoch draws one

    def ours() -> None:
        plan = EpochPlan.draw(dd.num_train, 0, next(epoch)).to(device)
        for x, y in dd.train_batches(plan, args.batch_size):
            pass
        sync(device)

    def baseline(loader: torch.utils.data.DataLoader) -> Any:
        def run() -> None:
            for x, y in loader:
                x, y = x.to(device), y.to(device)
            sync(device)
        return run

    runs = {"ours": ours, **{str(w): baseline(template_loader(dd, args.batch_size, w)) for w in args.workers}}
    log(f"augment: ours and torchvision's transforms in DataLoaders with {args.workers} workers, "
        f"{dd.num_train} images, {args.repeats} rounds")
    seconds = interleaved_best(runs, args.repeats)
    del runs  # stops the loaders' persistent workers
    ours_rate = dd.num_train / seconds.pop("ours")
    return {"images": dd.num_train, "batch_size": args.batch_size, "ours_images_per_s": ours_rate,
            "dataloader": {w: {"images_per_s": dd.num_train / t, "speedup": ours_rate * t / dd.num_train}
                           for w, t in seconds.items()}}

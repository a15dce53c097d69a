"""Batch mixing: mixup (Zhang et al. 2018) and cutmix (Yun et al. 2019), drawn per epoch, applied on the device.

An epoch's draws are made on the host once, from generators seeded by (seed, epoch, stream), and
moved to the device once; a step indexes them with a Python int, so no step waits on the host and a
run resumed at epoch k draws exactly what the uninterrupted run drew. Streams, the last entry of
the SeedSequence [seed, epoch, stream] (shared with data.epoch_generator):

    0  data.EpochPlan: shuffling, crop offsets, flips
    1  mixup: lambdas (numpy)
    2  mixup: per-batch permutations (torch)
    3  cutmix: lambdas, box centres and which batches are cut-mixed (numpy)
    4  cutmix: per-batch permutations (torch)

Mixup and cutmix never run together: TrainConfig.mix picks one (see `draw_mixing`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tune_cifar.config import TrainConfig
from tune_cifar.data import IMAGE_SHAPE, epoch_generator

MIXUP_LAMBDA, MIXUP_PERM, CUTMIX_DRAWS, CUTMIX_PERM = 1, 2, 3, 4  # the streams above


def mixup(x: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """lam * x + (1 - lam) * x[perm]; lam is a 0-d tensor so no value leaves the device."""
    return lam * x + (1 - lam) * x[perm]


def cutmix(x: torch.Tensor, box: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) with the pixels of `box` (4,) = (y0, y1, x0, x1), half-open, taken from x[perm].

    The box stays a device tensor: the (H, W) mask comes from comparing aranges with it, not from slicing.
    """
    rows = torch.arange(x.shape[-2], device=x.device)
    cols = torch.arange(x.shape[-1], device=x.device)
    inside = ((rows >= box[0]) & (rows < box[1]))[:, None] & ((cols >= box[2]) & (cols < box[3]))[None, :]
    return torch.where(inside, x[perm], x)  # (B, C, H, W)


def mixup_loss_and_hits(logits: torch.Tensor, y: torch.Tensor, y_mix: torch.Tensor, lam: torch.Tensor,
                        label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean mixed cross-entropy, and the lambda-weighted count of correct predictions (Zhang et al.).

    Serves cutmix too, with lam = the share of the image left unpasted. Label smoothing applies to
    each of the two terms, as F.cross_entropy(label_smoothing=) would to each target.
    """
    loss = (lam * F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            + (1 - lam) * F.cross_entropy(logits, y_mix, label_smoothing=label_smoothing))
    pred = logits.argmax(1)
    hits = lam * (pred == y).sum() + (1 - lam) * (pred == y_mix).sum()
    return loss, hits


def batch_permutations(num_examples: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """(N,) int64: within batch i, entries [i * batch_size, i * batch_size + b) permute 0..b-1."""
    starts = range(0, num_examples, batch_size)
    return torch.cat([torch.randperm(min(batch_size, num_examples - s), generator=generator) for s in starts])


def cutmix_boxes(lam: np.ndarray, cy: np.ndarray, cx: np.ndarray, height: int, width: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Yun et al.'s boxes: sides floor(side * sqrt(1 - lam)) centred at (cy, cx), clipped to the image.

    Returns boxes (n, 4) int64 as (y0, y1, x0, x1), half-open, and the weight of each batch's own
    labels, 1 - pasted area / (height * width): the area actually pasted, after clipping.
    """
    cut = np.sqrt(1.0 - lam)
    half_h = (height * cut).astype(np.int64) // 2
    half_w = (width * cut).astype(np.int64) // 2
    y0, y1 = np.clip(cy - half_h, 0, height), np.clip(cy + half_h, 0, height)
    x0, x1 = np.clip(cx - half_w, 0, width), np.clip(cx + half_w, 0, width)
    kept = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
    return np.stack([y0, y1, x0, x1], axis=1).astype(np.int64), kept


@dataclass
class MixupPlan:
    lam: torch.Tensor  # (num_batches,) float32, Beta(alpha, alpha) draws
    perm: torch.Tensor  # (N,) int64: within batch i, perm[start:end] is a permutation of 0..b-1

    @classmethod
    def draw(cls, alpha: float, num_examples: int, batch_size: int, seed: int, epoch: int) -> MixupPlan:
        num_batches = len(range(0, num_examples, batch_size))
        rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, MIXUP_LAMBDA]))
        lam = torch.tensor(rng.beta(alpha, alpha, size=num_batches), dtype=torch.float32)
        perm = batch_permutations(num_examples, batch_size, epoch_generator(seed, epoch, stream=MIXUP_PERM))
        return cls(lam, perm)

    def to(self, device: torch.device) -> MixupPlan:
        return MixupPlan(self.lam.to(device), self.perm.to(device))

    def mixes(self, step: int) -> bool:
        return True

    def apply(self, step: int, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mixed batch, weight of the batch's own labels (0-d), permutation (B,)) for batch `step`."""
        lam, perm = self.lam[step], self.perm[step * batch_size : step * batch_size + len(x)]
        return mixup(x, lam, perm), lam, perm


@dataclass
class CutmixPlan:
    mixed: tuple[bool, ...]  # (num_batches,) on the host: whether batch i is cut-mixed (P = cutmix_prob)
    box: torch.Tensor  # (num_batches, 4) int64: (y0, y1, x0, x1) of the box pasted from the permuted batch
    lam: torch.Tensor  # (num_batches,) float32: 1 - pasted area / image area, the weight of the own labels
    perm: torch.Tensor  # (N,) int64: per-batch permutations, as MixupPlan.perm

    @classmethod
    def draw(cls, alpha: float, prob: float, num_examples: int, batch_size: int, seed: int, epoch: int,
             size: tuple[int, int] = IMAGE_SHAPE[1:]) -> CutmixPlan:
        n = len(range(0, num_examples, batch_size))
        rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, CUTMIX_DRAWS]))
        lam = rng.beta(alpha, alpha, size=n)  # the drawn kept share; the box's clipping changes it
        cy, cx = rng.integers(0, size[0], size=n), rng.integers(0, size[1], size=n)  # box centres, uniform
        mixed = tuple(bool(u) for u in rng.random(n) < prob)
        box, kept = cutmix_boxes(lam, cy, cx, *size)
        perm = batch_permutations(num_examples, batch_size, epoch_generator(seed, epoch, stream=CUTMIX_PERM))
        return cls(mixed, torch.from_numpy(box), torch.tensor(kept, dtype=torch.float32), perm)

    def to(self, device: torch.device) -> CutmixPlan:
        return CutmixPlan(self.mixed, self.box.to(device), self.lam.to(device), self.perm.to(device))

    def mixes(self, step: int) -> bool:
        return self.mixed[step]

    def apply(self, step: int, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lam, perm = self.lam[step], self.perm[step * batch_size : step * batch_size + len(x)]
        return cutmix(x, self.box[step], perm), lam, perm


def draw_mixing(cfg: TrainConfig, num_examples: int, epoch: int) -> MixupPlan | CutmixPlan | None:
    """The epoch's mixing draws under cfg.mix, or None when no batch is mixed (no draw is made then)."""
    if cfg.mix == "mixup" and cfg.mixup_alpha > 0:
        return MixupPlan.draw(cfg.mixup_alpha, num_examples, cfg.batch_size, cfg.seed, epoch)
    if cfg.mix == "cutmix":
        return CutmixPlan.draw(cfg.cutmix_alpha, cfg.cutmix_prob, num_examples, cfg.batch_size, cfg.seed, epoch)
    return None

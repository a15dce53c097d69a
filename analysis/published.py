"""The report's Tables 1-9 as data (single seed each; from /work/shared/protocol.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedTable:
    number: int
    study: str  # our study that reproduces it
    field: str  # the TrainConfig field whose value names a row
    metrics: tuple[str, ...]  # column order as in the report
    rows: dict  # field value -> published values, in `metrics` order
    epochs: int  # epochs the report trained for
    title: str


_FIT = ("val_loss", "val_acc", "train_loss", "train_acc")
_TEST = ("test_loss", "test_acc")

TABLES = (
    PublishedTable(1, "lr", "lr", _FIT, {0.01: (2.386, 0.381, 2.0283, 0.4477),
                                         0.05: (2.1113, 0.4465, 1.7398, 0.5097),
                                         0.5: (2.4005, 0.3751, 2.0919, 0.4289)}, 15,
                   "Learning rate: validation and training metrics at the final epoch"),
    PublishedTable(2, "lr", "lr", _TEST, {0.01: (0.0035, 0.4053), 0.05: (0.0032, 0.4648), 0.5: (0.0040, 0.3992)}, 15,
                   "Learning rate: test metrics"),
    PublishedTable(3, "lrs", "schedule", _FIT, {"cosine": (3.3232, 0.5638, 0.0011, 0.9998),
                                                "constant": (3.7616, 0.5495, 0.006, 0.9981)}, 300,
                   "Learning-rate schedule: validation and training metrics at the final epoch"),
    PublishedTable(4, "lrs", "schedule", _TEST, {"cosine": (0.0047, 0.5686), "constant": (0.0042, 0.5633)}, 300,
                   "Learning-rate schedule: test metrics"),
    PublishedTable(5, "wd", "weight_decay", ("val_loss", "val_acc"),
                   {5e-4: (1.4243, 0.6757), 1e-4: (1.7263, 0.6247)}, 300,
                   "Weight decay: validation metrics at the final epoch"),
    PublishedTable(6, "wd", "weight_decay", ("train_loss", "train_acc"),
                   {5e-4: (0.0121, 0.9995), 1e-4: (0.0033, 0.9999)}, 300,
                   "Weight decay: training metrics at the final epoch"),
    PublishedTable(7, "wd", "weight_decay", _TEST, {5e-4: (0.0016, 0.6818), 1e-4: (0.0023, 0.6325)}, 300,
                   "Weight decay: test metrics"),
    PublishedTable(8, "mixup", "mixup_alpha", _FIT, {0.2: (1.2223, 0.6983, 0.8321, 0.4841),
                                                     0.0: (1.4243, 0.6757, 0.0121, 0.9995)}, 300,
                   "Mixup: validation and training metrics at the final epoch"),
    PublishedTable(9, "mixup", "mixup_alpha", _TEST, {0.2: (0.0017, 0.7066), 0.0: (0.0016, 0.6818)}, 300,
                   "Mixup: test metrics"),
)

TEST_LOSS_NOTE = (
    "The published test losses are not comparable with ours: the course template's test loop "
    "overwrote its accumulator with each batch's mean loss, so the printed value is "
    "17 x (mean cross-entropy of the last 16 test images) / 10000, hence values near 0.003. "
    "Ours is the mean cross-entropy over the whole test set (its size is in the study's Data line); no "
    "difference is computed.")

MIXUP_TRAIN_ACC_NOTE = (
    "Our training accuracy under mixup is the lambda-weighted accuracy against both labels "
    "(lambda * [pred == y] + (1 - lambda) * [pred == y_perm]); the report's 0.48 looks like plain "
    "accuracy against y alone, so the two differ by construction. Training loss under mixup is the "
    "mixed loss on mixed images.")


def tables_for(study: str) -> tuple[PublishedTable, ...]:
    return tuple(t for t in TABLES if t.study == study)

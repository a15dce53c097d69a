"""Names shared by the loop, the trainable, the runner and the analysis: one torch-free home.

Importing this module loads nothing but the standard library, so `analysis` can use it without torch.
"""

from __future__ import annotations

DATASETS = ("cifar100", "cifar10")  # tune_cifar.data reads each one's python release (data.RELEASES)
DATASET_TITLES = {"cifar100": "CIFAR-100", "cifar10": "CIFAR-10"}
DATASET_CLASSES = {"cifar100": 100, "cifar10": 10}  # the classifier's outputs (tune_cifar.models.build_for)
MODEL_NAMES = ("mobilenet", "mobilenetv2", "resnet18")  # tune_cifar.models registers exactly these (tested)
RESIDUAL_MODELS = ("resnet18",)  # the models that implement stochastic depth (drop_path)
SCHEDULES = ("constant", "cosine", "step", "warmup_cosine", "onecycle")  # defined in tune_cifar.schedules
MIXES = ("mixup", "cutmix", "none")  # batch-mixing augmentations, one at a time (TrainConfig.mix)
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")

# Reported by the trainable every epoch; results.parquet keeps these columns in this order.
METRICS = ("epoch", "lr", "weight_decay", "momentum", "mixup_alpha", "train_loss", "train_acc", "val_loss",
           "val_acc", "diverged", "test_loss", "test_acc", "images_per_s", "epoch_s", "timestamp")
# Per-epoch text the trainable reports beside METRICS: the PBT donor whose state an epoch started from
# (set on the first epoch after an exploit, empty otherwise).
EVENTS = ("donor",)
# Per epoch beside METRICS, counted by the driver (results.py), not measured by the loop: `iteration`, the
# n-th epoch this trial trained (1, 2, ...; PBT's exploits make `epoch` follow the donor's lineage instead),
# and `fused_members`, how many members of a fused group trained that epoch together (1 for a plain trial):
# each member's share of the epoch's time and resources is 1 / fused_members.
COUNTS = ("iteration", "fused_members")
# Taken at a trial's last epoch for tables and ranking (test metrics exist there only).
FINAL_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")

# What makes two trials the same configuration; the seed is what statistics average over. The
# other TrainConfig fields (data_dir, download, device, channels_last, compile, eval_batch_size)
# say where and how fast a run went, not what it computed.
CONFIGURATION_FIELDS = ("dataset", "model", "dropout", "drop_path", "lr", "schedule", "step_milestones", "step_gamma",
                        "warmup_epochs", "weight_decay", "momentum", "nesterov", "epochs", "batch_size",
                        "label_smoothing", "mix", "mixup_alpha", "cutmix_alpha", "cutmix_prob", "split_seed",
                        "val_fraction", "precision")
# Fields that only matter while another field has one of the given values (the step schedule's
# milestones under cosine change nothing): the report leaves them out of a study's "Fixed" line
# when no trial of the study used them.
USED_ONLY_WHEN = {"step_milestones": ("schedule", ("step",)), "step_gamma": ("schedule", ("step",)),
                  "warmup_epochs": ("schedule", ("warmup_cosine",)), "mixup_alpha": ("mix", ("mixup",)),
                  "cutmix_alpha": ("mix", ("cutmix",)), "cutmix_prob": ("mix", ("cutmix",))}
# Hyperparameters a run may change between epochs and still continue from its saved state: PBT
# clones a donor's weights and momentum buffers and goes on with its own mutated values of these.
MUTABLE_FIELDS = ("lr", "weight_decay", "momentum", "mixup_alpha")
# A checkpoint resumes a run only when these agree: they fix the network, the data stream and the
# arithmetic. `epochs` may differ (a study extended with --epochs continues its trials).
CHECKPOINT_FIELDS = tuple(f for f in (*CONFIGURATION_FIELDS, "seed") if f not in MUTABLE_FIELDS + ("epochs",))

# A trial's status in results.parquet and in the analysis.
FINISHED = "finished"  # reached its final epoch
DIVERGED = "diverged"  # loss turned NaN/inf; stopped on purpose, and ranks below every sane configuration
STOPPED_EARLY = "stopped_early"  # a scheduler (ASHA, PBT) ended it before its final epoch
ERROR = "error"  # crashed (after its retries)
INCOMPLETE = "incomplete"  # interrupted: neither finished nor stopped on purpose
STATUSES = (FINISHED, DIVERGED, STOPPED_EARLY, ERROR, INCOMPLETE)

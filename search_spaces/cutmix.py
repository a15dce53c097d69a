"""Does cutmix (Yun et al. 2019) beat mixup, and either beat no mixing, at the report's best settings."""

from search_spaces._report_best import BEST

TITLE = "Cutmix vs mixup"
DESCRIPTION = ("No mixing vs cutmix (alpha 1.0 on half the batches, Yun et al.'s CIFAR recipe) vs mixup (alpha 0.2), "
               "at the report's best: MobileNet, lr 0.05, cosine, wd 5e-4, 300 epochs.")
# `mix` picks the kind; both strengths are fixed, so the grid is exactly the three configurations.
BASE = dict(BEST, cutmix_alpha=1.0, cutmix_prob=0.5)
SPACE = {"mix": ["none", "cutmix", "mixup"]}
METRIC, MODE = "val_acc", "max"

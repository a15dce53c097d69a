"""Does stochastic depth regularise ResNet-18 at the report's best settings (its conclusion asks)."""

from search_spaces._report_best import BEST

TITLE = "Stochastic depth (ResNet-18)"
DESCRIPTION = ("ResNet-18 with stochastic depth 0, 0.1, 0.2 (rate linear in depth, this at the last block), "
               "at the report's best: lr 0.05, cosine, wd 5e-4, mixup 0.2, 300 epochs.")
BASE = dict(BEST, model="resnet18")
SPACE = {"drop_path": [0.0, 0.1, 0.2]}
METRIC, MODE = "val_acc", "max"

"""Does dropout before the classifier help MobileNet at the report's best settings (its conclusion asks)."""

from search_spaces._report_best import BEST

TITLE = "Dropout"
DESCRIPTION = ("Dropout 0, 0.2, 0.5 on the pooled features before the classifier, "
               "at the report's best: MobileNet, lr 0.05, cosine, wd 5e-4, mixup 0.2, 300 epochs.")
BASE = dict(BEST)
SPACE = {"dropout": [0.0, 0.2, 0.5]}
METRIC, MODE = "val_acc", "max"

"""Does label smoothing add to mixup and weight decay at the report's best settings (its conclusion asks)."""

from search_spaces._report_best import BEST

TITLE = "Label smoothing"
DESCRIPTION = ("Label smoothing 0, 0.05, 0.1, 0.2 on the training loss (val/test loss stay plain cross-entropy), "
               "at the report's best: MobileNet, lr 0.05, cosine, wd 5e-4, mixup 0.2, 300 epochs.")
BASE = dict(BEST)
SPACE = {"label_smoothing": [0.0, 0.05, 0.1, 0.2]}
METRIC, MODE = "val_acc", "max"

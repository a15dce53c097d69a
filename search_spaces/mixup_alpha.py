"""Is the report's mixup alpha 0.2 the right strength: a finer look than its on/off study."""

from search_spaces._report_best import BEST

TITLE = "Mixup strength"
DESCRIPTION = "Mixup alpha 0.1, 0.2, 0.4, 1.0 at the report's best: MobileNet, lr 0.05, cosine, wd 5e-4, 300 epochs."
BASE = dict(BEST)
SPACE = {"mixup_alpha": [0.1, 0.2, 0.4, 1.0]}
METRIC, MODE = "val_acc", "max"

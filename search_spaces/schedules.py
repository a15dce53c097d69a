"""Does another learning-rate schedule beat cosine at the report's best settings (its conclusion asks)."""

from search_spaces._report_best import BEST

TITLE = "More learning-rate schedules"
DESCRIPTION = ("Schedule cosine vs step (x0.2 at 30/60/80%), warmup_cosine (5 epochs) and onecycle (peak 0.05), "
               "at the report's best: MobileNet, lr 0.05, wd 5e-4, mixup 0.2, 300 epochs.")
BASE = dict(BEST, step_milestones="30%,60%,80%", step_gamma=0.2, warmup_epochs=5)
SPACE = {"schedule": ["cosine", "step", "warmup_cosine", "onecycle"]}
METRIC, MODE = "val_acc", "max"

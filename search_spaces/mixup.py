"""Does mixup (Zhang et al., 2018) add to weight decay and cosine annealing (report Tables 8-9)."""

TITLE = "Mixup"
DESCRIPTION = "Mixup alpha 0.2 vs off at lr 0.05, cosine schedule, weight decay 5e-4, 300 epochs."
BASE = dict(model="mobilenet", lr=0.05, schedule="cosine", weight_decay=5e-4, epochs=300)
SPACE = {"mixup_alpha": [0.2, 0.0]}
METRIC, MODE = "val_acc", "max"

"""How much coupled L2 weight decay helps the cosine schedule (report Tables 5-7)."""

TITLE = "Weight decay"
DESCRIPTION = "Weight decay 5e-4 vs 1e-4 at lr 0.05 with the cosine schedule, no mixup, 300 epochs."
BASE = dict(model="mobilenet", lr=0.05, schedule="cosine", mixup_alpha=0.0, epochs=300)
SPACE = {"weight_decay": [5e-4, 1e-4]}
METRIC, MODE = "val_acc", "max"

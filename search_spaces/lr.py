"""Which initial learning rate trains MobileNet best in 15 epochs (report Tables 1-2)."""

TITLE = "Learning rate"
DESCRIPTION = "Initial learning rate in {0.01, 0.05, 0.5}, constant schedule, no weight decay, no mixup, 15 epochs."
BASE = dict(model="mobilenet", schedule="constant", weight_decay=0.0, mixup_alpha=0.0, epochs=15)
SPACE = {"lr": [0.01, 0.05, 0.5]}
METRIC, MODE = "val_acc", "max"

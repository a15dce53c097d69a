"""Does cosine annealing beat a constant learning rate over 300 epochs (report Tables 3-4)."""

TITLE = "Learning-rate schedule"
DESCRIPTION = "Learning-rate schedule cosine vs constant at lr 0.05 (the lr study's winner), no weight decay, 300 epochs."
BASE = dict(model="mobilenet", lr=0.05, weight_decay=0.0, mixup_alpha=0.0, epochs=300)
SPACE = {"schedule": ["cosine", "constant"]}
METRIC, MODE = "val_acc", "max"

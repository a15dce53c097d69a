"""The report's whole sequence: each study carries the winners (by val_acc) of the earlier ones."""

TITLE = "The report's chain"
DESCRIPTION = "lr, then lrs, wd and mixup in order, each taking the earlier studies' winning values, as the report did."
CHAIN = ["lr", "lrs", "wd", "mixup"]

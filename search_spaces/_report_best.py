"""The report's best configuration (its mixup study's winner), which the issue-12 studies start from.

Not a study: names starting with "_" are skipped by tune_cifar.studies.
"""

BEST = dict(model="mobilenet", lr=0.05, schedule="cosine", weight_decay=5e-4, mixup_alpha=0.2, epochs=300)

"""All four of the report's hyperparameters searched together, for the greedy chain's budget.

The report tuned lr, then the schedule, weight decay and mixup one at a time, carrying each winner
forward (1,845 trial-epochs). This study samples them jointly with Optuna's TPE and lets ASHA stop
poor trials early; NUM_SAMPLES is chosen so that the trial-epochs ASHA is expected to spend match the
chain's (tests/test_search.py checks it), so the two can be compared at equal cost.
"""

from ray import tune

TITLE = "Joint search (TPE + ASHA)"
DESCRIPTION = ("lr, schedule, weight decay and mixup alpha sampled together by TPE, poor trials stopped by "
               "ASHA, 300 epochs, at about the greedy chain's 1,845 trial-epochs.")
BASE = dict(model="mobilenet", epochs=300)
SPACE = {
    "lr": tune.loguniform(1e-3, 1.0),
    "schedule": ["constant", "cosine"],
    "weight_decay": tune.loguniform(1e-5, 1e-3),
    "mixup_alpha": tune.uniform(0.0, 1.0),
}
METRIC, MODE = "val_acc", "max"
SEARCH, SCHEDULER = "optuna", "asha"
GRACE_PERIOD, REDUCTION_FACTOR = 15, 4  # rungs at 15, 60 and 240 epochs; 1 in 4 trials goes on at each
NUM_SAMPLES = 48  # x ~38.4 trial-epochs per trial under ASHA = ~1,845

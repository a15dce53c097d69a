"""All four of the report's hyperparameters searched together, for the greedy chain's budget.

The report tuned lr, then the schedule, weight decay and mixup one at a time, carrying each winner
forward (1,845 trial-epochs). This study samples them jointly and lets ASHA stop poor trials early;
NUM_SAMPLES is chosen so that the trial-epochs ASHA is expected to spend match the chain's
(tests/test_search.py checks it), so the two can be compared at equal cost.

The sampler is the best measured at equal budget (README, "Search strategies at equal cost";
scripts/budget_comparison.sh, 2026-12-02, 8-epoch studies on generated data, 3 search seeds against 3
chain replicates at the chain's 56 trial-epochs): multivariate TPE with 3 random startup draws and ASHA
with 2 Hyperband brackets found 0.8200 (sd 0.054); GP with 3 startup draws (FIFO) 0.8208, a tie within
seed noise, kept out for lack of early stopping; with Optuna's default 10 startup draws every sampler
was still drawing at random at that budget (TPE + ASHA 0.7742, GP 0.8117). None reached the chain's
0.8717 (sd 0.006) there.
"""

from ray import tune

TITLE = "Joint search (multivariate TPE + ASHA)"
DESCRIPTION = ("lr, schedule, weight decay and mixup alpha sampled together by multivariate TPE, poor trials "
               "stopped by ASHA (2 brackets), 300 epochs, at about the greedy chain's 1,845 trial-epochs.")
BASE = dict(model="mobilenet", epochs=300)
SPACE = {
    "lr": tune.loguniform(1e-3, 1.0),
    "schedule": ["constant", "cosine"],
    "weight_decay": tune.loguniform(1e-5, 1e-3),
    "mixup_alpha": tune.uniform(0.0, 1.0),
}
METRIC, MODE = "val_acc", "max"
SEARCH, SCHEDULER = "optuna", "asha"
SAMPLER, STARTUP_TRIALS = "tpe-mv", 3  # multivariate TPE after 3 random draws (Optuna's default is 10)
GRACE_PERIOD, REDUCTION_FACTOR = 15, 4  # rungs at 15, 60 and 240 epochs; 1 in 4 trials goes on at each
BRACKETS = 2  # Hyperband's second bracket cuts first at 60 epochs: a hedge against a wrong cut at 15
NUM_SAMPLES = 32  # x ~57.3 trial-epochs per trial under ASHA's two brackets = ~1,835

"""One module per study. A study module defines:

    TITLE: str             a few words for headings (default: the module's name)
    DESCRIPTION: str       one sentence: what varies and why
    BASE: dict             TrainConfig fields the study fixes (the rest keep TrainConfig's defaults)
    SPACE: dict            field -> a list of values (a grid axis) or a Tune sampling domain
                           (tune.loguniform(1e-3, 1), tune.uniform, tune.choice, tune.randint, ...)
    METRIC, MODE           what ranks the configurations (default "val_acc", "max")

and optionally how the space is searched by default (the command line can override each):

    SEARCH                 "grid" (lists only; the default then), "random" (the default with domains),
                           "optuna" (TPE) or "hyperopt"
    NUM_SAMPLES            configurations a sampler draws (default 1)
    SCHEDULER              "fifo" (default), "asha" or "pbt"
    GRACE_PERIOD, REDUCTION_FACTOR, PERTURBATION_INTERVAL   the scheduler's settings
    BRACKETS               ASHA's Hyperband brackets (default 1; a shorter run keeps those that still cut)
    SAMPLER, STARTUP_TRIALS   Optuna's sampler ("tpe", "tpe-mv", "gp", "cmaes", "qmc", "random") and its
                           random draws before the model (Optuna's default 10)
    START                  a list of dicts (field -> value, every varied field): configurations a
                           model-based search tries first; --start replaces them
Settings counted in epochs (GRACE_PERIOD, PERTURBATION_INTERVAL, BASE's warmup_epochs and step
milestones in epochs) are for the study's own epochs; a run of another length scales them
(tune_cifar.studies.scaled_settings).

or, for a chain of studies, CHAIN: list of study names run in order, each taking the winners of the
earlier ones. Adding a study means adding a file here; `tune_cifar.studies` discovers it by name.
"""

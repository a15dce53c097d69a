"""One module per study. A study module defines:

    TITLE: str             a few words for headings (default: the module's name)
    DESCRIPTION: str       one sentence: what varies and why
    BASE: dict             TrainConfig fields the study fixes (the rest keep TrainConfig's defaults)
    SPACE: dict            field -> list of values, crossed as a grid
    METRIC, MODE           what ranks the configurations (default "val_acc", "max")

or, for a chain of studies, CHAIN: list of study names run in order, each taking the winners of the
earlier ones. Adding a study means adding a file here; `tune_cifar.studies` discovers it by name.
"""

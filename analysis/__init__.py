"""Results of the tune_cifar studies -> pandas, the report's tables and figures, and a reproduction report.

Nothing here starts Ray or trains: every function reads files or takes a DataFrame.
"""

from analysis.loading import AnalysisError, configuration_labels, load, study_metadata
from analysis.stats import compare_winner, mean_ci, ranked, summary, trials, welch

__all__ = ["AnalysisError", "load", "summary", "trials", "mean_ci", "welch", "ranked", "compare_winner",
           "configuration_labels", "study_metadata"]

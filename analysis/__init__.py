"""Results of the tune_cifar studies -> pandas, the report's tables and figures, and a reproduction report.

Nothing here starts Ray or trains: every function reads files or takes a DataFrame.
"""

from analysis.loading import AnalysisError, configuration_labels, load, study_metadata
from analysis.stats import compare_top_two, mean_ci, ranked, summary, trials, welch

__all__ = ["AnalysisError", "load", "summary", "trials", "mean_ci", "welch", "ranked", "compare_top_two",
           "configuration_labels", "study_metadata"]

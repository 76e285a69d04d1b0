"""Statistics for trustworthy tables: intervals over seeds, paired comparisons, a learning-rate search by
successive halving, and emergence steps. Pure functions over numbers (numpy and scipy only, no torch), so
the runner and the reports call them on values read from the results database."""

from attnlab.stats.compare import PairedComparison, VersusBest, holm, paired_comparison, versus_best
from attnlab.stats.emergence import EmergenceSummary, emergence_step, summarise_emergence
from attnlab.stats.halving import HalvingPlan, HalvingSpec, LrScore, Rung, Trial, grid_edge, log_grid, plan_halving
from attnlab.stats.intervals import Interval, bootstrap_interval, mean_interval, t_interval

__all__ = [
    "EmergenceSummary",
    "HalvingPlan",
    "HalvingSpec",
    "Interval",
    "LrScore",
    "PairedComparison",
    "Rung",
    "Trial",
    "VersusBest",
    "bootstrap_interval",
    "emergence_step",
    "grid_edge",
    "holm",
    "log_grid",
    "mean_interval",
    "paired_comparison",
    "plan_halving",
    "summarise_emergence",
    "t_interval",
    "versus_best",
]

"""When a task was learned: the first evaluation step at which accuracy reached a target (and stayed there).

Some tasks are learned in a sudden transition rather than gradually: in-context associative recall (MQAR;
Arora et al. 2023, "Zoology", arXiv:2312.04927), induction heads' phase change (Olsson et al. 2022,
arXiv:2209.11895) and copying. For them the final accuracy of a long enough run says little (every mechanism
gets there) and that of a short run is a coin toss on which side of the jump it stopped; the step of the jump
is the comparison that carries the information. A continuous measure of the same curve also avoids reading a
sharp threshold into a metric that only looks sharp (Schaeffer et al. 2023, arXiv:2304.15004).

``hold`` asks that the target hold for that many consecutive evaluations, so a single lucky evaluation
before the transition is not counted. A run that never reaches the target, or whose last evaluations are
too few to show it held, has no emergence step: NaN, never a made-up value such as the budget.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from attnlab.errors import ConfigError


def emergence_step(curve: Iterable[tuple[int, float]], target: float, hold: int = 1) -> float:
    """The first step s of ``curve`` (``(step, accuracy)`` pairs) where accuracy ≥ ``target`` at s and at the
    ``hold − 1`` evaluations after it; NaN when there is none.

    Steps must be strictly increasing. A NaN accuracy (an evaluation that failed) does not count as reached.
    """
    if hold < 1:
        raise ConfigError("hold", hold, "is not a number of evaluations", "an integer ≥ 1")
    if not math.isfinite(target):
        raise ConfigError("target", target, "is not a number", "a finite accuracy, e.g. 0.99")
    points = list(curve)
    steps = [step for step, _ in points]
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise ConfigError("curve", steps, "steps are not strictly increasing", "(step, accuracy) pairs in step order")
    run = 0  # consecutive evaluations at or above the target, ending at the current one
    for i, (_, accuracy) in enumerate(points):
        run = run + 1 if accuracy >= target else 0  # NaN >= target is False
        if run == hold:
            return float(steps[i - hold + 1])
    return math.nan


@dataclass(frozen=True)
class EmergenceSummary:
    """Emergence over seeds: how many reached the target, and the median step with "never" as +∞.

    Averaging only the seeds that got there would rank a mechanism that learned on one seed of three
    above one that learned on all three a little later; counting "never" as +∞ in the median does not.
    ``median_step`` is +∞ when the middle seed (either middle one, for an even count) never reached the
    target, NaN with no seeds.
    """

    n: int
    n_reached: int
    median_step: float

    @property
    def sort_key(self) -> tuple[float, float]:
        """Rank by it, earliest first: the median step, then more seeds reached first."""
        median = self.median_step if not math.isnan(self.median_step) else math.inf
        return (median, -self.n_reached)


def summarise_emergence(steps: Sequence[float]) -> EmergenceSummary:
    """Summarise the emergence steps of a mechanism's seeds (NaN: never reached)."""
    values = np.asarray(steps, dtype=np.float64)
    reached = int(np.sum(~np.isnan(values)))
    if len(values) == 0:
        return EmergenceSummary(0, 0, math.nan)
    median = float(np.median(np.where(np.isnan(values), np.inf, values)))
    return EmergenceSummary(len(values), reached, median)

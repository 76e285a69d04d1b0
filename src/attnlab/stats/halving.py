"""A learning-rate search by successive halving: many short runs, the best continued from their checkpoints.

Successive halving (Jamieson & Talwalkar 2016, arXiv:1502.07943) with the rung geometry of ASHA (Li et al.
2020, "A System for Massively Parallel Hyperparameter Tuning", arXiv:1810.05934): every learning rate of a
log-spaced grid trains, over every seed, to ``min_steps`` (rung 0); the top 1/η of them by the metric's mean
over seeds continue to η·``min_steps`` (rung 1), and so on up to ``max_steps``. A promoted run is not
restarted: it continues from its own checkpoint at the previous rung's step. Nine learning rates × 3 seeds
from 100 to 1000 steps at η = 3 cost 6,600 steps (``HalvingSpec.planned_steps``) instead of the 27,000 of
the whole grid at 1000 steps.

Unlike ASHA, which promotes as soon as a run is in the top 1/η of those finished so far, a rung's promotions
wait until every run of the rung has a result. That gives up some parallelism for a plan that depends only on
the results, not on the order they arrived in: ``plan_halving(spec, results)`` is a pure function, so a search
killed at any point resumes by recomputing the plan from the results in the database and running what it
lists as pending. This module plans; the runner trains and saves a checkpoint at each rung's step.

Ranking within a rung: a learning rate with fewer failed seeds ranks first (a learning rate that diverged on
one seed is not to be promoted on the others' luck), then the better mean over its finished seeds, then the
smaller learning rate (the safer choice, and a fixed tie-break). A failed run's metric is NaN; an infinite
value (a loss that overflowed) counts as failed too, so a search goes on past a diverged run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from attnlab.errors import ConfigError

ResultKey = tuple[float, int, int]  # (learning rate, seed, steps)
GridEdge = Literal["low", "high"]


def log_grid(low: float, high: float, points: int, digits: int = 3) -> tuple[float, ...]:
    """``points`` learning rates spaced evenly in log from ``low`` to ``high`` (both included).

    Each is rounded to ``digits`` significant digits (``log_grid(1e-4, 1e-2, 5)`` is 1e-4, 3.16e-4, 1e-3,
    3.16e-3, 1e-2): a run's id is a hash of its config, and a grid value that differed in its last bit between
    machines' ``pow`` would give the same run two ids.
    """
    if not (math.isfinite(low) and low > 0):
        raise ConfigError("low", low, "must be a positive learning rate", "a float > 0, e.g. 1e-4")
    if not (math.isfinite(high) and high > low):
        raise ConfigError("high", high, f"must be above low={low}", f"a float > {low}")
    if points < 2:
        raise ConfigError("points", points, "is too few for a grid", "an integer ≥ 2")
    if not 1 <= digits <= 17:
        raise ConfigError("digits", digits, "is not a number of significant digits", "1 to 17")
    grid = tuple(float(f"{v:.{digits - 1}e}") for v in np.geomspace(low, high, points))
    if len(set(grid)) != points:
        raise ConfigError("points", points, f"gives repeated values at {digits} significant digits", "fewer points")
    return grid


def grid_edge(lr: float, grid: tuple[float, ...]) -> GridEdge | None:
    """``"low"`` or ``"high"`` when ``lr`` is the grid's smallest or largest value, else None.

    The best learning rate at an edge of the grid means the optimum may lie beyond it: widen the grid.
    """
    if lr not in grid:
        raise ConfigError("lr", lr, "is not in the grid", grid)
    if lr == min(grid):
        return "low"
    if lr == max(grid):
        return "high"
    return None


@dataclass(frozen=True, kw_only=True)
class HalvingSpec:
    """What to search: the grid, the seeds, the budgets (in steps), η, and which way the metric improves."""

    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    min_steps: int
    max_steps: int
    eta: int = 3  # Hyperband's and ASHA's suggested reduction factor (Li et al. 2018, arXiv:1603.06560)
    higher_is_better: bool

    def __post_init__(self) -> None:
        if not self.lrs or any(not (math.isfinite(lr) and lr > 0) for lr in self.lrs):
            raise ConfigError("lrs", self.lrs, "must be positive learning rates", "a non-empty tuple of floats > 0")
        if len(set(self.lrs)) != len(self.lrs):
            raise ConfigError("lrs", self.lrs, "has repeated values", "distinct learning rates")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("seeds", self.seeds, "must be distinct and at least one", "e.g. (0, 1, 2)")
        if self.min_steps < 1:
            raise ConfigError("min_steps", self.min_steps, "must be positive", "an integer ≥ 1")
        if self.max_steps < self.min_steps:
            raise ConfigError("max_steps", self.max_steps, "is below min_steps", f"an integer ≥ {self.min_steps}")
        if self.eta < 2:
            raise ConfigError("eta", self.eta, "would not reduce anything", "an integer ≥ 2")

    @property
    def budgets(self) -> tuple[int, ...]:
        """Each rung's step budget: min_steps·ηʳ for r < R, then max_steps, with R the largest r such that
        min_steps·ηʳ ≤ max_steps; so every rung trains at least η times as long as the one before.

        E.g. min 100, η 3: max 1000 gives (100, 300, 1000); max 900 gives (100, 300, 900); max 250 gives (250,).
        """
        rungs = 0
        while self.min_steps * self.eta ** (rungs + 1) <= self.max_steps:
            rungs += 1
        return (*(self.min_steps * self.eta**r for r in range(rungs)), self.max_steps)

    @property
    def rung_sizes(self) -> tuple[int, ...]:
        """How many learning rates each rung trains: the grid, then ⌊n/η⌋ of the previous rung's n (at least 1)."""
        sizes = [len(self.lrs)]
        for _ in self.budgets[1:]:
            sizes.append(max(1, sizes[-1] // self.eta))
        return tuple(sizes)

    @property
    def planned_steps(self) -> int:
        """Training steps the whole search costs with no failed run: each rung trains its learning rates × seeds
        from the previous rung's step (promoted runs continue), so Σ sizeᵣ · seeds · (budgetᵣ − budgetᵣ₋₁)."""
        starts = (0, *self.budgets[:-1])
        return sum(
            size * len(self.seeds) * (steps - start)
            for size, steps, start in zip(self.rung_sizes, self.budgets, starts, strict=True)
        )


@dataclass(frozen=True)
class Trial:
    """One planned run: train (lr, seed) to ``steps``, from scratch (``resume_from == 0``) or continuing the
    same (lr, seed) run from its checkpoint at step ``resume_from`` (the previous rung's budget)."""

    lr: float
    seed: int
    steps: int
    resume_from: int
    rung: int

    @property
    def key(self) -> ResultKey:
        """The key of this trial's result: (lr, seed, steps)."""
        return (self.lr, self.seed, self.steps)


@dataclass(frozen=True)
class LrScore:
    """A learning rate's standing at a rung: the metric's mean over its finished seeds, and how many failed."""

    lr: float
    mean: float
    n_failed: int


@dataclass(frozen=True)
class Rung:
    """One rung: its step budget, the learning rates it trains, and, once every trial has a result, the
    learning rates ranked best first (``ranking`` is None while results are missing)."""

    index: int
    steps: int
    lrs: tuple[float, ...]
    trials: tuple[Trial, ...]
    ranking: tuple[LrScore, ...] | None


@dataclass(frozen=True)
class HalvingPlan:
    """The search's state: the rungs decided so far (the last may be incomplete) and the trials to run now."""

    spec: HalvingSpec
    rungs: tuple[Rung, ...]
    pending: tuple[Trial, ...]

    @property
    def finished(self) -> bool:
        """Whether the last rung has a result for every trial."""
        return len(self.rungs) == len(self.spec.budgets) and self.rungs[-1].ranking is not None

    @property
    def best_lr(self) -> float | None:
        """The winner: the best-ranked learning rate of the last rung, once the search has finished."""
        last = self.rungs[-1]
        return last.ranking[0].lr if self.finished and last.ranking else None

    @property
    def best_edge(self) -> GridEdge | None:
        """``"low"`` / ``"high"`` when the winner is at an edge of the grid (widen it), else None."""
        best = self.best_lr
        return None if best is None else grid_edge(best, self.spec.lrs)


def plan_halving(spec: HalvingSpec, results: Mapping[ResultKey, float]) -> HalvingPlan:
    """The plan implied by the results recorded so far, ``{(lr, seed, steps): metric}`` (NaN: a failed run).

    Walks the rungs from 0: a rung with every result is ranked and promotes its top ``rung_sizes[r + 1]``
    learning rates; the first rung with a missing result is the current one, and its missing trials are
    ``pending``. A seed that failed at one rung is not continued (it has no checkpoint) and counts as failed
    at every later rung its learning rate reaches. A result the plan never scheduled (another grid, seed or
    budget) is an error: the database holds another search, or the grid changed under a running one.
    """
    rungs: list[Rung] = []
    pending: list[Trial] = []
    failed: set[tuple[float, int]] = set()  # (lr, seed) runs that failed: no checkpoint to continue from
    members = tuple(sorted(spec.lrs))
    for index, steps in enumerate(spec.budgets):
        resume_from = spec.budgets[index - 1] if index else 0
        trials = tuple(
            Trial(lr, seed, steps, resume_from, index)
            for lr in members
            for seed in spec.seeds
            if (lr, seed) not in failed
        )
        missing = [t for t in trials if t.key not in results]
        failed |= {(t.lr, t.seed) for t in trials if t.key in results and not math.isfinite(results[t.key])}
        ranking = None if missing else _rank(spec, members, steps, results)
        rungs.append(Rung(index, steps, members, trials, ranking))
        if ranking is None:
            pending = missing
            break
        if index + 1 < len(spec.budgets):
            members = tuple(sorted(score.lr for score in ranking[: spec.rung_sizes[index + 1]]))
    scheduled = {t.key for rung in rungs for t in rung.trials}
    for key in results:
        if key not in scheduled:
            raise ConfigError("results", key, "is a run this search did not schedule", "(lr, seed, steps) of its plan")
    return HalvingPlan(spec, tuple(rungs), tuple(pending))


def _rank(
    spec: HalvingSpec, lrs: tuple[float, ...], steps: int, results: Mapping[ResultKey, float]
) -> tuple[LrScore, ...]:
    """The learning rates best first: fewer failed seeds, then the better mean, then the smaller lr."""
    scores = []
    for lr in lrs:
        values = [results.get((lr, seed, steps), math.nan) for seed in spec.seeds]  # absent: failed before
        finished = [v for v in values if math.isfinite(v)]
        mean = float(np.mean(finished)) if finished else math.nan
        scores.append(LrScore(lr, mean, len(values) - len(finished)))
    sign = -1.0 if spec.higher_is_better else 1.0
    return tuple(sorted(scores, key=lambda s: (s.n_failed, 0.0 if math.isnan(s.mean) else sign * s.mean, s.lr)))

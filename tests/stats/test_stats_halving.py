"""Successive halving on a synthetic objective: promotions, runs per rung, determinism, resuming, grid edges."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from attnlab.errors import ConfigError
from attnlab.stats.halving import (
    HalvingPlan,
    HalvingSpec,
    LrScore,
    ResultKey,
    Trial,
    grid_edge,
    log_grid,
    plan_halving,
)

GRID = log_grid(1e-5, 1e-1, 9)  # 1e-5, 3.16e-5, …, 1e-1: half a decade apart
SEEDS = (0, 1, 2)
Objective = Callable[[Trial], float]


def spec(**overrides: object) -> HalvingSpec:
    fields: dict[str, object] = dict(
        lrs=GRID, seeds=SEEDS, min_steps=100, max_steps=1000, eta=3, higher_is_better=False
    )
    fields.update(overrides)
    return HalvingSpec(**fields)  # type: ignore[arg-type]


def bowl(best_lr: float) -> Objective:
    """loss = (log10 lr − log10 lr*)² + noise(seed) / steps: a bowl in log lr, seed noise that fades with budget."""
    noise = np.random.default_rng(0).uniform(0, 1, size=max(SEEDS) + 1)
    return lambda t: (math.log10(t.lr) - math.log10(best_lr)) ** 2 + noise[t.seed] / t.steps


def search(
    spec_: HalvingSpec, objective: Objective, results: dict[ResultKey, float] | None = None, order_seed: int = 0
) -> tuple[HalvingPlan, dict[ResultKey, float], list[Trial]]:
    """Run the plan to the end the way a runner would: run what is pending (in a shuffled order, as parallel
    workers finish), record, re-plan. Returns the final plan, the results and the trials run by this call."""
    results = dict(results or {})
    ran: list[Trial] = []
    rng = np.random.default_rng(order_seed)
    plan = plan_halving(spec_, results)
    while not plan.finished:
        for i in rng.permutation(len(plan.pending)):
            trial = plan.pending[i]
            assert trial.key not in results, f"{trial} ran twice"
            results[trial.key] = objective(trial)
            ran.append(trial)
        plan = plan_halving(spec_, results)
    return plan, results, ran


def test_log_grid_is_rounded_to_three_significant_digits() -> None:
    assert log_grid(1e-4, 1e-2, 5) == (1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2)
    assert GRID[4] == 1e-3 and len(GRID) == 9


def test_budgets_and_rung_sizes() -> None:
    """Rungs at 100·3ʳ, the last stretched to max_steps; ⌊n/η⌋ learning rates go on, at least one."""
    assert (spec().budgets, spec().rung_sizes) == ((100, 300, 1000), (9, 3, 1))
    assert spec(max_steps=900).budgets == (100, 300, 900)
    assert spec(max_steps=2700).rung_sizes == (9, 3, 1, 1)
    assert spec(max_steps=250).budgets == (250,)  # max < η·min: one rung, every learning rate to max_steps
    assert spec(lrs=GRID[:6], eta=2, max_steps=800).rung_sizes == (6, 3, 1, 1)


def test_promotions_on_a_bowl() -> None:
    """lr* = 2e-3 (log10 −2.70): by distance in log10 the grid ranks 3.16e-3 (0.20), 1e-3 (0.30), 1e-2 (0.70),
    3.16e-4 (0.80), …; the seed noise is the same for every lr, so it cannot reorder them."""
    plan, _, _ = search(spec(), bowl(2e-3))
    rung0, rung1, rung2 = plan.rungs
    assert rung0.lrs == GRID
    assert rung1.lrs == (1e-3, 3.16e-3, 1e-2)
    assert rung2.lrs == (3.16e-3,)
    assert rung0.ranking is not None
    assert [score.lr for score in rung0.ranking[:4]] == [3.16e-3, 1e-3, 1e-2, 3.16e-4]
    assert (plan.best_lr, plan.best_edge) == (3.16e-3, None)
    assert plan.pending == ()


def test_runs_per_rung_and_continuation_from_checkpoints() -> None:
    plan, results, ran = search(spec(), bowl(2e-3))
    assert [len(rung.trials) for rung in plan.rungs] == [9 * 3, 3 * 3, 1 * 3]
    assert len(ran) == len(results) == 39
    # 9·3·100 + 3·3·(300 − 100) + 1·3·(1000 − 300) steps, against 9·3·1000 for the whole grid at max_steps.
    assert spec().planned_steps == 2700 + 1800 + 2100 == sum(t.steps - t.resume_from for t in ran)
    for rung, resume_from in zip(plan.rungs, (0, 100, 300), strict=True):
        assert {(t.steps, t.resume_from, t.rung) for t in rung.trials} == {(rung.steps, resume_from, rung.index)}
        assert {(t.lr, t.seed) for t in rung.trials} == {(lr, s) for lr in rung.lrs for s in SEEDS}


def test_promotion_uses_the_mean_over_seeds() -> None:
    """Each lr's best single seed would pick a or c; the mean over seeds picks b (lower loss is better)."""
    a, b, c = 1e-4, 1e-3, 1e-2
    s = spec(lrs=(a, b, c), seeds=(0, 1), max_steps=300)
    values = {a: (0.1, 0.9), b: (0.4, 0.4), c: (0.0, 1.2)}  # means 0.5, 0.4, 0.6
    results = {(lr, seed, 100): v[seed] for lr, v in values.items() for seed in (0, 1)}
    plan = plan_halving(s, results)
    assert plan.rungs[1].lrs == (b,)
    assert plan.pending == (Trial(b, 0, 300, 100, 1), Trial(b, 1, 300, 100, 1))
    assert plan.rungs[0].ranking is not None
    assert [r.lr for r in plan.rungs[0].ranking] == [b, a, c]
    assert [r.mean for r in plan.rungs[0].ranking] == pytest.approx([0.4, 0.5, 0.6], rel=1e-15)


def test_higher_is_better_promotes_the_largest() -> None:
    s = spec(lrs=(1e-4, 1e-3, 1e-2), seeds=(0,), max_steps=300, higher_is_better=True)
    results = {(1e-4, 0, 100): 0.3, (1e-3, 0, 100): 0.9, (1e-2, 0, 100): 0.5}
    assert plan_halving(s, results).rungs[1].lrs == (1e-3,)


@pytest.mark.parametrize("failure", [math.nan, math.inf])
def test_a_failed_seed_ranks_below_every_complete_lr(failure: float) -> None:
    """1e-2 diverged on one seed but its other seed is the best loss: it still ranks last."""
    s = spec(lrs=(1e-4, 1e-3, 1e-2), seeds=(0, 1), max_steps=300)
    results = {(1e-4, 0, 100): 0.9, (1e-4, 1, 100): 0.9, (1e-3, 0, 100): 0.5, (1e-3, 1, 100): 0.5}
    results |= {(1e-2, 0, 100): 0.01, (1e-2, 1, 100): failure}
    ranking = plan_halving(s, results).rungs[0].ranking
    assert ranking is not None
    assert [(r.lr, r.n_failed) for r in ranking] == [(1e-3, 0), (1e-4, 0), (1e-2, 1)]


def test_ties_go_to_the_smaller_learning_rate() -> None:
    plan, _, _ = search(spec(), lambda t: 1.0)
    assert plan.rungs[1].lrs == GRID[:3]
    assert plan.best_lr == GRID[0]


def test_the_plan_is_a_pure_function_of_the_results() -> None:
    _, results, _ = search(spec(), bowl(2e-3))
    reordered = dict(reversed(list(results.items())))
    assert plan_halving(spec(), reordered) == plan_halving(spec(), results)
    # A second search, with workers finishing in another order, runs the same trials to the same results.
    _, again, _ = search(spec(), bowl(2e-3), order_seed=1)
    assert again == results


def test_a_killed_search_resumes_with_no_run_repeated_or_lost() -> None:
    """Kill after every prefix of the run order (mid-rung and between rungs) and resume from the results:
    the resumed search runs exactly the trials the killed one had not, and ends with the same results."""
    objective = bowl(2e-3)
    final, results, order = search(spec(), objective)
    for killed_after in range(len(order)):
        saved = {t.key: results[t.key] for t in order[:killed_after]}
        resumed, resumed_results, ran = search(spec(), objective, saved, order_seed=killed_after)
        assert {t.key for t in ran} == {t.key for t in order[killed_after:]}
        assert len(ran) == len(order) - killed_after
        assert resumed_results == results
        assert resumed == final


def test_pending_is_the_current_rungs_missing_trials() -> None:
    s = spec()
    results = {(lr, seed, 100): 1.0 for lr in GRID for seed in SEEDS}
    del results[(GRID[3], 1, 100)]
    plan = plan_halving(s, results)
    assert plan.pending == (Trial(GRID[3], 1, 100, 0, 0),)
    assert len(plan.rungs) == 1 and plan.rungs[0].ranking is None
    assert not plan.finished and plan.best_lr is None and plan.best_edge is None


@pytest.mark.parametrize(("best", "edge"), [(1.0, "high"), (1e-7, "low"), (1e-3, None)])
def test_a_best_lr_at_the_edge_of_the_grid_is_flagged(best: float, edge: str | None) -> None:
    plan, _, _ = search(spec(), bowl(best))
    assert plan.best_edge == edge
    assert plan.best_lr == {"high": GRID[-1], "low": GRID[0], None: 1e-3}[edge]


def test_grid_edge() -> None:
    assert (grid_edge(1e-5, GRID), grid_edge(1e-1, GRID), grid_edge(1e-3, GRID)) == ("low", "high", None)
    with pytest.raises(ConfigError, match=r"lr=0.5: is not in the grid"):
        grid_edge(0.5, GRID)


def test_a_result_the_plan_never_scheduled_is_an_error() -> None:
    results = {(lr, seed, 100): 1.0 for lr in GRID for seed in SEEDS}
    results[(GRID[-1], 0, 300)] = 1.0  # every lr ties at rung 0, which promotes the smallest three, not 0.1
    with pytest.raises(ConfigError, match=r"results=\(0.1, 0, 300\): is a run this search did not schedule"):
        plan_halving(spec(), results)
    with pytest.raises(ConfigError, match=r"results=\(0.002, 0, 100\)"):
        plan_halving(spec(), {(2e-3, 0, 100): 1.0})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lrs": ()}, r"lrs=\(\): must be positive learning rates"),
        ({"lrs": (1e-3, -1e-3)}, r"lrs=\(0.001, -0.001\): must be positive"),
        ({"lrs": (1e-3, 1e-3)}, r"has repeated values"),
        ({"seeds": (0, 0)}, r"seeds=\(0, 0\): must be distinct"),
        ({"min_steps": 0}, r"min_steps=0: must be positive"),
        ({"max_steps": 50}, r"max_steps=50: is below min_steps \(allowed: an integer ≥ 100\)"),
        ({"eta": 1}, r"eta=1: would not reduce anything"),
    ],
)
def test_bad_specs_are_rejected_naming_the_field(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        spec(**overrides)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0.0, 1e-2, 5), r"low=0.0: must be a positive learning rate"),
        ((1e-2, 1e-3, 5), r"high=0.001: must be above low=0.01"),
        ((1e-4, 1e-2, 1), r"points=1: is too few"),
        ((1e-3, 1.001e-3, 20), r"points=20: gives repeated values at 3 significant digits"),
    ],
)
def test_bad_grids_are_rejected(args: tuple[float, float, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        log_grid(*args)


def test_a_failed_seed_is_not_continued_and_stays_failed() -> None:
    """Every lr failed one seed at rung 0, so a failed run is promoted; it has no checkpoint to continue from."""
    s = spec(lrs=(1e-4, 1e-3, 1e-2), seeds=(0, 1), max_steps=300)
    results = {(lr, 0, 100): loss for lr, loss in ((1e-4, 0.9), (1e-3, 0.5), (1e-2, 0.7))}
    results |= {(lr, 1, 100): math.nan for lr in (1e-4, 1e-3, 1e-2)}
    plan = plan_halving(s, results)
    assert plan.pending == (Trial(1e-3, 0, 300, 100, 1),)
    finished = plan_halving(s, {**results, (1e-3, 0, 300): 0.2})
    assert finished.finished and finished.best_lr == 1e-3
    assert finished.rungs[1].ranking == (LrScore(1e-3, 0.2, 1),)

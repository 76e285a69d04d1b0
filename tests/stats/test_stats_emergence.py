"""Emergence steps on hand-built accuracy curves."""

from __future__ import annotations

import math

import pytest

from attnlab.errors import ConfigError
from attnlab.stats.emergence import EmergenceSummary, emergence_step, summarise_emergence

# A sudden transition between steps 200 and 300.
JUMP = [(0, 0.10), (100, 0.12), (200, 0.15), (300, 0.95), (400, 0.99), (500, 1.00)]
# One lucky evaluation at 100, then the real transition at 300.
SPIKE = [(100, 0.95), (200, 0.30), (300, 0.96), (400, 0.97), (500, 0.99)]


@pytest.mark.parametrize(("target", "step"), [(0.9, 300), (0.99, 400), (1.0, 500), (0.1, 0)])
def test_first_step_at_or_above_the_target(target: float, step: int) -> None:
    assert emergence_step(JUMP, target) == step


def test_never_reached_is_nan() -> None:
    assert math.isnan(emergence_step(JUMP, 1.01))
    assert math.isnan(emergence_step([], 0.5))


@pytest.mark.parametrize(("hold", "step"), [(1, 100), (2, 300), (3, 300)])
def test_hold_skips_a_lucky_evaluation(hold: int, step: int) -> None:
    assert emergence_step(SPIKE, 0.9, hold=hold) == step


def test_a_run_that_ends_inside_the_holding_window_has_not_held() -> None:
    """Three evaluations ≥ 0.9 from step 300 on: hold = 4 cannot be confirmed before the run ended."""
    assert math.isnan(emergence_step(SPIKE, 0.9, hold=4))
    assert math.isnan(emergence_step([(100, 0.1), (200, 0.95)], 0.9, hold=2))


def test_a_failed_evaluation_breaks_the_streak() -> None:
    curve = [(100, 0.95), (200, math.nan), (300, 0.96), (400, 0.97)]
    assert emergence_step(curve, 0.9, hold=2) == 300
    assert emergence_step(curve, 0.9) == 100


def test_bad_curves_and_arguments_are_rejected() -> None:
    with pytest.raises(ConfigError, match=r"curve=\[100, 100\]: steps are not strictly increasing"):
        emergence_step([(100, 0.5), (100, 0.6)], 0.9)
    with pytest.raises(ConfigError, match=r"hold=0: is not a number of evaluations"):
        emergence_step(JUMP, 0.9, hold=0)
    with pytest.raises(ConfigError, match=r"target=nan: is not a number"):
        emergence_step(JUMP, math.nan)


def test_summary_counts_never_as_infinitely_late() -> None:
    assert summarise_emergence([300.0, 100.0, math.nan]) == EmergenceSummary(3, 2, 300.0)
    assert summarise_emergence([100.0, math.nan, math.nan]) == EmergenceSummary(3, 1, math.inf)
    assert summarise_emergence([100.0, math.nan]).median_step == math.inf  # the even count's middle pair holds ∞
    empty = summarise_emergence([])
    assert (empty.n, empty.n_reached) == (0, 0) and math.isnan(empty.median_step)


def test_ranking_by_emergence() -> None:
    """Earliest median first; a mechanism that learned on every seed a little later beats one that learned
    early on one seed of three; never-learned and no-data rows last."""
    rows = {
        "all_late": summarise_emergence([400.0, 500.0, 600.0]),
        "one_early": summarise_emergence([100.0, math.nan, math.nan]),
        "all_early": summarise_emergence([200.0, 300.0, 200.0]),
        "no_runs": summarise_emergence([]),
        "two_of_three": summarise_emergence([150.0, 200.0, math.nan]),
    }
    ranked = sorted(rows, key=lambda name: rows[name].sort_key)
    # all_early and two_of_three share the median 200: the one that learned on more seeds goes first.
    assert ranked == ["all_early", "two_of_three", "all_late", "one_early", "no_runs"]

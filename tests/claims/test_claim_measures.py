"""The derived measures of the claims, on hand-made curves with known answers."""

from __future__ import annotations

import math

import pytest

from attnlab.claims.papers.grok_copy import abruptness, induction_order


def test_a_step_curve_is_fully_abrupt_and_a_ramp_is_not() -> None:
    step = [(s, 0.1 if s < 1000 else 0.9) for s in range(0, 2001, 50)]
    ramp = [(s, 0.1 + 0.8 * s / 2000) for s in range(0, 2001, 50)]
    assert abruptness(step, 200) == pytest.approx(1.0)
    assert abruptness(ramp, 200) == pytest.approx(0.1)  # a tenth of the run holds a tenth of the gain
    assert math.isnan(abruptness([(0, 0.1), (50, 0.15)], 200))  # nothing learned


def _curves(first_steps: dict[int, int | None]) -> list[tuple[int, str, float]]:
    """Induction-score curves per layer that cross 0.9 at the given step (None: never)."""
    points = []
    for layer, first in first_steps.items():
        for s in range(0, 1001, 50):
            points.append((s, f"probe/induction/L{layer}", 0.9 if first is not None and s >= first else 0.05))
    return points


def test_shallow_layers_first_correlates_positively() -> None:
    rows = [{"run_id": "a", "seed": 0}, {"run_id": "b", "seed": 1}]
    curves = {"a": _curves({0: None, 1: 200, 2: 400, 3: 600}), "b": _curves({0: None, 1: 600, 2: 400, 3: 200})}
    m = induction_order(rows, curves)
    assert m.values[0] == pytest.approx(1.0)  # L1 < L2 < L3; L0 never formed one and is left out
    assert m.values[1] == pytest.approx(-1.0)
    one = induction_order([{"run_id": "c", "seed": 2}], {"c": _curves({0: None, 1: 200, 2: None})})
    assert math.isnan(one.values[2])  # one layer formed a head: no order to speak of
    assert m.rows[0]["L1 step"] == 200.0 and math.isnan(m.rows[0]["L0 step"])

"""Verdict rules on synthetic effects: each direction's holds, does-not-hold and inconclusive cases."""

from __future__ import annotations

import json
import math

import pytest

from attnlab.claims.base import Measurement, seeded_effect
from attnlab.claims.verdict import Effect, Rule, decide
from attnlab.errors import ConfigError


def seeded(low: float, high: float, n: int = 3) -> Effect:
    return Effect((low + high) / 2, low, high, n)


@pytest.mark.parametrize(
    ("direction", "margin", "interval", "outcome"),
    [
        ("greater", 0.0, (0.1, 0.3), "holds"),
        ("greater", 0.0, (-0.3, -0.1), "does not hold"),
        ("greater", 0.0, (-0.3, 0.0), "does not hold"),  # at the margin is not above it
        ("greater", 0.0, (-0.1, 0.2), "inconclusive"),
        ("greater", 0.5, (0.1, 0.3), "does not hold"),  # above 0, but not above the margin
        ("less", 0.02, (0.005, 0.01), "holds"),
        ("less", 0.02, (0.03, 0.05), "does not hold"),
        ("less", 0.02, (0.01, 0.03), "inconclusive"),
        ("within", 0.05, (-0.04, 0.03), "holds"),
        ("within", 0.05, (0.06, 0.2), "does not hold"),
        ("within", 0.05, (-0.2, -0.06), "does not hold"),
        ("within", 0.05, (-0.02, 0.08), "inconclusive"),
        ("within", 0.05, (-0.1, 0.1), "inconclusive"),  # wider than the margin on both sides
    ],
)
def test_the_interval_decides(direction: str, margin: float, interval: tuple[float, float], outcome: str) -> None:
    assert decide(Rule("q", direction, margin), seeded(*interval)).outcome == outcome


@pytest.mark.parametrize(("value", "outcome"), [(0.01, "holds"), (0.037, "does not hold"), (0.02, "does not hold")])
def test_an_exact_quantity_is_its_own_interval(value: float, outcome: str) -> None:
    assert decide(Rule("bytes ratio", "less", 0.02), Effect.of_value(value)).outcome == outcome


def test_one_seed_or_nothing_is_inconclusive() -> None:
    rule = Rule("q", "greater", 0.0)
    assert decide(rule, seeded_effect({0: 5.0})).outcome == "inconclusive"
    assert decide(rule, seeded_effect({0: math.nan, 1: math.nan})).outcome == "inconclusive"
    assert decide(rule, Effect.of_value(math.nan)).outcome == "inconclusive"


def test_seeded_effects_use_the_student_t_interval() -> None:
    effect = seeded_effect({0: 1.0, 1: 2.0, 2: 3.0, 3: math.nan})  # a failed seed is left out
    assert effect.n == 3 and effect.estimate == 2.0
    assert effect.high - 2.0 == pytest.approx(2.4841, abs=1e-4)  # t_{0.975, 2} · 1 / √3


def test_a_measurement_round_trips_through_json() -> None:
    m = Measurement(values={0: 1.5, 2: -0.5}, rows=[{"a": 1}], series={"x": [(0.0, 1.0)]}, xlabel="s", ylabel="v")
    assert Measurement.from_json(json.loads(json.dumps(m.to_json()))) == m


def test_bad_rules_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"rule\.direction"):
        Rule("q", "bigger", 0.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"rule\.margin"):
        Rule("q", "within", 0.0)

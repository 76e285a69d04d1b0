"""Verdict rules: a claim's quantity, direction and margin, fixed before its experiment runs.

A claim's experiment measures an *effect* (a difference or ratio between two arms over shared seeds, one arm's
value, or an exact quantity) with an interval. The rule compares the interval, not the point estimate, with the
margin, so a verdict never rests on a seed's luck:

- ``greater`` (the effect exceeds the margin): holds when the whole interval is above it, does not hold when the
  whole interval is at or below it;
- ``less`` (the effect is below the margin): the mirror image;
- ``within`` (the effect is within ± margin: "matches"): holds when the whole interval lies inside, does not hold
  when the whole interval lies outside;
- anything else — an interval straddling the margin, or fewer than two seeds for a seeded effect — is
  ``inconclusive``.

An ``exact`` effect (a count of bytes, a fitted exponent: no seed changes it) has a point for its interval.
This is the confidence-interval form of a one-sided test at level (1 + level) / 2 for ``greater`` / ``less`` and of
an equivalence test (two one-sided tests, Schuirmann 1987) at that level for ``within``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from attnlab.errors import ConfigError

Direction = Literal["greater", "less", "within"]
DIRECTIONS: tuple[str, ...] = ("greater", "less", "within")
Outcome = Literal["holds", "does not hold", "inconclusive"]


@dataclass(frozen=True)
class Rule:
    """What decides a claim: ``quantity`` (in words, with its unit), ``direction`` and ``margin``."""

    quantity: str
    direction: Direction
    margin: float = 0.0
    level: float = 0.95

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ConfigError("rule.direction", self.direction, "is not a direction", DIRECTIONS)
        if not math.isfinite(self.margin) or (self.direction == "within" and self.margin <= 0):
            raise ConfigError("rule.margin", self.margin, "must be finite (and > 0 for within)", "e.g. 0.05")
        if not 0 < self.level < 1:
            raise ConfigError("rule.level", self.level, "must be a probability", "e.g. 0.95")

    def describe(self) -> str:
        """``"effect > 0"``, ``"|effect| ≤ 0.05"``."""
        if self.direction == "within":
            return f"|effect| ≤ {self.margin:g}"
        return f"effect {'>' if self.direction == 'greater' else '<'} {self.margin:g}"


@dataclass(frozen=True)
class Effect:
    """A measured effect: its estimate, interval, the number of seeds behind it (0 for an exact quantity)."""

    estimate: float
    low: float
    high: float
    n: int
    exact: bool = False

    @classmethod
    def of_value(cls, value: float) -> Effect:
        """An exact quantity: its interval is the point itself."""
        return cls(value, value, value, 0, exact=True)


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    effect: Effect
    reason: str


def decide(rule: Rule, effect: Effect) -> Verdict:
    """The verdict of ``rule`` on ``effect`` (see the module docstring)."""
    lo, hi, m = effect.low, effect.high, rule.margin
    if not effect.exact and (effect.n < 2 or math.isnan(lo) or math.isnan(hi)):
        return Verdict(
            "inconclusive", effect, f"{effect.n} seed(s) with a value (NaN and failed runs left out): no interval"
        )
    if math.isnan(effect.estimate):
        return Verdict("inconclusive", effect, "nothing was measured (NaN)")
    span = f"[{lo:.4g}, {hi:.4g}]" if not effect.exact else f"{effect.estimate:.4g}"
    if rule.direction == "greater":
        if lo > m:
            return Verdict("holds", effect, f"{span} lies above {m:g}")
        if hi <= m:
            return Verdict("does not hold", effect, f"{span} lies at or below {m:g}")
    elif rule.direction == "less":
        if hi < m:
            return Verdict("holds", effect, f"{span} lies below {m:g}")
        if lo >= m:
            return Verdict("does not hold", effect, f"{span} lies at or above {m:g}")
    else:
        if -m <= lo and hi <= m:
            return Verdict("holds", effect, f"{span} lies within ±{m:g}")
        if lo > m or hi < -m:
            return Verdict("does not hold", effect, f"{span} lies outside ±{m:g}")
    return Verdict("inconclusive", effect, f"{span} straddles the margin {rule.describe()}")

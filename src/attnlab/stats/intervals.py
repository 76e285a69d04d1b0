"""Means over seeds with a 95% interval: Student's t, or a seeded percentile / BCa bootstrap.

A leaderboard row that is one run cannot say whether a gap between two mechanisms is the mechanism or the
seed. Every row here is the mean over the seeds that finished, an interval of a named kind, and the number
of seeds behind it; with one seed there is no interval and the result says so rather than printing ± 0.

- ``"t"``: mean ± t_{1−α/2, n−1} · s / √n, exact when the seed-to-seed spread is normal (Student 1908);
  the default, because with the 3–5 seeds a preset can afford the bootstrap has too few distinct resamples
  to say more (3 values have at most 10 distinct resampled means).
- ``"percentile"`` and ``"bca"``: the bootstrap (Efron & Tibshirani 1993, *An Introduction to the
  Bootstrap*, ch. 13 and 14; BCa, the bias-corrected and accelerated interval, is their §14.3),
  computed by ``scipy.stats.bootstrap`` with a seeded generator, so a table is the same on every rebuild.

A failed run is a NaN: it is left out of the mean and the interval and counted in ``n_failed``, so the table
can say "3 seeds, 1 failed" instead of dropping it silently or turning the whole row into NaN. An infinite
value is rejected: it is a metric that overflowed, not a measurement an interval can average.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

from attnlab.errors import ConfigError

IntervalKind = Literal["t", "percentile", "bca"]
INTERVAL_KINDS: tuple[str, ...] = ("t", "percentile", "bca")
DEFAULT_RESAMPLES = 9999  # scipy.stats.bootstrap's default


@dataclass(frozen=True)
class Interval:
    """A mean over seeds and its interval.

    ``kind`` is the interval asked for (``"t"``, ``"percentile"`` or ``"bca"``) or ``"none"`` when fewer than
    two seeds finished, in which case ``low`` and ``high`` are NaN (and ``mean`` is NaN when none finished).
    ``n`` counts the finite values used, ``n_failed`` the NaNs left out.
    """

    mean: float
    low: float
    high: float
    n: int
    n_failed: int
    kind: str
    level: float

    @property
    def has_interval(self) -> bool:
        """Whether there is an interval at all (at least two finite values)."""
        return self.kind != "none"

    @property
    def half_width(self) -> float:
        """Half the interval's width: the ± of a symmetric interval, NaN without one."""
        return (self.high - self.low) / 2

    def describe(self) -> str:
        """A table header's account of the row, e.g. ``"95% t interval, 3 seeds (1 failed)"``."""
        failed = f" ({self.n_failed} failed)" if self.n_failed else ""
        seeds = f"{self.n} seed{'s' if self.n != 1 else ''}{failed}"
        if not self.has_interval:
            return f"no interval, {seeds}"
        return f"{self.level:.0%} {self.kind} interval, {seeds}"


def finite_values(values: Iterable[float], field: str = "values") -> tuple[np.ndarray, int]:
    """The finite values (float64) and how many NaNs were left out; an infinite value is an error.

    The one place the NaN policy lives: the comparisons and the halving planner call it too.
    """
    array = np.asarray(list(values), dtype=np.float64)
    if array.ndim != 1:
        raise ConfigError(field, array.shape, "must be a flat sequence of numbers, one per seed")
    infinite = np.isinf(array)
    if infinite.any():
        raise ConfigError(field, float(array[infinite][0]), "is infinite", "finite numbers, or NaN for a failed run")
    missing = np.isnan(array)
    return array[~missing], int(missing.sum())


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ConfigError("level", level, "is not a probability", "0 < level < 1, e.g. 0.95")


def t_interval(values: Iterable[float], level: float = 0.95) -> Interval:
    """The mean and its Student-t interval, mean ± t_{(1+level)/2, n−1} · s / √n (s: the n − 1 standard deviation).

    Example: [1, 2, 3] has mean 2, s = 1, so the 95% interval is 2 ± t_{0.975, 2} / √3 = 2 ± 2.4841.
    """
    _check_level(level)
    x, failed = finite_values(values)
    if len(x) < 2:
        return _no_interval(x, failed, level)
    mean = float(x.mean())
    half = float(stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return Interval(mean, mean - half, mean + half, len(x), failed, "t", level)


def bootstrap_interval(
    values: Iterable[float],
    method: Literal["percentile", "bca"] = "bca",
    level: float = 0.95,
    seed: int = 0,
    n_resamples: int = DEFAULT_RESAMPLES,
) -> Interval:
    """The mean and a bootstrap interval of it: ``"percentile"`` or ``"bca"`` (Efron & Tibshirani 1993, ch. 13–14).

    Deterministic: the resamples come from ``numpy.random.default_rng(seed)``. When every value is the same
    the bootstrap distribution is a point (scipy's BCa would divide by zero): the interval is that point.
    """
    _check_level(level)
    if method not in ("percentile", "bca"):
        raise ConfigError("method", method, "is not a bootstrap interval", ("percentile", "bca"))
    if n_resamples < 1:
        raise ConfigError("n_resamples", n_resamples, "must be positive", "an integer ≥ 1, e.g. 9999")
    x, failed = finite_values(values)
    if len(x) < 2:
        return _no_interval(x, failed, level)
    mean = float(x.mean())
    if np.all(x == x[0]):
        return Interval(mean, mean, mean, len(x), failed, method, level)
    result = stats.bootstrap(
        (x,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=level,
        method=method,
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return Interval(mean, float(low), float(high), len(x), failed, method, level)


def mean_interval(values: Iterable[float], kind: IntervalKind = "t", level: float = 0.95, seed: int = 0) -> Interval:
    """The mean over seeds with an interval of the named kind (``"t"``, ``"percentile"`` or ``"bca"``)."""
    if kind == "t":
        return t_interval(values, level)
    if kind in ("percentile", "bca"):
        return bootstrap_interval(values, kind, level, seed)
    raise ConfigError("kind", kind, "is not an interval kind", INTERVAL_KINDS)


def _no_interval(x: np.ndarray, failed: int, level: float) -> Interval:
    """One finite value is a mean with no spread to measure; none is no mean at all."""
    mean = float(x[0]) if len(x) else math.nan
    return Interval(mean, math.nan, math.nan, len(x), failed, "none", level)

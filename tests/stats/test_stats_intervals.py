"""Intervals over seeds against hand-computed answers, scipy, and their coverage on simulated data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from attnlab.errors import ConfigError
from attnlab.stats.intervals import bootstrap_interval, mean_interval, t_interval

# Student-t quantiles t_{0.975, df} to 10 significant digits (the tables' 12.706, 4.303, 2.776; R's qt(0.975, df)).
T_975 = {1: 12.70620474, 2: 4.302652730, 4: 2.776445105}
# t_interval does a handful of float64 operations on values of order 1 (scipy's ppf is accurate to ~1e-15
# relative); the constants' 10 significant digits bound the comparison at 5e-10 relative.
TABLE_RTOL = 5e-10


def test_t_interval_of_one_two_three_by_hand() -> None:
    """[1, 2, 3]: mean 2, s = 1, half-width t_{0.975,2} · 1/√3."""
    interval = t_interval([1.0, 2.0, 3.0])
    assert interval.mean == 2.0
    assert interval.half_width == pytest.approx(T_975[2] / math.sqrt(3), rel=TABLE_RTOL)
    assert (interval.low, interval.high) == pytest.approx((2 - interval.half_width, 2 + interval.half_width))
    assert (interval.kind, interval.n, interval.n_failed, interval.level) == ("t", 3, 0, 0.95)


def test_t_interval_of_two_seeds_by_hand() -> None:
    """n = 2, [0, 2]: s = √2, so the half-width is t_{0.975,1} · √2/√2 = 12.706: two seeds say little."""
    interval = t_interval([0.0, 2.0])
    assert interval.mean == 1.0
    assert interval.half_width == pytest.approx(T_975[1], rel=TABLE_RTOL)


def test_t_interval_of_five_seeds_by_hand() -> None:
    """[1, 2, 3, 4, 5]: mean 3, s = √2.5, half-width t_{0.975,4} · √2.5/√5 = t_{0.975,4}/√2."""
    interval = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert interval.mean == 3.0
    assert interval.half_width == pytest.approx(T_975[4] / math.sqrt(2), rel=TABLE_RTOL)


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_t_interval_matches_scipy(level: float) -> None:
    values = np.random.default_rng(7).normal(0.8, 0.05, size=6)
    low, high = stats.t.interval(level, df=5, loc=values.mean(), scale=stats.sem(values))
    interval = t_interval(values, level)
    # The same formula in float64 on values of order 1: agreement to a few ulps of the endpoints.
    assert (interval.low, interval.high) == pytest.approx((low, high), rel=1e-13)


def test_t_interval_covers_the_true_mean_95_percent_of_the_time() -> None:
    """Over 4000 normal samples of 5 seeds, the 95% interval covers the true mean in 95% ± 4σ of them."""
    rng = np.random.default_rng(0)
    trials = 4000
    covered = 0
    for _ in range(trials):
        interval = t_interval(rng.normal(0.5, 0.1, size=5))
        covered += interval.low <= 0.5 <= interval.high
    sigma = math.sqrt(0.95 * 0.05 / trials)  # binomial standard error of the coverage
    assert abs(covered / trials - 0.95) < 4 * sigma


@pytest.mark.parametrize("kind", ["t", "percentile", "bca"])
def test_one_seed_has_no_interval_and_says_so(kind: str) -> None:
    interval = mean_interval([0.7], kind)
    assert interval.mean == 0.7
    assert math.isnan(interval.low) and math.isnan(interval.high) and math.isnan(interval.half_width)
    assert (interval.kind, interval.n, interval.has_interval) == ("none", 1, False)
    assert interval.describe() == "no interval, 1 seed"


def test_no_finished_seed_has_no_mean() -> None:
    interval = t_interval([math.nan, math.nan])
    assert math.isnan(interval.mean)
    assert (interval.n, interval.n_failed, interval.kind) == (0, 2, "none")


def test_a_failed_run_is_left_out_and_counted() -> None:
    """NaN is a failed run: the interval is that of the others, and the count of failures is kept."""
    with_failure = t_interval([1.0, math.nan, 2.0, 3.0])
    without = t_interval([1.0, 2.0, 3.0])
    assert (with_failure.mean, with_failure.low, with_failure.high) == (without.mean, without.low, without.high)
    assert (with_failure.n, with_failure.n_failed) == (3, 1)
    assert with_failure.describe() == "95% t interval, 3 seeds (1 failed)"


@pytest.mark.parametrize("kind", ["t", "percentile", "bca"])
def test_an_infinite_value_is_rejected_naming_it(kind: str) -> None:
    with pytest.raises(ConfigError, match=r"values=inf: is infinite \(allowed: finite numbers, or NaN"):
        mean_interval([1.0, math.inf], kind)


def test_bad_level_and_kind_are_rejected() -> None:
    with pytest.raises(ConfigError, match=r"level=1.5: is not a probability"):
        t_interval([1.0, 2.0], level=1.5)
    with pytest.raises(ConfigError, match=r"kind='wald': is not an interval kind \(allowed: t, percentile, bca\)"):
        mean_interval([1.0, 2.0], "wald")  # type: ignore[arg-type]


def test_percentile_bootstrap_of_two_values_by_enumeration() -> None:
    """[0, 1]: a resample's mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4; 1/4 > 2.5% at each end, so the
    95% percentile interval is exactly [0, 1] (the chance that 9999 draws hold fewer than 250 zeros is < 1e-100)."""
    interval = bootstrap_interval([0.0, 1.0], "percentile")
    assert (interval.mean, interval.low, interval.high) == (0.5, 0.0, 1.0)


def test_percentile_bootstrap_of_three_values_by_enumeration() -> None:
    """[0, 1, 2]: of the 27 equally likely resamples one has mean 0 and one mean 2; 1/27 ≈ 3.7% > 2.5%, so
    the interval is exactly [0, 2] (about 370 ± 19 of the 9999 draws are all zeros)."""
    interval = bootstrap_interval([0.0, 1.0, 2.0], "percentile")
    assert (interval.low, interval.high) == (0.0, 2.0)


def test_bca_matches_efron_tibshirani_formulas() -> None:
    """BCa endpoints from the bootstrap distribution by Efron & Tibshirani (1993) §14.3: the bias correction z0
    from the share of resampled means below the mean, the acceleration from the jackknife."""
    values = np.array([0.91, 0.95, 0.97, 0.88, 0.99, 0.72, 0.96])
    seed = 3
    distribution = stats.bootstrap(
        (values,), np.mean, method="percentile", rng=np.random.default_rng(seed)
    ).bootstrap_distribution
    theta = values.mean()
    # z0 = Φ⁻¹(#{θ*_b < θ̂}/B), with resamples tied with θ̂ (those that redraw the sample itself) counted half
    z0 = stats.norm.ppf((np.sum(distribution < theta) + np.sum(distribution <= theta)) / (2 * len(distribution)))
    jackknife = np.array([np.delete(values, i).mean() for i in range(len(values))])
    spread = jackknife.mean() - jackknife
    acceleration = np.sum(spread**3) / (6 * np.sum(spread**2) ** 1.5)
    z = stats.norm.ppf([0.025, 0.975])
    alphas = stats.norm.cdf(z0 + (z0 + z) / (1 - acceleration * (z0 + z)))
    low, high = np.quantile(distribution, alphas)
    interval = bootstrap_interval(values, "bca", seed=seed)
    # Same resamples, same quantile rule: only the order of float64 sums differs.
    assert (interval.low, interval.high) == pytest.approx((low, high), rel=1e-12)
    assert interval.kind == "bca"


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_bootstrap_is_deterministic_in_its_seed(method: str) -> None:
    # 12 distinct values: enough distinct resampled means that another seed moves the endpoints (with 5, the
    # percentile endpoints sit on the same few atoms for most seeds).
    values = np.random.default_rng(0).normal(0.9, 0.05, size=12).tolist()
    first = bootstrap_interval(values, method, seed=1)  # type: ignore[arg-type]
    assert bootstrap_interval(values, method, seed=1) == first  # type: ignore[arg-type]
    assert bootstrap_interval(values, method, seed=2) != first  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["t", "percentile", "bca"])
def test_identical_values_give_a_point_interval(kind: str) -> None:
    """No spread: every kind says [x, x] (scipy's BCa alone would give NaN with a warning)."""
    interval = mean_interval([0.99, 0.99, 0.99], kind)
    assert (interval.low, interval.mean, interval.high) == pytest.approx((0.99, 0.99, 0.99), rel=1e-15)
    assert interval.kind == kind

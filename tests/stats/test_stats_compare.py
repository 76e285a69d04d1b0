"""Paired comparisons against scipy and hand enumeration; Holm on a hand-worked example; the leaderboard test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from attnlab.errors import ConfigError
from attnlab.stats.compare import (
    MAX_EXACT_SEEDS,
    MONTE_CARLO_PATTERNS,
    holm,
    paired_comparison,
    sign_flip_p_value,
    versus_best,
)

A = {0: 0.90, 1: 0.80, 2: 0.95, 3: 0.70}
B = {0: 0.50, 1: 0.60, 2: 0.90, 3: 0.65}


def test_paired_t_matches_scipy_ttest_rel() -> None:
    result = paired_comparison(A, B, names=("softmax", "sigmoid"))
    expected = stats.ttest_rel(list(A.values()), list(B.values()))
    # scipy computes the same t in float64 in another order: t agrees to ~1e-15 relative, and the p-value
    # (the t distribution's tail, smooth in t) to well within 1e-12.
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-12)
    low, high = expected.confidence_interval(0.95)
    assert (result.interval.low, result.interval.high) == pytest.approx((low, high), rel=1e-12)
    assert result.mean_difference == pytest.approx(np.mean([0.40, 0.20, 0.05, 0.05]), rel=1e-15)
    assert (result.a, result.b, result.test, result.seeds) == ("softmax", "sigmoid", "t", (0, 1, 2, 3))


@pytest.mark.parametrize(
    ("differences", "expected"),
    [
        # ±1±2±3: the 8 sums are ±6, ±4, ±2, 0, 0; |sum| ≥ 6 twice: 2/8.
        ([1.0, 2.0, 3.0], 2 / 8),
        # ±1±2±3±4: only the all-plus and all-minus patterns reach |10|: 2/16.
        ([1.0, 2.0, 3.0, 4.0], 2 / 16),
        # 1 − 2 + 3 + 4 = 6. A pattern's sum is 10 − 2S, S the sum of the negated terms; |10 − 2S| ≥ 6 when
        # S ≤ 2 ({}, {1}, {2}) or S ≥ 8 ({1,3,4}, {2,3,4}, {1,2,3,4}): 6/16.
        ([1.0, -2.0, 3.0, 4.0], 6 / 16),
        # 0.5 − 0.5 + 1 = 1; |±0.5 ± 0.5 ± 1| ≥ 1 in all but the two patterns ±(0.5 + 0.5 − 1) = 0: 6/8.
        ([0.5, -0.5, 1.0], 6 / 8),
    ],
)
def test_sign_flip_p_value_by_enumeration(differences: list[float], expected: float) -> None:
    assert sign_flip_p_value(differences) == expected


def test_sign_flip_counts_float_ties_as_ties() -> None:
    """0.1 + 0.2 and 0.3 are equal sums in exact arithmetic but not in float64; they must still tie."""
    assert 0.1 + 0.2 != 0.3
    # Patterns of [0.1, 0.2, -0.3]: the observed sum is 0, so every pattern is at least as extreme.
    assert sign_flip_p_value([0.1, 0.2, -0.3]) == 1.0


def test_sign_flip_matches_scipy_permutation_test() -> None:
    a = np.random.default_rng(1).normal(0.8, 0.1, size=7)
    b = a - np.random.default_rng(2).normal(0.05, 0.05, size=7)
    expected = stats.permutation_test(
        (a, b), lambda x, y: np.mean(x - y), permutation_type="samples", n_resamples=math.inf
    ).pvalue
    # scipy's exact test enumerates the same 2⁷ patterns: the count agrees, so the p-values are equal.
    assert sign_flip_p_value(a - b) == expected
    result = paired_comparison(dict(enumerate(a)), dict(enumerate(b)), test="permutation")
    assert (result.p_value, result.test) == (sign_flip_p_value(a - b), "permutation")


def test_sign_flip_monte_carlo_beyond_exact_agrees_with_the_exact_count() -> None:
    """n = MAX_EXACT_SEEDS + 1 integer differences: the exact p-value by counting subset sums, against which
    the Monte Carlo estimate must fall within 4 binomial standard errors."""
    d = [3, -1, 4, 1, -5, 9, 2, 6, 5, 3, -5, 8, 9, 7, 9, 3, 2]
    assert len(d) == MAX_EXACT_SEEDS + 1
    total = sum(d)
    ways: dict[int, int] = {0: 1}  # sum of the negated terms → number of sign patterns giving it
    for x in d:
        shifted: dict[int, int] = dict(ways)
        for s, count in ways.items():
            shifted[s + x] = shifted.get(s + x, 0) + count
        ways = shifted
    exact = sum(count for s, count in ways.items() if abs(total - 2 * s) >= abs(total)) / 2 ** len(d)
    estimate = sign_flip_p_value(d, seed=0)
    sigma = math.sqrt(exact * (1 - exact) / MONTE_CARLO_PATTERNS)
    assert abs(estimate - exact) < 4 * sigma + 1 / MONTE_CARLO_PATTERNS
    assert sign_flip_p_value(d, seed=0) == estimate  # seeded: the same estimate every time


def test_only_seeds_both_finished_are_paired() -> None:
    a = {0: 0.9, 1: 0.8, 2: math.nan, 3: 0.7}
    b = {1: 0.5, 2: 0.6, 3: 0.4, 4: 0.3}
    result = paired_comparison(a, b)
    assert result.seeds == (1, 3)
    assert result.differences == pytest.approx((0.3, 0.3), rel=1e-15)
    assert result.dropped_seeds == (0, 2, 4)


def test_fewer_than_two_shared_seeds_has_no_test() -> None:
    result = paired_comparison({0: 0.9, 1: 0.8}, {1: 0.5, 2: 0.4})
    assert math.isnan(result.p_value)
    assert (result.interval.kind, result.interval.n) == ("none", 1)


@pytest.mark.parametrize("test", ["t", "permutation"])
def test_identical_runs_are_no_evidence(test: str) -> None:
    same = {0: 1.0, 1: 1.0, 2: 1.0}
    assert paired_comparison(same, same, test=test).p_value == 1.0  # type: ignore[arg-type]


def test_a_constant_difference() -> None:
    """The t-test's limit is p = 0; the sign-flip test cannot go below 2/2ⁿ."""
    a, b = {0: 1.0, 1: 1.0, 2: 1.0}, {0: 0.5, 1: 0.5, 2: 0.5}
    assert paired_comparison(a, b).p_value == 0.0
    assert paired_comparison(a, b, test="permutation").p_value == 2 / 2**3


def test_bad_test_and_infinite_values_are_rejected() -> None:
    with pytest.raises(ConfigError, match=r"test='wilcoxon': is not a paired test \(allowed: t, permutation\)"):
        paired_comparison(A, B, test="wilcoxon")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"cog values=inf: is infinite"):
        paired_comparison({0: math.inf}, B, names=("cog", "softmax"))


def test_holm_on_a_hand_worked_example() -> None:
    """p = (0.01, 0.04, 0.03, 0.005), m = 4. Ascending: 0.005·4 = 0.02; 0.01·3 = 0.03; 0.03·2 = 0.06;
    0.04·1 = 0.04, raised to the running maximum 0.06. At α = 0.05 the first and last are rejected."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx((0.03, 0.06, 0.06, 0.02), rel=1e-15)


def test_holm_caps_at_one_and_skips_untested() -> None:
    assert holm([0.5, 0.6]) == (1.0, 1.0)
    adjusted = holm([0.01, math.nan, 0.04])  # m = 2: 0.01·2 = 0.02, then max(0.02, 0.04·1)
    assert adjusted[0] == pytest.approx(0.02, rel=1e-15) and adjusted[2] == pytest.approx(0.04, rel=1e-15)
    assert math.isnan(adjusted[1])


def test_holm_is_bonferroni_for_one_and_never_below_the_raw_p() -> None:
    p = np.random.default_rng(0).uniform(size=8)
    adjusted = np.array(holm(p))
    assert np.all(adjusted >= p)
    assert np.all(adjusted <= np.minimum(1.0, 8 * p))  # never above Bonferroni
    assert holm([0.2]) == (0.2,)


SCORES = {
    "softmax": {0: 0.993, 1: 0.990, 2: 0.995},
    "sigmoid": {0: 0.990, 1: 0.992, 2: 0.991},
    "cog": {0: 0.273, 1: 0.280, 2: 0.270},
}


def test_versus_best_separates_chance_from_the_best() -> None:
    rows = versus_best(SCORES, higher_is_better=True)
    assert [r.name for r in rows] == ["softmax", "sigmoid", "cog"]
    best, sigmoid, cog = rows
    assert (best.comparison, best.tied_with_best, best.n) == (None, True, 3)
    raw = [
        stats.ttest_rel(list(SCORES[n].values()), list(SCORES["softmax"].values())).pvalue for n in ("sigmoid", "cog")
    ]
    # Holm by hand: cog's p is the smaller, so it is multiplied by 2; sigmoid's by 1, then the running maximum.
    assert raw[1] < raw[0]
    assert cog.p_holm == pytest.approx(2 * raw[1], rel=1e-12)
    assert sigmoid.p_holm == pytest.approx(max(2 * raw[1], raw[0]), rel=1e-12)
    assert (sigmoid.tied_with_best, cog.tied_with_best) == (True, False)
    assert sigmoid.comparison is not None and sigmoid.comparison.b == "softmax"


def test_versus_best_for_a_loss_ranks_the_lowest_first() -> None:
    losses = {name: {s: 1 - v for s, v in seeds.items()} for name, seeds in SCORES.items()}
    assert [r.name for r in versus_best(losses, higher_is_better=False)] == ["softmax", "sigmoid", "cog"]


def test_versus_best_with_untestable_and_failed_mechanisms() -> None:
    scores = {**SCORES, "one_seed": {5: 0.5}, "failed": {0: math.nan, 1: math.nan}}
    rows = {r.name: r for r in versus_best(scores, higher_is_better=True)}
    assert math.isnan(rows["one_seed"].p_holm) and rows["one_seed"].tied_with_best  # no shared seed: no test
    assert math.isnan(rows["failed"].mean) and not rows["failed"].tied_with_best
    assert list(rows)[-1] == "failed"
    # Untested comparisons do not count in Holm's m: cog's p is still multiplied by 2, not 4.
    raw_cog = stats.ttest_rel(list(SCORES["cog"].values()), list(SCORES["softmax"].values())).pvalue
    assert rows["cog"].p_holm == pytest.approx(2 * raw_cog, rel=1e-12)


def test_versus_best_ties_for_best_go_to_the_first_name() -> None:
    scores = {"b": {0: 1.0, 1: 1.0}, "a": {0: 1.0, 1: 1.0}}
    assert [r.name for r in versus_best(scores, higher_is_better=True)] == ["a", "b"]


def test_exact_p_values_are_counts_of_the_2_to_the_n_patterns() -> None:
    for n in (2, 5, MAX_EXACT_SEEDS):
        p = sign_flip_p_value(np.random.default_rng(n).normal(size=n))
        assert p * 2**n == round(p * 2**n)

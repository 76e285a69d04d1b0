"""Paired comparisons of mechanisms over shared seeds, and which mechanisms cannot be told apart from the best.

Two mechanisms trained with the same seed see the same data (the task is built from the seed) and start
from the same random state, so the per-seed difference removes the part of the seed's luck they share from
the comparison (a paired design, as in Student 1908). Only seeds where both runs finished are paired; the
others are listed, not imputed.

Which test is the default, and why: the paired t-test (``test="t"``). The exact sign-flip permutation test
(Fisher 1935, *The Design of Experiments*, on Darwin's paired plants; Good 2005, *Permutation, Parametric
and Bootstrap Tests of Hypotheses*) assumes only that the differences are symmetric about 0 under the null,
not normal; but with n seeds its smallest two-sided p-value is 2/2ⁿ: 0.25 at 3 seeds, 0.125 at 4, 0.0625
at 5. At the presets' 3 seeds it could never separate a mechanism at chance from one that solves the task,
so a leaderboard built on it would call everything a tie. The t-test can, at the price of assuming
near-normal differences; ask for ``test="permutation"`` from about 6 seeds on (2/2⁶ ≈ 0.031), or to check
a t-test's verdict.

Against the best: each mechanism is compared with the best-scoring one on their shared seeds, and the
p-values are corrected for the number of comparisons by Holm's step-down method (Holm 1979, "A simple
sequentially rejective multiple test procedure", Scand. J. Statist. 6:65–70), which controls the
family-wise error like Bonferroni and rejects at least as often. The best is chosen from the same data,
which Hsu's multiple comparisons with the best (Hsu 1984, Ann. Statist. 12:1136–1144) account for exactly;
Holm over the k − 1 paired tests is the simpler, common practice and is what the tables use.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

from attnlab.errors import ConfigError
from attnlab.stats.intervals import Interval, finite_values, t_interval

PairedTest = Literal["t", "permutation"]
PAIRED_TESTS: tuple[str, ...] = ("t", "permutation")
MAX_EXACT_SEEDS = 16  # 2¹⁶ sign patterns enumerated; beyond, a seeded Monte Carlo of as many patterns
MONTE_CARLO_PATTERNS = 2**16


@dataclass(frozen=True)
class PairedComparison:
    """``a − b`` over the seeds both finished: the mean difference's t interval and a two-sided p-value.

    ``p_value`` is NaN when fewer than two seeds are shared (nothing to test). ``dropped_seeds`` are the
    seeds that only one of the two has, or that failed (NaN) in either.
    """

    a: str
    b: str
    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    interval: Interval
    p_value: float
    test: str
    dropped_seeds: tuple[int, ...]

    @property
    def mean_difference(self) -> float:
        """The mean of ``a − b`` over the shared seeds."""
        return self.interval.mean


@dataclass(frozen=True)
class VersusBest:
    """One leaderboard row's comparison with the best mechanism.

    ``comparison`` is None for the best itself. ``p_holm`` is the Holm-adjusted p-value of the comparison (NaN
    for the best, or when fewer than two seeds are shared). ``tied_with_best``: the data cannot tell this
    mechanism apart from the best at level ``alpha``: True for the best, and when fewer than two seeds are
    shared (there is no test); False for a mechanism with no finished seed (there is nothing to compare).
    """

    name: str
    mean: float
    n: int
    comparison: PairedComparison | None
    p_holm: float
    tied_with_best: bool


def paired_comparison(
    a: Mapping[int, float],
    b: Mapping[int, float],
    *,
    names: tuple[str, str] = ("a", "b"),
    test: PairedTest = "t",
    level: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Compare two mechanisms' metric (``{seed: value}``, NaN for a failed run) over the seeds both finished.

    ``seed`` only matters for the permutation test beyond ``MAX_EXACT_SEEDS`` seeds (its Monte Carlo draws).
    """
    if test not in PAIRED_TESTS:
        raise ConfigError("test", test, "is not a paired test", PAIRED_TESTS)
    for name, values in zip(names, (a, b), strict=True):
        finite_values(values.values(), f"{name} values")  # rejects an infinite value, naming the mechanism
    both = sorted(s for s in set(a) & set(b) if not (math.isnan(a[s]) or math.isnan(b[s])))
    dropped = tuple(sorted((set(a) | set(b)) - set(both)))
    differences = np.array([a[s] - b[s] for s in both], dtype=np.float64)
    interval = t_interval(differences, level)
    if len(differences) < 2:
        p = math.nan
    elif test == "t":
        p = paired_t_p_value(differences)
    else:
        p = sign_flip_p_value(differences, seed)
    return PairedComparison(names[0], names[1], tuple(both), tuple(differences.tolist()), interval, p, test, dropped)


def paired_t_p_value(differences: Sequence[float] | np.ndarray) -> float:
    """Two-sided p-value of the paired t-test, t = d̄ / (s_d / √n) on n − 1 degrees of freedom.

    Differences that are all equal have no spread: all zero is no evidence (p = 1), a constant non-zero
    difference is the t-test's limit t → ±∞ (p = 0).
    """
    d = np.asarray(differences, dtype=np.float64)
    if np.all(d == d[0]):
        return 1.0 if d[0] == 0 else 0.0
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    return float(2 * stats.t.sf(abs(t), len(d) - 1))


def sign_flip_p_value(differences: Sequence[float] | np.ndarray, seed: int = 0) -> float:
    """Two-sided p-value of the sign-flip permutation test of "the differences are symmetric about 0".

    Under the null each difference is as likely to have either sign, so the observed |Σ dᵢ| is compared with
    |Σ ± dᵢ| over all 2ⁿ sign patterns (exact, n ≤ ``MAX_EXACT_SEEDS``), or over ``MONTE_CARLO_PATTERNS``
    seeded random patterns with p = (1 + #{≥}) / (1 + B) beyond (Phipson & Smyth 2010, "Permutation P-values
    Should Never Be Zero", Stat. Appl. Genet. Mol. Biol. 9:39).
    """
    d = np.asarray(differences, dtype=np.float64)
    n = len(d)
    observed = abs(d.sum())
    # A computed sum of n terms is off by at most γₙ₋₁·Σ|dᵢ| ≈ (n − 1)·u·Σ|dᵢ|, u = ε/2 (Higham 2002, Accuracy and
    # Stability of Numerical Algorithms, §4.2), so two sums that are equal in exact arithmetic differ by at most
    # (n − 1)·ε·Σ|dᵢ|; 2n·ε·Σ|dᵢ| counts such ties as ties (a smaller gap is within the rounding of the sums).
    tolerance = 2 * n * np.finfo(np.float64).eps * np.abs(d).sum()
    if n <= MAX_EXACT_SEEDS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # [2ⁿ, n]
        return float(np.mean(np.abs(signs @ d) >= observed - tolerance))
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(MONTE_CARLO_PATTERNS, n))  # [B, n]
    count = int(np.sum(np.abs(signs @ d) >= observed - tolerance))
    return (1 + count) / (1 + MONTE_CARLO_PATTERNS)


def holm(p_values: Sequence[float]) -> tuple[float, ...]:
    """Holm's (1979) step-down adjusted p-values, in the input order.

    Sort the m p-values ascending, p₍₁₎ ≤ … ≤ p₍ₘ₎; the adjusted p₍ᵢ₎ is max over j ≤ i of min(1, (m − j + 1)·p₍ⱼ₎).
    Rejecting where the adjusted value ≤ α controls the family-wise error at α. NaN (no test) stays NaN and
    does not count in m.
    """
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(len(p), math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return tuple(adjusted.tolist())


def versus_best(
    scores: Mapping[str, Mapping[int, float]],
    *,
    higher_is_better: bool,
    alpha: float = 0.05,
    test: PairedTest = "t",
    level: float = 0.95,
) -> tuple[VersusBest, ...]:
    """Which mechanisms cannot be told apart from the best: ``scores`` is ``{mechanism: {seed: value}}``.

    The best has the best mean over its finished seeds (ties: the first name in sorted order). Every other
    mechanism is compared with it over their shared seeds (``paired_comparison``), and the p-values are
    Holm-corrected over the comparisons that could be tested. Rows come back best first, by mean (mechanisms
    with no finished seed last), ties by name.
    """
    if not 0.0 < alpha < 1.0:
        raise ConfigError("alpha", alpha, "is not a probability", "0 < alpha < 1, e.g. 0.05")
    summaries = {name: finite_values(values.values(), f"{name} values")[0] for name, values in scores.items()}
    means = {name: float(x.mean()) if len(x) else math.nan for name, x in summaries.items()}
    sign = -1.0 if higher_is_better else 1.0

    def rank(name: str) -> tuple[bool, float, str]:
        return (math.isnan(means[name]), sign * means[name] if not math.isnan(means[name]) else 0.0, name)

    order = sorted(scores, key=rank)
    if not order or math.isnan(means[order[0]]):
        return tuple(VersusBest(n, means[n], 0, None, math.nan, False) for n in order)
    best = order[0]
    others = order[1:]
    comparisons = [
        paired_comparison(scores[name], scores[best], names=(name, best), test=test, level=level) for name in others
    ]
    adjusted = holm([c.p_value for c in comparisons])
    rows = [VersusBest(best, means[best], len(summaries[best]), None, math.nan, True)]
    for name, comparison, p in zip(others, comparisons, adjusted, strict=True):
        tied = not math.isnan(means[name]) and (math.isnan(p) or p > alpha)
        rows.append(VersusBest(name, means[name], len(summaries[name]), comparison, p, tied))
    return tuple(rows)

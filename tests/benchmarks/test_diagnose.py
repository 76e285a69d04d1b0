"""The diagnosis probes (``attnlab.benchmarks.diagnose``, docs/diagnosis.md) against known answers."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.benchmarks.diagnose import clipped_dead_rows, value_positions


def test_value_positions_point_each_query_at_the_value_after_its_key() -> None:
    # k1 v1 k2 v2 | noise, query k2, noise, query k1  (P = 2)
    tokens = torch.tensor([[3, 40, 5, 41, 9, 5, 7, 3]])
    assert value_positions(tokens, 2).tolist() == [[-1, -1, -1, -1, -1, 3, -1, 1]]


@pytest.mark.parametrize("gamma", [0.0, -0.0025, -0.025, -0.09, -12 / 32])
def test_clipped_dead_rows_are_those_with_uniform_probability_below_the_clip(gamma: float) -> None:
    """At uniform scores a row of n keys has p = 1/n; it is all zero, with no gradient, iff 1/n ≤ −γ/(1 − γ)."""
    t = 32
    first = math.inf if gamma == 0 else math.ceil((1 - gamma) / -gamma)
    assert clipped_dead_rows(gamma, 1.0, t) == [n for n in range(1, t + 1) if n >= first]


def test_clipped_dead_rows_of_the_papers_alpha_at_the_demos_length() -> None:
    """γ = −12/32 (the authors' OPT α = 12 at T = 32): every row with 4 or more keys is dead."""
    assert clipped_dead_rows(-12 / 32, 1.0, 32) == list(range(4, 33))

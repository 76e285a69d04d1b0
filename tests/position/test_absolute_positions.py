"""Absolute positions added to the embeddings: a fixed sinusoidal table and a learned one."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.position.absolute import sinusoidal_table


@pytest.mark.parametrize("dim", [10, 7])
def test_sinusoidal_table_matches_the_formula(dim: int) -> None:
    """P[m, 2i] = sin(m / 10000^(2i/D)), P[m, 2i+1] = cos(m / 10000^(2i/D)); an odd D drops the last cos."""
    table = sinusoidal_table(torch.arange(20), dim)
    assert table.shape == (20, dim)
    for m in range(20):
        for col in range(dim):
            angle = m / 10000 ** (2 * (col // 2) / dim)
            expected = math.sin(angle) if col % 2 == 0 else math.cos(angle)
            assert table[m, col].item() == pytest.approx(expected, abs=1e-6)


def test_learned_positions_beyond_the_table_raise_a_clear_error(make_lm) -> None:
    model = make_lm(position="learned")  # the table has max_seq_len = 16 rows
    model(torch.randint(0, 31, (1, 16)))
    with pytest.raises(ValueError, match=r"position 16 is beyond the learned table \(max_positions=16\)"):
        model(torch.randint(0, 31, (1, 17)))


def test_learned_positions_beyond_the_table_raise_when_decoding_with_a_cache(make_lm) -> None:
    model = make_lm(position="learned")
    cache = model.new_cache()
    model(torch.randint(0, 31, (1, 16)), cache)
    with pytest.raises(ValueError, match="beyond the learned table"):
        model(torch.randint(0, 31, (1, 1)), cache)

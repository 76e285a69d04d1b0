"""RoPE rotates q and k so that their dot product depends only on the distance between positions."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.attention import AttentionSite
from attnlab.position.rope import RoPE, RoPEParams, apply_rotary, rope_angles, rope_inv_freq

D = 8
CONVENTIONS = pytest.mark.parametrize("interleaved", [False, True], ids=["half-split", "interleaved"])


def rotate(x: torch.Tensor, position: int, interleaved: bool, base: float = 10000.0) -> torch.Tensor:
    """x [d] at one position, float64."""
    angles = rope_angles(torch.tensor([position]), rope_inv_freq(x.shape[-1], base))
    return apply_rotary(x[None, :], angles, interleaved)[0]


@CONVENTIONS
@pytest.mark.parametrize(("m", "n", "c"), [(0, 0, 5), (3, 1, 7), (1, 3, 100), (10, 2, 1000), (5, 5, 37)])
def test_scores_depend_only_on_relative_position(interleaved: bool, m: int, n: int, c: int) -> None:
    q, k = torch.randn(D, dtype=torch.float64), torch.randn(D, dtype=torch.float64)
    here = rotate(q, m, interleaved) @ rotate(k, n, interleaved)
    shifted = rotate(q, m + c, interleaved) @ rotate(k, n + c, interleaved)
    assert shifted.item() == pytest.approx(here.item(), abs=1e-9)


@CONVENTIONS
def test_scores_do_change_with_the_distance(interleaved: bool) -> None:
    q, k = torch.randn(D, dtype=torch.float64), torch.randn(D, dtype=torch.float64)
    near = rotate(q, 3, interleaved) @ rotate(k, 2, interleaved)
    far = rotate(q, 9, interleaved) @ rotate(k, 2, interleaved)
    assert abs(near.item() - far.item()) > 1e-3


@CONVENTIONS
def test_rope_preserves_norms(interleaved: bool) -> None:
    x = torch.randn(4, 6, D, dtype=torch.float64)
    rotated = apply_rotary(x, rope_angles(torch.arange(6), rope_inv_freq(D, 10000.0)), interleaved)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))


@CONVENTIONS
def test_rope_at_position_zero_is_the_identity(interleaved: bool) -> None:
    x = torch.randn(D)
    assert torch.equal(rotate(x, 0, interleaved), x)


@CONVENTIONS
def test_rope_rotates_the_documented_pairs_by_m_theta(interleaved: bool) -> None:
    """Known answer: pair i is (x_i, x_{i+d/2}) half-split or (x_{2i}, x_{2i+1}) interleaved; θ_i = b^{−2i/d}."""
    x, m = torch.randn(D, dtype=torch.float64), 7
    expected = x.clone()
    for i in range(D // 2):
        a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + D // 2)
        phi = m * 10000.0 ** (-2 * i / D)
        expected[a] = x[a] * math.cos(phi) - x[b] * math.sin(phi)
        expected[b] = x[a] * math.sin(phi) + x[b] * math.cos(phi)
    torch.testing.assert_close(rotate(x, m, interleaved), expected)


@CONVENTIONS
def test_rope_module_rotates_q_and_k_at_the_given_positions(interleaved: bool) -> None:
    rope = RoPE(RoPEParams(interleaved=interleaved), AttentionSite(d_model=16, n_heads=2))
    q, k = torch.randn(1, 2, 4, D, dtype=torch.float64), torch.randn(1, 2, 4, D, dtype=torch.float64)
    rq, rk = rope.rotate(q, k, torch.arange(3, 7))
    torch.testing.assert_close(rq[0, 1, 2], rotate(q[0, 1, 2], 5, interleaved))
    torch.testing.assert_close(rk[0, 0, 0], rotate(k[0, 0, 0], 3, interleaved))


def test_rope_needs_an_even_head_dimension() -> None:
    with pytest.raises(ValueError, match="even head dimension"):
        RoPE(RoPEParams(), AttentionSite(d_model=12, n_heads=4))

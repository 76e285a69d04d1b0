"""Position Interpolation: RoPE evaluated at positions m / s."""

from __future__ import annotations

import torch

from attnlab.attention import AttentionSite
from attnlab.position.rope import RoPE, RoPEParams, apply_rotary, rope_angles, rope_inv_freq
from attnlab.position.rope_pi import PIParams, PositionInterpolation

SITE = AttentionSite(d_model=32, n_heads=2, seq_len=16)  # d_head = 16


def test_pi_at_scale_s_is_rope_at_positions_m_over_s() -> None:
    pi = PositionInterpolation(PIParams(scale=4.0), SITE)
    q, k = torch.randn(1, 2, 9, 16, dtype=torch.float64), torch.randn(1, 2, 9, 16, dtype=torch.float64)
    positions = torch.arange(3, 12)
    rq, rk = pi.rotate(q, k, positions)
    angles = rope_angles(positions.to(torch.float64) / 4.0, rope_inv_freq(16, 10000.0))
    torch.testing.assert_close(rq, apply_rotary(q, angles), atol=1e-12, rtol=0)
    torch.testing.assert_close(rk, apply_rotary(k, angles), atol=1e-12, rtol=0)


def test_pi_at_scale_one_is_rope_bit_for_bit() -> None:
    q, k = torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16)
    positions = torch.arange(100, 105)
    pi = PositionInterpolation(PIParams(scale=1.0), SITE).rotate(q, k, positions)
    rope = RoPE(RoPEParams(), SITE).rotate(q, k, positions)
    assert torch.equal(pi[0], rope[0]) and torch.equal(pi[1], rope[1])

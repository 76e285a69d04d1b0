"""FoPE: floor-clipped frequencies, fixed random Fourier mixes per head, position-free padded pairs."""

from __future__ import annotations

import torch

from attnlab.attention import AttentionSite
from attnlab.position.fope import FoPE, FoPEParams, floor_clipped_inv_freq
from attnlab.position.rope import apply_rotary, rope_angles, rope_inv_freq


def qk(t: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(1, 2, t, d, dtype=torch.float64), torch.randn(1, 2, t, d, dtype=torch.float64)


def test_the_floor_zeroes_frequencies_with_less_than_one_period_in_the_window() -> None:
    """L = 512, d = 64: 16 of the 32 frequencies are below 2π/512 (10000^(−i/32) < 2π/512 ⇔ i > 15.3)."""
    w = floor_clipped_inv_freq(64, 10000.0, 512)
    assert (w == 0).sum() == 16
    assert torch.equal(w[:16], rope_inv_freq(64, 10000.0)[:16])
    assert (rope_inv_freq(64, 10000.0)[16:] < 2 * torch.pi / 512).all()


def test_without_mixing_fope_is_floor_clipped_rope() -> None:
    """σ = 0, every kept frequency mixed, zero-frequency padding: exactly floor-clipped RoPE (the issue's claim)."""
    site = AttentionSite(d_model=32, n_heads=2, seq_len=64)  # d = 16, L = 64: 3 of 8 frequencies kept
    fope = FoPE(FoPEParams(sigma=0.0, n_out=8), site).double()
    q, k = qk(7, 16)
    positions = torch.arange(5, 12)
    rq, rk = fope.rotate(q, k, positions)
    angles = rope_angles(positions, floor_clipped_inv_freq(16, 10000.0, 64))
    torch.testing.assert_close(rq, apply_rotary(q, angles), atol=1e-12, rtol=0)
    torch.testing.assert_close(rk, apply_rotary(k, angles), atol=1e-12, rtol=0)


def test_with_the_released_codes_padding_clipped_pairs_are_doubled() -> None:
    """``sin_pad=1`` is the released line: kept pairs rotate as floor-clipped RoPE; a clipped pair gets
    cos = sin = 1, i.e. (a, b) → (a − b, a + b), doubling its share of q·k."""
    site = AttentionSite(d_model=32, n_heads=2, seq_len=64)  # d = 16, L = 64: 3 of 8 frequencies kept
    fope = FoPE(FoPEParams(sigma=0.0, n_out=8, sin_pad=1.0), site).double()
    q, k = qk(7, 16)
    positions = torch.arange(5, 12)
    rq, _ = fope.rotate(q, k, positions)
    clipped = apply_rotary(q, rope_angles(positions, floor_clipped_inv_freq(16, 10000.0, 64)))
    kept = [0, 1, 2, 8, 9, 10]
    torch.testing.assert_close(rq[..., kept], clipped[..., kept], atol=1e-12, rtol=0)
    a, b = q[..., 3:8], q[..., 11:16]
    torch.testing.assert_close(rq[..., 3:8], a - b, atol=1e-12, rtol=0)
    torch.testing.assert_close(rq[..., 11:16], a + b, atol=1e-12, rtol=0)


def test_the_mixed_pairs_are_capped_at_a_quarter_of_the_head_and_take_every_step_th_frequency() -> None:
    """d = 16, L = 10 000: 7 frequencies kept, D_out = d // 4 = 4, step ⌈7/4⌉ = 2 → frequencies 0, 2, 4, 6."""
    site = AttentionSite(d_model=32, n_heads=2, seq_len=10000)
    fope = FoPE(FoPEParams(sigma=0.0, sin_pad=1.0), site).double()
    q, k = qk(5, 16)
    positions = torch.arange(5)
    rq, _ = fope.rotate(q, k, positions)
    w = rope_inv_freq(16, 10000.0)
    angles = rope_angles(positions, torch.cat([w[[0, 2, 4, 6]], torch.zeros(4, dtype=torch.float64)]))
    expected = apply_rotary(q, angles)
    pairs = [0, 1, 2, 3, 8, 9, 10, 11]
    torch.testing.assert_close(rq[..., pairs], expected[..., pairs], atol=1e-12, rtol=0)
    torch.testing.assert_close(rq[..., 4:8], q[..., 4:8] - q[..., 12:16], atol=1e-12, rtol=0)


def test_padded_pairs_are_position_free() -> None:
    site = AttentionSite(d_model=32, n_heads=2, seq_len=64)
    fope = FoPE(FoPEParams(sigma=0.3), site).double()
    q, k = qk(1, 16)
    one = fope.rotate(q, k, torch.tensor([3]))
    other = fope.rotate(q, k, torch.tensor([300]))
    torch.testing.assert_close(one[0][..., 3:8], other[0][..., 3:8], atol=0, rtol=0)


def test_with_mixing_each_head_has_its_own_coefficients_and_scores_are_not_exactly_relative() -> None:
    site = AttentionSite(d_model=32, n_heads=2, seq_len=16)  # d = 16: 5 kept frequencies, D_out = 4
    fope = FoPE(FoPEParams(sigma=0.3), site).double()
    assert not torch.equal(fope.sin_coef[0], fope.sin_coef[1])
    assert not torch.equal(fope.sin_coef, fope.cos_coef)
    q, k = qk(6, 16)
    here = fope.rotate(q, k, torch.arange(6))
    shifted = fope.rotate(q, k, torch.arange(6) + 37)
    gap = (here[0] @ here[1].transpose(-1, -2) - shifted[0] @ shifted[1].transpose(-1, -2)).abs().max()
    assert gap > 1e-3, "sin and cos get different random mixes, so a shift changes the scores"


def test_coefficients_are_fixed_buffers_unless_learnable() -> None:
    site = AttentionSite(d_model=32, n_heads=2, seq_len=16)
    assert list(FoPE(FoPEParams(), site).parameters()) == []
    assert {n for n, _ in FoPE(FoPEParams(learnable=True), site).named_parameters()} == {"sin_coef", "cos_coef"}

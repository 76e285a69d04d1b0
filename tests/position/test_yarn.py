"""YaRN: NTK-by-parts frequencies and the attention temperature √(1/t) = 0.1·ln(s) + 1."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.attention import AttentionSite
from attnlab.position.rope import RoPE, RoPEParams, apply_rotary, rope_angles, rope_inv_freq
from attnlab.position.yarn import YaRN, YaRNParams, yarn_correction_range, yarn_inv_freq, yarn_mscale

SITE = AttentionSite(d_model=32, n_heads=2, seq_len=16)  # d_head = 16, L = 16


@pytest.mark.parametrize("scale", [2.0, 8.0, 16.0, 40.0])
def test_mscale_is_one_tenth_log_s_plus_one(scale: float) -> None:
    assert yarn_mscale(scale) == pytest.approx(0.1 * math.log(scale) + 1, abs=1e-15)


def test_mscale_matches_the_worked_examples_and_is_one_without_scaling() -> None:
    assert yarn_mscale(8.0) == pytest.approx(1.208, abs=1e-3)
    assert yarn_mscale(16.0) == pytest.approx(1.277, abs=1e-3)
    assert yarn_mscale(1.0) == 1.0


def test_correction_range_matches_the_llama_example() -> None:
    """d = 128, b = 10⁴, L = 4096, β_fast = 32, β_slow = 1 → ramp from pair 20 to pair 46: HF
    ``_compute_yarn_parameters``' correction range, floor(20.9) and ceil(45.0) of d·ln(L/(2πβ)) / (2 ln b)."""
    assert yarn_correction_range(128, 10000.0, 4096, 32.0, 1.0) == (20, 46)


def test_fast_pairs_keep_theta_and_slow_pairs_use_theta_over_s() -> None:
    theta = rope_inv_freq(128, 10000.0)
    scaled = yarn_inv_freq(128, 10000.0, 8.0, 4096, 32.0, 1.0)
    assert torch.equal(scaled[:21], theta[:21])  # ramp = 0 up to and including pair low = 20
    torch.testing.assert_close(scaled[46:], theta[46:] / 8.0, atol=0, rtol=1e-15)
    between = scaled[21:46] / theta[21:46]
    assert ((between < 1) & (between > 1 / 8)).all()


def test_yarn_at_scale_one_is_rope() -> None:
    q, k = torch.randn(1, 2, 7, 16, dtype=torch.float64), torch.randn(1, 2, 7, 16, dtype=torch.float64)
    positions = torch.arange(30, 37)
    yarn = YaRN(YaRNParams(scale=1.0), SITE).rotate(q, k, positions)
    rope = RoPE(RoPEParams(), SITE).rotate(q, k, positions)
    torch.testing.assert_close(yarn[0], rope[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(yarn[1], rope[1], atol=1e-12, rtol=0)


def test_yarn_scales_logits_by_mscale_squared() -> None:
    q, k = torch.randn(1, 2, 7, 16, dtype=torch.float64), torch.randn(1, 2, 7, 16, dtype=torch.float64)
    positions = torch.arange(7)
    rq, rk = YaRN(YaRNParams(scale=8.0), SITE).rotate(q, k, positions)
    angles = rope_angles(positions, yarn_inv_freq(16, 10000.0, 8.0, 16, 32.0, 1.0))
    plain = apply_rotary(q, angles) @ apply_rotary(k, angles).transpose(-1, -2)
    torch.testing.assert_close(rq @ rk.transpose(-1, -2), yarn_mscale(8.0) ** 2 * plain, atol=1e-12, rtol=0)

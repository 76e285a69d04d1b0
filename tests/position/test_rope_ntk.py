"""NTK-aware RoPE: a larger base b·s^(d/(d−2)), fixed (static) or grown with the current length (dynamic)."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import AttentionConfig, AttentionSite, LayerKVCache, build_attention
from attnlab.errors import ConfigError
from attnlab.position.rope import RoPE, RoPEParams, rope_inv_freq
from attnlab.position.rope_ntk import DynamicNTKParams, DynamicNTKRoPE, NTKAwareRoPE, NTKParams, ntk_base

SITE = AttentionSite(d_model=32, n_heads=2, seq_len=16)  # d_head = 16, L = 16


def qk(t: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(1, 2, t, 16, dtype=torch.float64), torch.randn(1, 2, t, 16, dtype=torch.float64)


def test_ntk_base_matches_the_worked_example() -> None:
    """b = 10000, d = 128, s = 4 → b′ = 10000 · 4^(128/126) ≈ 40 890 (b′ = b · s^(d/(d−2)), arXiv:2309.00071)."""
    assert ntk_base(10000.0, 4.0, 128) == pytest.approx(40890, rel=1e-4)


def test_ntk_keeps_the_highest_frequency_and_divides_the_lowest_by_s() -> None:
    theta = rope_inv_freq(16, 10000.0)
    scaled = rope_inv_freq(16, ntk_base(10000.0, 4.0, 16))
    assert scaled[0].item() == theta[0].item() == 1.0
    assert scaled[-1].item() == pytest.approx(theta[-1].item() / 4.0, rel=1e-12)


def test_static_ntk_at_scale_one_is_rope_bit_for_bit() -> None:
    q, k = qk(6)
    positions = torch.arange(6)
    ntk = NTKAwareRoPE(NTKParams(scale=1.0), SITE).rotate(q, k, positions)
    rope = RoPE(RoPEParams(), SITE).rotate(q, k, positions)
    assert torch.equal(ntk[0], rope[0]) and torch.equal(ntk[1], rope[1])


def test_static_ntk_is_rope_with_the_scaled_base() -> None:
    q, k = qk(6)
    positions = torch.arange(20, 26)
    ntk = NTKAwareRoPE(NTKParams(scale=8.0), SITE).rotate(q, k, positions)
    rope = RoPE(RoPEParams(base=ntk_base(10000.0, 8.0, 16)), SITE).rotate(q, k, positions)
    assert torch.equal(ntk[0], rope[0]) and torch.equal(ntk[1], rope[1])


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_dynamic_ntk_within_the_training_length_is_rope_bit_for_bit(scale: float) -> None:
    q, k = qk(16)
    positions = torch.arange(16)  # current length 16 = L
    dynamic = DynamicNTKRoPE(DynamicNTKParams(scale=scale), SITE).rotate(q, k, positions)
    rope = RoPE(RoPEParams(), SITE).rotate(q, k, positions)
    assert torch.equal(dynamic[0], rope[0]) and torch.equal(dynamic[1], rope[1])


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_dynamic_ntk_beyond_the_training_length_uses_the_hf_base(scale: float) -> None:
    """n = 24 > L = 16: b′ = b · (α·n/L − (α − 1))^{d/(d−2)}; even α = 1 is not plain RoPE here."""
    q, k = qk(4)
    positions = torch.arange(20, 24)  # absolute, as with a KV cache: n = 24
    dynamic = DynamicNTKRoPE(DynamicNTKParams(scale=scale), SITE).rotate(q, k, positions)
    base = 10000.0 * (scale * 24 / 16 - (scale - 1)) ** (16 / 14)
    expected = RoPE(RoPEParams(base=base), SITE).rotate(q, k, positions)
    torch.testing.assert_close(dynamic[0], expected[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(dynamic[1], expected[1], atol=1e-12, rtol=0)
    assert not torch.allclose(dynamic[0], RoPE(RoPEParams(), SITE).rotate(q, k, positions)[0])


def test_dynamic_ntk_refuses_a_kv_cache(make_lm) -> None:
    model = make_lm(position="rope_ntk_dynamic")
    with pytest.raises(ConfigError, match=r"position.*rope_ntk_dynamic.*KV-cache"):
        model.new_cache()


def cached_and_full(train_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = AttentionConfig(position="rope_ntk_dynamic", position_args={"train_length": train_length})
    attn = build_attention(cfg, AttentionSite(d_model=16, n_heads=2, seq_len=16)).double()
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(1, 8, 16, dtype=torch.float64)
    cache = LayerKVCache()
    stepwise = torch.cat([attn(x[:, i : i + 1], cache=cache) for i in range(8)], dim=1)
    return stepwise, attn(x)


@torch.no_grad()
def test_cached_decoding_equals_the_full_pass_while_the_length_stays_within_training() -> None:
    stepwise, full = cached_and_full(train_length=8)  # 8 tokens = L: the base never changes
    torch.testing.assert_close(stepwise, full, atol=1e-12, rtol=0)


@torch.no_grad()
def test_why_no_kv_cache_beyond_training_the_cached_pass_differs_from_the_full_one() -> None:
    """The full pass rotates every token with the base of n = 8; decoding rotated each with its own step's."""
    stepwise, full = cached_and_full(train_length=3)
    assert (stepwise - full).abs().max() > 1e-3

"""ABF (RoPE with a large base) and Entropy-ABF's query scaling λ_m = max(1, log(m + 1) / log L)."""

from __future__ import annotations

import math

import torch

from attnlab.attention import AttentionSite
from attnlab.position.rope import RoPE, RoPEParams
from attnlab.position.rope_abf import ABFParams, AdjustedBaseFrequency

SITE = AttentionSite(d_model=32, n_heads=2, seq_len=16, layer_idx=2, n_layers=4)  # d_head = 16


def qk(t: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(1, 2, t, 16, dtype=torch.float64), torch.randn(1, 2, t, 16, dtype=torch.float64)


def test_abf_with_base_b_is_rope_with_base_b() -> None:
    q, k = qk(6)
    positions = torch.arange(40, 46)
    for base in (500000.0, 1e6):
        abf = AdjustedBaseFrequency(ABFParams(base=base), SITE).rotate(q, k, positions)
        rope = RoPE(RoPEParams(base=base), SITE).rotate(q, k, positions)
        assert torch.equal(abf[0], rope[0]) and torch.equal(abf[1], rope[1])


def test_the_default_base_is_the_papers_500000() -> None:
    assert AdjustedBaseFrequency(ABFParams(), SITE).base == 500000.0


def test_entropy_scaling_multiplies_the_rotated_query_by_max_one_log_length_ratio() -> None:
    q, k = qk(40)
    positions = torch.arange(40)
    scaled = AdjustedBaseFrequency(ABFParams(entropy_scaling=True), SITE).rotate(q, k, positions)
    plain = AdjustedBaseFrequency(ABFParams(), SITE).rotate(q, k, positions)
    assert torch.equal(scaled[1], plain[1]), "keys are never scaled"
    for m in range(40):
        lam = max(1.0, math.log(m + 1) / math.log(16))  # L = the site's training length
        torch.testing.assert_close(scaled[0][:, :, m], lam * plain[0][:, :, m], atol=1e-12, rtol=0)
    assert torch.equal(scaled[0][:, :, :16], plain[0][:, :, :16]), "λ = 1 within the training length"


def test_entropy_length_overrides_the_training_length() -> None:
    q, k = qk(9)
    positions = torch.arange(9)
    scaled = AdjustedBaseFrequency(ABFParams(entropy_scaling=True, entropy_length=4), SITE).rotate(q, k, positions)
    plain = AdjustedBaseFrequency(ABFParams(), SITE).rotate(q, k, positions)
    torch.testing.assert_close(scaled[0][:, :, 8], math.log(9) / math.log(4) * plain[0][:, :, 8], atol=1e-12, rtol=0)


def test_the_first_layers_keep_plain_abf() -> None:
    q, k = qk(40)
    positions = torch.arange(40)
    params = ABFParams(entropy_scaling=True)  # unscaled_layers = 2, as apply_eabf(model, count=2)
    plain = AdjustedBaseFrequency(ABFParams(), SITE).rotate(q, k, positions)
    for layer, scaled in ((0, False), (1, False), (2, True), (3, True)):
        site = AttentionSite(d_model=32, n_heads=2, seq_len=16, layer_idx=layer, n_layers=4)
        rq, _ = AdjustedBaseFrequency(params, site).rotate(q, k, positions)
        assert torch.equal(rq, plain[0]) is not scaled, f"layer {layer}"

"""LPA: every attention projection factored through rank r, with no nonlinearity between the factors."""

from __future__ import annotations

import torch

from attnlab.attention import AttentionConfig, AttentionSite, build_attention

SITE = AttentionSite(d_model=16, n_heads=4)


def test_full_rank_with_identity_second_factors_is_mha() -> None:
    lpa = build_attention(AttentionConfig(heads="lpa", heads_args={"rank": 16}), SITE).double()
    mha = build_attention(AttentionConfig(heads="mha"), SITE).double()
    eye = torch.eye(16, dtype=torch.float64)
    with torch.no_grad():
        for name in "qkv":  # (x W) I
            getattr(lpa.heads, f"{name}_down").weight.copy_(getattr(mha.heads, f"{name}_proj").weight)
            getattr(lpa.heads, f"{name}_up").weight.copy_(eye)
        lpa.heads.o_down.weight.copy_(mha.heads.o_proj.weight)  # (z W_o) I
        lpa.heads.o_proj.weight.copy_(eye)
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    torch.testing.assert_close(lpa(x), mha(x), atol=1e-12, rtol=0)


def test_attention_has_eight_rank_by_width_matrices() -> None:
    lpa = build_attention(AttentionConfig(heads="lpa", heads_args={"rank": 3}), SITE)
    assert sum(p.numel() for p in lpa.parameters()) == 8 * 3 * 16

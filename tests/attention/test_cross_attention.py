"""Cross-attention: queries from x, keys and values from a context of another length."""

from __future__ import annotations

import torch

from attnlab.attention import AttentionConfig, AttentionSite, build_attention

SITE = AttentionSite(d_model=32, n_heads=4, causal=False, cross=True)


def test_cross_attention_maps_x_and_a_longer_context_to_the_shape_of_x() -> None:
    attention = build_attention(AttentionConfig(position="nope"), SITE)
    x, context = torch.randn(2, 5, 32), torch.randn(2, 9, 32)
    assert attention(x, context).shape == (2, 5, 32)


def test_cross_attention_output_at_a_query_ignores_the_other_queries() -> None:
    attention = build_attention(AttentionConfig(position="nope"), SITE)
    x, context = torch.randn(2, 5, 32), torch.randn(2, 9, 32)
    edited = x.clone()
    edited[:, [0, 1, 3, 4]] = torch.randn(2, 4, 32)
    before, after = attention(x, context), attention(edited, context)
    torch.testing.assert_close(after[:, 2], before[:, 2], atol=1e-6, rtol=0)
    assert not torch.allclose(after[:, 0], before[:, 0], atol=1e-3)


def test_cross_attention_output_depends_on_the_context() -> None:
    attention = build_attention(AttentionConfig(position="nope"), SITE)
    x, context = torch.randn(2, 5, 32), torch.randn(2, 9, 32)
    assert not torch.allclose(attention(x, context), attention(x, torch.randn(2, 9, 32)), atol=1e-3)

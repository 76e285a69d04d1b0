"""Gated attention heads: σ(gate) · head output, with the gate starting at ``gate_init``."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import AttentionConfig, AttentionSite, build_attention

SITE = AttentionSite(d_model=32, n_heads=4)


def gated_with_zero_weights(gate: str) -> torch.nn.Module:
    attention = build_attention(
        AttentionConfig(heads="gated", heads_args={"gate": gate, "gate_init": 0.25}, position="rope"), SITE
    )
    with torch.no_grad():
        attention.heads.w1.zero_()
        if attention.heads.w2 is not None:
            attention.heads.w2.zero_()
    return attention


@pytest.mark.parametrize("gate", ["linear", "mlp"])
def test_zero_gate_weights_give_a_gate_of_gate_init(gate: str) -> None:
    attention = gated_with_zero_weights(gate)
    g = attention.heads.gate_logits(torch.randn(2, 6, 32)).sigmoid()
    assert g.shape == (2, 4, 6, 1)
    torch.testing.assert_close(g, torch.full_like(g, 0.25), atol=3e-8, rtol=0)  # one float32 ulp at 0.25


@pytest.mark.parametrize("gate", ["linear", "mlp"])
def test_zero_gate_weights_scale_the_ungated_output_by_a_quarter(gate: str) -> None:
    gated = gated_with_zero_weights(gate)
    plain = build_attention(AttentionConfig(heads="mha", position="rope"), SITE)
    loaded = plain.load_state_dict(gated.state_dict(), strict=False)  # the shared q, k, v, o projections
    assert not loaded.missing_keys
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(gated(x), 0.25 * plain(x), atol=1e-6, rtol=1e-6)


def test_gate_depends_on_the_token() -> None:
    attention = build_attention(AttentionConfig(heads="gated", position="rope"), SITE)
    g = attention.heads.gate_logits(torch.randn(1, 6, 32)).sigmoid()
    assert g.std(dim=2).min() > 1e-3

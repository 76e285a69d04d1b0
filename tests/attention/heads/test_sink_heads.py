"""Learned attention sinks: extra keys every query sees; the pattern stays over real keys, the sink mass apart."""

from __future__ import annotations

import torch

from attnlab.attention import AttentionConfig, AttentionSite, build_attention
from attnlab.hook_points import capture

SITE = AttentionSite(d_model=16, n_heads=4)


def sink_module(window: int | None = None, **args) -> torch.nn.Module:
    cfg = AttentionConfig(heads="sinks", heads_args=args, position="rope", window=window)
    return build_attention(cfg, SITE).double()


def test_zero_sink_values_scale_each_head_output_by_one_minus_the_sink_mass() -> None:
    """softmax over [sinks ⧺ keys] is (1 − m) · softmax over keys, so with σ_v = 0, z = (1 − m) · z_MHA."""
    sinks = sink_module(n_sinks=3)
    mha = build_attention(AttentionConfig(heads="mha", position="rope"), SITE).double()
    mha.load_state_dict(sinks.state_dict(), strict=False)
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    with capture(sinks, ["hook_z", "hook_sink_mass"]) as z_sinks, capture(mha, ["hook_z"]) as z_mha:
        sinks(x), mha(x)
    mass = z_sinks["hook_sink_mass"]  # [B, H, T]
    assert (mass > 0).all() and (mass < 1).all()
    torch.testing.assert_close(z_sinks["hook_z"], (1 - mass).unsqueeze(-1) * z_mha["hook_z"], atol=1e-12, rtol=0)


def test_the_pattern_is_over_real_keys_and_with_the_sink_mass_sums_to_one(make_lm) -> None:
    model = make_lm(heads="sinks", heads_args={"n_sinks": 2})
    with capture(model, ["blocks.0.attn.hook_pattern", "blocks.0.attn.hook_sink_mass"]) as cache:
        model(torch.randint(0, 31, (2, 8)))
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert pattern.shape == (2, 4, 8, 8)
    mass = cache["blocks.0.attn.hook_sink_mass"]
    torch.testing.assert_close(pattern.sum(-1) + mass, torch.ones_like(mass))


def test_sinks_stay_visible_to_every_query_under_a_sliding_window() -> None:
    """Window 1: each query sees itself and the n sinks; a zero sink logit gives mass n / (n + e^{s_ii})."""
    sinks = sink_module(window=1, n_sinks=2, kind="logit")
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    with capture(sinks, ["hook_attn_scores", "hook_sink_mass"]) as cache:
        sinks(x)
    self_scores = cache["hook_attn_scores"].diagonal(dim1=-2, dim2=-1)  # [B, H, T]
    torch.testing.assert_close(cache["hook_sink_mass"], 2 / (2 + self_scores.exp()), atol=1e-12, rtol=0)

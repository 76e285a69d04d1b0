"""Talking-heads attention: H×H mixing of the logits before the normaliser and of the weights after it."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from attnlab.attention import AttentionConfig, AttentionSite, build_attention
from attnlab.hook_points import capture
from tolerances import lm_atol

SITE = AttentionSite(d_model=16, n_heads=4)  # d_head = 4


def talking_heads(position: str = "nope", **cfg) -> torch.nn.Module:
    return build_attention(AttentionConfig(heads="talking_heads", position=position, **cfg), SITE).double()


def randomise_mixing(module: torch.nn.Module) -> None:
    with torch.no_grad():
        module.heads.logit_mix.normal_(0.0, 0.7)
        module.heads.weight_mix.normal_(0.0, 0.7)  # negative entries too


def talking_heads_by_hand(module: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax talking heads, causal, no position encoding, written out: returns (weights, output)."""
    heads = module.heads
    b, t, d_model = x.shape
    n, d = 4, 4
    q, k, v = (
        (x @ w.T).view(b, t, n, d).transpose(1, 2)
        for w in (heads.q_proj.weight, heads.k_proj.weight, heads.v_proj.weight)
    )
    s = q @ k.transpose(-1, -2) / math.sqrt(d)  # [B, H, T, T]
    p_l, p_w = heads.logit_mix, heads.weight_mix
    mixed = torch.stack([sum(p_l[g, h] * s[:, h] for h in range(n)) for g in range(n)], dim=1)
    a = torch.softmax(mixed.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf")), dim=-1)
    w = torch.stack([sum(p_w[g, h] * a[:, h] for h in range(n)) for g in range(n)], dim=1)
    out = (w @ v).transpose(1, 2).reshape(b, t, d_model) @ heads.o_proj.weight.T
    return w, out


def test_module_matches_the_formula_with_learned_mixing() -> None:
    module = talking_heads()
    randomise_mixing(module)
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    with capture(module, ["hook_pattern"]) as cache:
        out = module(x)
    w, expected = talking_heads_by_hand(module, x)
    torch.testing.assert_close(cache["hook_pattern"], w, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_identity_mixing_is_multi_head_attention_with_the_same_weights(position: str) -> None:
    module = talking_heads(position)
    mha = build_attention(AttentionConfig(heads="mha", position=position), SITE).double()
    loaded = mha.load_state_dict(module.state_dict(), strict=False)  # q, k, v, o projections
    assert not loaded.missing_keys and loaded.unexpected_keys == ["heads.logit_mix", "heads.weight_mix"]
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    with capture(module, ["hook_pattern"]) as mixed, capture(mha, ["hook_pattern"]) as plain:
        out, expected = module(x), mha(x)
    torch.testing.assert_close(mixed["hook_pattern"], plain["hook_pattern"], atol=1e-14, rtol=0)
    torch.testing.assert_close(out, expected, atol=1e-14, rtol=0)


@pytest.mark.parametrize("normaliser", ["softmax", "sigmoid", "cog"])
def test_masked_cells_stay_exactly_zero_after_the_post_mix(normaliser: str) -> None:
    module = talking_heads(normaliser=normaliser, normaliser_args={"bias": -1.0} if normaliser == "sigmoid" else {})
    randomise_mixing(module)
    with capture(module, ["hook_pattern"]) as cache:
        module(torch.randn(2, 6, 16, dtype=torch.float64))
    future = torch.ones(6, 6, dtype=torch.bool).triu(1)
    w = cache["hook_pattern"]
    assert torch.equal(w[..., future], torch.zeros_like(w[..., future]))
    assert (w[..., ~future] < 0).any(), "negative mixing entries should give some negative visible weights"


def test_changing_a_later_token_leaves_earlier_logits_unchanged(make_lm) -> None:
    model = make_lm(heads="talking_heads")  # make_lm redraws every parameter: the mixing is random
    assert not torch.allclose(model.blocks[0].attn.heads.logit_mix, torch.eye(4))
    tokens = torch.randint(0, 31, (2, 8))
    edited = tokens.clone()
    edited[:, 5] = (tokens[:, 5] + 1) % 31
    before, after = model(tokens), model(edited)
    torch.testing.assert_close(after[:, :5], before[:, :5], atol=1e-6, rtol=0)
    assert not torch.allclose(after[:, 5], before[:, 5], atol=1e-3), "the edit should change its own logits"


@pytest.mark.parametrize("heads_args", [{}, {"n_kv_heads": 2}], ids=["mha", "gqa"])
@pytest.mark.parametrize("chunk", [1, 3], ids=["one-at-a-time", "chunks-of-3"])
@torch.no_grad()
def test_cached_decoding_matches_the_full_forward(make_lm, chunk: int, heads_args: dict) -> None:
    # float64: the check is of the cache, which is exact, not of float32 rounding; the two evaluations differ in
    # summation order only: lm_atol (tests/tolerances.py).
    model = make_lm(heads="talking_heads", heads_args=heads_args).double()
    tokens = torch.randint(0, 31, (2, 8))
    cache = model.new_cache()
    chunks = torch.cat([model(tokens[:, i : i + chunk], cache) for i in range(0, 8, chunk)], dim=1)
    torch.testing.assert_close(chunks, model(tokens), atol=lm_atol(model(tokens)), rtol=0)


def test_attention_module_gradients_match_finite_differences() -> None:
    site = AttentionSite(d_model=8, n_heads=2, seq_len=8)
    module = build_attention(AttentionConfig(heads="talking_heads"), site).double()
    randomise_mixing(module)
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
    x = torch.randn(1, 5, 8, dtype=torch.float64, requires_grad=True)

    def forward(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return functional_call(module, dict(zip(names, params, strict=True)), (x,))

    assert torch.autograd.gradcheck(forward, (x, *params))

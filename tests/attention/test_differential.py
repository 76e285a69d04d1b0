"""Differential attention: W = A1 − λ·A2 over H/2 head pairs, then a per-head RMSNorm · (1 − λ_init)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from attnlab.attention import AttentionConfig, AttentionSite, attend_reference, build_attention
from attnlab.attention.normalisers.softmax import Softmax
from attnlab.errors import ConfigError
from attnlab.hook_points import capture
from tolerances import lm_atol

SITE = AttentionSite(d_model=16, n_heads=4, layer_idx=2)  # 2 differential heads, q/k halves of 4, values of 8


def differential(position: str = "nope", site: AttentionSite = SITE, **heads_args) -> torch.nn.Module:
    cfg = AttentionConfig(heads="differential", heads_args=heads_args, position=position)
    module = build_attention(cfg, site).double()
    with torch.no_grad():
        module.heads.subln.weight.normal_(1.0, 0.3)  # a non-trivial learned gain
    return module


def rope_by_hand(x: torch.Tensor) -> torch.Tensor:
    """RoPE on the last dim of x [B, H, T, d]: pairs (i, i + d/2) at position t rotate by t · 10000^(−2i/d)."""
    d, t = x.shape[-1], x.shape[-2]
    theta = torch.tensor([10000.0 ** (-2 * i / d) for i in range(d // 2)], dtype=torch.float64)
    angle = torch.arange(t, dtype=torch.float64)[:, None] * theta[None, :]  # [T, d/2]
    a, b = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat((a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()), dim=-1)


def differential_by_hand(module: torch.nn.Module, x: torch.Tensor, rope: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' MultiheadDiffAttn.forward, written out: returns (W [B, H/2, T, T], output [B, T, D])."""
    heads = module.heads
    b, t, d_model = x.shape
    n_pairs, d = 2, 4
    q = (x @ heads.q_proj.weight.T).view(b, t, 2 * n_pairs, d).transpose(1, 2)
    k = (x @ heads.k_proj.weight.T).view(b, t, 2 * n_pairs, d).transpose(1, 2)
    v = (x @ heads.v_proj.weight.T).view(b, t, n_pairs, 2 * d).transpose(1, 2)
    if rope:
        q, k = rope_by_hand(q), rope_by_hand(k)
    s = (q / math.sqrt(d)) @ k.transpose(-1, -2)
    s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    a = torch.softmax(s, dim=-1).view(b, n_pairs, 2, t, t)
    lambda_init = 0.8 - 0.6 * math.exp(-0.3 * 2)  # layer 2
    lam = (
        torch.exp((heads.lambda_q1 * heads.lambda_k1).sum())
        - torch.exp((heads.lambda_q2 * heads.lambda_k2).sum())
        + lambda_init
    )
    w = a[:, :, 0] - lam * a[:, :, 1]
    o = w @ v  # [B, H/2, T, 2d]
    o = o / torch.sqrt(o.square().mean(-1, keepdim=True) + 1e-5) * heads.subln.weight
    o = o * (1 - lambda_init)
    return w, o.transpose(1, 2).reshape(b, t, d_model) @ heads.o_proj.weight.T


@pytest.mark.parametrize("position", ["nope", "rope"])
def test_module_matches_the_authors_forward_pass(position: str) -> None:
    """With RoPE, both q/k halves of every head are rotated as ordinary heads of size d."""
    module = differential(position)
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    with capture(module, ["hook_pattern"]) as cache:
        out = module(x)
    w, expected = differential_by_hand(module, x, rope=position == "rope")
    torch.testing.assert_close(cache["hook_pattern"], w, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)


def test_with_lambda_zero_it_is_softmax_attention_over_the_first_map() -> None:
    module = differential("rope", lambda_init=0.0)
    with torch.no_grad():  # exp(0) − exp(0) + 0 = 0
        for p in (module.heads.lambda_q1, module.heads.lambda_k1, module.heads.lambda_q2, module.heads.lambda_k2):
            p.zero_()
    assert module.heads.lambda_full(torch.float64).item() == 0.0
    hooks = ["hook_rot_q", "hook_rot_k", "hook_v", "hook_pattern", "hook_z"]
    with capture(module, hooks) as cache:
        module(torch.randn(2, 6, 16, dtype=torch.float64))
    first_q, first_k = cache["hook_rot_q"][:, 0::2], cache["hook_rot_k"][:, 0::2]  # half 1 of each head
    plain = attend_reference(first_q, first_k, cache["hook_v"], normaliser=Softmax(), causal=True)
    torch.testing.assert_close(cache["hook_pattern"], plain.weights, atol=1e-14, rtol=0)
    torch.testing.assert_close(cache["hook_z"], plain.out, atol=1e-14, rtol=0)  # the output before the sub-norm


def test_softmax_rows_sum_to_one_minus_lambda() -> None:
    module = differential()
    with capture(module, ["hook_pattern"]) as cache:
        module(torch.randn(2, 6, 16, dtype=torch.float64))
    sums = cache["hook_pattern"].sum(-1)
    lam = module.heads.lambda_full(torch.float64)
    torch.testing.assert_close(sums, (1 - lam).expand_as(sums), atol=1e-12, rtol=0)


def test_weights_go_negative_where_the_second_map_dominates() -> None:
    module = differential()
    with capture(module, ["hook_attn_scores", "hook_pattern"]) as cache:
        module(3 * torch.randn(2, 6, 16, dtype=torch.float64))
    a = cache["hook_attn_scores"].softmax(-1)
    lam = module.heads.lambda_full(torch.float64)
    second_dominates = a[:, 1::2] * lam > a[:, 0::2]
    assert second_dominates.any(), "the input should make the second map win somewhere"
    assert (cache["hook_pattern"][second_dominates] < 0).all()


def test_lambda_init_follows_the_depth_schedule() -> None:
    got = [
        build_attention(
            AttentionConfig(heads="differential"), AttentionSite(d_model=16, n_heads=4, layer_idx=layer)
        ).heads.lambda_init
        for layer in range(4)
    ]
    assert got == pytest.approx([0.2, 0.3555, 0.4707, 0.5561], abs=1e-4)  # 0.8 − 0.6·exp(−0.3·l)


def test_heads_are_halved_at_the_baseline_head_dim_with_mha_parameter_count() -> None:
    module = differential()
    mha = build_attention(AttentionConfig(position="nope"), SITE)
    with capture(module, ["hook_q", "hook_k", "hook_v", "hook_z"]) as cache:
        module(torch.randn(1, 6, 16, dtype=torch.float64))
    assert cache["hook_q"].shape == cache["hook_k"].shape == (1, 4, 6, 4)  # H halves of d = D / H
    assert cache["hook_v"].shape == cache["hook_z"].shape == (1, 2, 6, 8)  # H / 2 heads of 2d
    projections = sum(p.numel() for n, p in module.named_parameters() if n.endswith("proj.weight"))
    assert projections == sum(p.numel() for p in mha.parameters())


def test_odd_head_count_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"n_heads=3.*must be even"):
        AttentionConfig(heads="differential").check_site(AttentionSite(d_model=12, n_heads=3))


def test_changing_a_later_token_leaves_earlier_logits_unchanged(make_lm) -> None:
    model = make_lm(heads="differential")
    tokens = torch.randint(0, 31, (2, 8))
    edited = tokens.clone()
    edited[:, 5] = (tokens[:, 5] + 1) % 31
    before, after = model(tokens), model(edited)
    torch.testing.assert_close(after[:, :5], before[:, :5], atol=1e-6, rtol=0)
    assert not torch.allclose(after[:, 5], before[:, 5], atol=1e-3), "the edit should change its own logits"


@pytest.mark.parametrize("position", ["rope", "alibi"])
@pytest.mark.parametrize("chunk", [1, 3], ids=["one-at-a-time", "chunks-of-3"])
@torch.no_grad()
def test_cached_decoding_matches_the_full_forward(make_lm, chunk: int, position: str) -> None:
    # float64: the check is of the cache, which is exact, not of float32 rounding; the two evaluations differ in
    # summation order only: lm_atol (tests/tolerances.py).
    model = make_lm(heads="differential", position=position).double()
    tokens = torch.randint(0, 31, (2, 8))
    cache = model.new_cache()
    chunks = torch.cat([model(tokens[:, i : i + chunk], cache) for i in range(0, 8, chunk)], dim=1)
    torch.testing.assert_close(chunks, model(tokens), atol=lm_atol(model(tokens)), rtol=0)


def test_attention_module_gradients_match_finite_differences() -> None:
    site = AttentionSite(d_model=8, n_heads=2, seq_len=8)
    module = build_attention(AttentionConfig(heads="differential"), site).double()
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
    x = torch.randn(1, 5, 8, dtype=torch.float64, requires_grad=True)

    def forward(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return functional_call(module, dict(zip(names, params, strict=True)), (x,))

    assert torch.autograd.gradcheck(forward, (x, *params))

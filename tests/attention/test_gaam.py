"""GAAM: a multi-head Gaussian gate on each head's output, with prefix statistics at causal sites."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from attnlab.attention import HEADS, AttentionConfig, AttentionSite, build_attention
from attnlab.errors import ConfigError
from attnlab.hook_points import capture


def authors_gate(z: torch.Tensor, offsets: torch.Tensor, c: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """GaussianAdaptiveAttention.forward (GaussianBlock.py, HEAD 145d1bc) with norm_axis = time, per head.

    z [B, H, T, d]; offsets, c [H, G]. Returns the mixture (the gate) [B, H, T, d].
    """
    gates = []
    for h in range(z.shape[1]):
        x = z[:, h]  # [B, T, d], statistics along dim 1 (time)
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, keepdim=True) + eps
        mixture = 1
        for i in range(offsets.shape[1]):
            y_norm = (x - (mean + offsets[h, i])) / torch.sqrt(var)
            gaussian = torch.exp(-((y_norm**2) / (2.0 * c[h, i] ** 2))) / torch.sqrt(2 * torch.pi * c[h, i] ** 2)
            mixture = mixture * gaussian
        gates.append(mixture / mixture.sum(dim=1, keepdim=True).clamp(min=eps))
    return torch.stack(gates, dim=1)


def gaam(causal: bool, **heads_args) -> torch.nn.Module:
    site = AttentionSite(d_model=16, n_heads=4, causal=causal)
    module = build_attention(AttentionConfig(heads="gaam", heads_args=heads_args, position="nope"), site).double()
    with torch.no_grad():
        module.heads.mean_offsets.normal_(0.0, 0.5)  # learned offsets away from their zero init
    return module


def parameters_of(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    return module.heads.mean_offsets, F.softplus(module.heads.c_raw)


@pytest.mark.parametrize("residual", [True, False])
def test_non_causal_module_output_is_the_authors_gate_on_the_head_outputs(residual: bool) -> None:
    module = gaam(causal=False, residual=residual)
    with capture(module, ["hook_z"]) as cache:
        out = module(torch.randn(2, 7, 16, dtype=torch.float64))
    z = cache["hook_z"]  # [B, H, T, d], before the gate
    gated = z * authors_gate(z, *parameters_of(module)) + (z if residual else 0)
    expected = module.heads.o_proj(gated.transpose(1, 2).reshape(2, 7, 16))
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)


def test_causal_gate_at_t_is_the_authors_gate_on_the_prefix_read_at_t() -> None:
    module = gaam(causal=True, n_gaussians=3)
    z = torch.randn(2, 4, 7, 4, dtype=torch.float64)
    gate = module.heads.gate(z)
    for t in range(1, 7):  # t = 0: a one-value window, where the authors' unbiased variance is NaN
        expected = authors_gate(z[:, :, : t + 1], *parameters_of(module))[:, :, -1]
        torch.testing.assert_close(gate[:, :, t], expected, atol=1e-12, rtol=1e-10)


def test_widths_start_at_exp_of_a_normal_draw_through_softplus() -> None:
    torch.manual_seed(3)
    module = build_attention(AttentionConfig(heads="gaam"), AttentionSite(d_model=16, n_heads=4))
    torch.manual_seed(3)
    for _ in range(4):  # the q, k, v, o projections draw first
        torch.nn.Linear(16, 16, bias=False)
    torch.testing.assert_close(F.softplus(module.heads.c_raw), torch.randn(4, 2).exp())
    assert torch.equal(module.heads.mean_offsets, torch.zeros(4, 2))


def test_changing_a_later_token_leaves_earlier_logits_unchanged(make_lm) -> None:
    model = make_lm(heads="gaam")
    tokens = torch.randint(0, 31, (2, 8))
    edited = tokens.clone()
    edited[:, 5] = (tokens[:, 5] + 1) % 31
    before, after = model(tokens), model(edited)
    torch.testing.assert_close(after[:, :5], before[:, :5], atol=1e-6, rtol=0)
    assert not torch.allclose(after[:, 5], before[:, 5], atol=1e-3), "the edit should change its own logits"


def test_encoder_gate_uses_later_tokens(make_lm) -> None:
    model = make_lm(mode="encoder", heads="gaam", position="nope", n_layers=1)
    tokens = torch.randint(0, 31, (2, 8))
    edited = tokens.clone()
    edited[:, 7] = (tokens[:, 7] + 1) % 31
    assert not torch.allclose(model(edited)[:, 0], model(tokens)[:, 0], atol=1e-4)


def test_kv_cache_decoding_is_rejected_when_the_cache_is_made(make_lm) -> None:
    assert not HEADS.capabilities("gaam").kv_cache
    model = make_lm(heads="gaam")
    with pytest.raises(ConfigError, match="heads='gaam': does not support KV-cache decoding"):
        model.new_cache()


def test_attention_module_gradients_match_finite_differences() -> None:
    site = AttentionSite(d_model=8, n_heads=2, seq_len=8)
    module = build_attention(AttentionConfig(heads="gaam"), site).double()
    with torch.no_grad():
        module.heads.mean_offsets.normal_(0.0, 0.5)
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
    x = torch.randn(1, 5, 8, dtype=torch.float64, requires_grad=True)

    def forward(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return functional_call(module, dict(zip(names, params, strict=True)), (x,))

    assert torch.autograd.gradcheck(forward, (x, *params))


def test_first_causal_position_has_gate_one_while_the_offsets_are_zero() -> None:
    """A one-value window: σ² = ε, z_0 − μ_0 = 0, so with δ = 0 the gate is N/N = 1."""
    module = build_attention(AttentionConfig(heads="gaam", position="nope"), AttentionSite(d_model=16, n_heads=4))
    gate = module.heads.gate(torch.randn(2, 4, 5, 4))
    torch.testing.assert_close(gate[:, :, 0], torch.ones(2, 4, 4))
    assert math.isfinite(gate.sum().item())

"""GAAM: a multi-head Gaussian gate on each head's output, with prefix statistics at causal sites."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from attnlab.attention import HEADS, AttentionConfig, AttentionSite, build_attention
from attnlab.attention.heads import gaam as gaam_module
from attnlab.attention.heads.gaam import gaussian_gate, gaussian_gate_reference, window_statistics
from attnlab.errors import ConfigError
from attnlab.hook_points import capture
from tolerances import order_bound


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


def draw(shape: tuple[int, ...], groups: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z away from zero mean (the one-pass prefix variance must not cancel), offsets away from their zero init."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(*shape, generator=g, dtype=torch.float64) + 2.0
    heads = shape[1]
    offsets = 0.5 * torch.randn(heads, groups, generator=g, dtype=torch.float64)
    widths = torch.randn(heads, groups, generator=g, dtype=torch.float64).exp()
    return z, offsets, widths


def gate_condition(z: torch.Tensor, offsets: torch.Tensor, widths: torch.Tensor, causal: bool, eps: float) -> float:
    """How much the gate amplifies relative errors in its inputs, as an absolute error on the gate (for the bounds).

    The gate is m_t = exp(−e_tt) / Σ_s exp(−e_st) (times K / max(K·Σ, ε) where the clamp binds), with
    e_st = a (z_s − centre_t)² / (2σ²_t) ≥ 0. A relative error δ in σ² or in a difference moves each e by at most
    e·δ, so log m_t by at most (e_tt + Σ_s p_ts e_ts)·δ with p_t the normalised weights, and m_t by m_t times that.
    The fast path's prefix variance sums (z_s − z_0)² and subtracts n·(μ_t − z_0)², which multiplies its relative
    error by Σ (z_s − z_0)² / Σ (z_s − μ_t)²: a factor on top.
    """
    mean, var = window_statistics(z, causal, eps)
    window = torch.ones(z.shape[2], z.shape[2], dtype=torch.bool)
    window = window.tril() if causal else window
    inv = widths.square().reciprocal()
    a, b = inv.sum(1).view(1, -1, 1, 1), (offsets * inv).sum(1).view(1, -1, 1, 1)
    diff = z[:, :, None] - (mean + b / a)[:, :, :, None]
    e = (a / (2 * var))[:, :, :, None] * diff.square()  # [B, H, T(t), T(s), d]
    p = (-e).masked_fill(~window[None, None, :, :, None], -math.inf).softmax(3)
    own = e.diagonal(dim1=2, dim2=3).movedim(-1, 2)
    gate = gaussian_gate_reference(z, offsets, widths, causal, eps)
    sensitivity = (gate * (own + (p * e.masked_fill(p == 0, 0.0)).sum(3))).max().item()
    n = torch.arange(1, z.shape[2] + 1, dtype=z.dtype)[:, None] if causal else z.shape[2]
    raw = (z - z[:, :, :1]).square()
    raw = raw.cumsum(2) if causal else raw.sum(2, keepdim=True)
    spread = (var - eps) * ((n - 1).clamp(min=1) if causal else max(z.shape[2] - 1, 1))
    cancel = (raw / spread.clamp(min=eps)).max().item()
    return 1.0 + sensitivity * max(cancel, 1.0)


SHAPES = [(1, 1, 1, 1, 1), (2, 3, 2, 1, 2), (2, 3, 7, 3, 3), (1, 2, 33, 5, 2)]  # B, H, T, d, G


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fast_gate_and_its_gradients_match_the_reference_in_float64(causal: bool, shape: tuple[int, ...]) -> None:
    *zshape, groups = shape
    z, offsets, widths = draw(tuple(zshape), groups, seed=sum(shape))
    inputs = [x.clone().requires_grad_(True) for x in (z, offsets, widths)]
    weights = torch.randn(*zshape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got, expected = (f(*inputs, causal, 1e-8) for f in (gaussian_gate, gaussian_gate_reference))
    bound = order_bound(torch.float64, zshape[2], depth=4, condition=gate_condition(z, offsets, widths, causal, 1e-8))
    torch.testing.assert_close(got, expected, atol=bound, rtol=0)
    for g_got, g_expected in zip(
        torch.autograd.grad((got * weights).sum(), inputs),
        torch.autograd.grad((expected * weights).sum(), inputs),
        strict=True,
    ):
        scale = max(g_expected.abs().max().item(), 1.0)  # the backward sums the T(t) × T(s) pairs once more
        torch.testing.assert_close(g_got, g_expected, atol=bound * scale * zshape[2], rtol=0)


def test_fast_gate_passes_gradcheck() -> None:
    z, offsets, widths = draw((1, 2, 5, 2), 2, seed=7)
    inputs = tuple(x.requires_grad_(True) for x in (z, offsets, widths))
    for causal in (True, False):
        assert torch.autograd.gradcheck(lambda *x, causal=causal: gaussian_gate(*x, causal, 1e-8), inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [True, False])
def test_gate_in_low_precision_is_within_float32_rounding_of_the_float64_reference(causal: bool, dtype) -> None:
    """bf16 head outputs are gated in float32 (compute_dtype), so both dtypes get float32's bound; the reference runs
    in float64 on the same, already rounded values."""
    module = gaam(causal=causal, n_gaussians=2, eps=1e-2).to(dtype)  # ε: a moderate exponent at a causal t = 0
    z = draw((2, 4, 19, 4), 2, seed=5)[0].to(dtype)
    got = module.heads.gate(z)
    offsets, widths = (x.double() for x in parameters_of(module))
    expected = gaussian_gate_reference(z.double(), offsets, widths, causal, module.heads.eps)
    condition = gate_condition(z.double(), offsets, widths, causal, module.heads.eps)
    bound = order_bound(torch.float32, z.shape[2], depth=4, condition=condition)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, atol=bound, rtol=0)
    assert bound < 0.01, f"these data make the gate too ill-conditioned for the test to say anything ({bound})"


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("rows", [1, 2, 3])
def test_pair_sum_in_blocks_of_query_rows_matches_the_reference(causal: bool, rows: int, monkeypatch) -> None:
    """Blocks of 1, 2 or 3 query positions over T = 7 (the last block shorter): output and gradients, and gradcheck."""
    z, offsets, widths = draw((2, 3, 7, 2), 2, seed=11 + rows)
    monkeypatch.setattr(gaam_module, "PAIR_BLOCK", rows * z[:, :, :1].numel() * z.shape[2])
    assert [b[:2] for b in gaam_module.pair_blocks(z, causal)][:2] == [(0, rows), (rows, min(2 * rows, 7))]
    inputs = [x.clone().requires_grad_(True) for x in (z, offsets, widths)]
    got, expected = (f(*inputs, causal, 1e-8) for f in (gaussian_gate, gaussian_gate_reference))
    bound = order_bound(torch.float64, 7, depth=4, condition=gate_condition(z, offsets, widths, causal, 1e-8))
    torch.testing.assert_close(got, expected, atol=bound, rtol=0)
    weights = torch.randn(2, 3, 7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for g_got, g_expected in zip(
        torch.autograd.grad((got * weights).sum(), inputs),
        torch.autograd.grad((expected * weights).sum(), inputs),
        strict=True,
    ):
        torch.testing.assert_close(g_got, g_expected, atol=bound * max(g_expected.abs().max().item(), 1.0) * 7, rtol=0)
    assert torch.autograd.gradcheck(lambda *x: gaussian_gate(*x, causal, 1e-8), tuple(inputs))

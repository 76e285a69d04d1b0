"""The fused SDPA path equals the reference for softmax: outputs and every gradient."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import (
    NORMALISERS,
    AttentionConfig,
    AttentionSite,
    LayerKVCache,
    attend_reference,
    build_attention,
)
from attnlab.attention.build import sdpa
from attnlab.hook_points import capture
from tolerances import lm_atol

SOFTMAX = NORMALISERS.entry("softmax").factory()
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
HEADS = {"mha": {}, "gqa": {"n_kv_heads": 2}}


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, name: str = "") -> None:
    """float32: elementwise to 1e-5. bfloat16: RMS error within 2% of the RMS of the expected tensor.

    In bfloat16 (8 bits of mantissa) a parameter gradient is a sum of many rounded products, so single
    elements that nearly cancel can be off by more than 2% of themselves while the tensor is right.
    """
    if actual.dtype == torch.float32:
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")
        return
    a, e = actual.double(), expected.double()
    ratio = ((a - e).pow(2).mean().sqrt() / e.pow(2).mean().sqrt()).item()
    assert ratio <= TOLERANCE[actual.dtype], f"{name}: relative RMS error {ratio:.4f}"


def twin_modules(site: AttentionSite, dtype: torch.dtype, **cfg) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same weights behind backend="sdpa" and backend="reference"."""
    fused = build_attention(AttentionConfig(backend="sdpa", **cfg), site).to(dtype)
    reference = build_attention(AttentionConfig(backend="reference", **cfg), site).to(dtype)
    reference.load_state_dict(fused.state_dict())
    assert fused.choose_path(t_q=8).path == "sdpa" and reference.choose_path(t_q=8).path == "reference"
    return fused, reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize(("d_model", "n_heads", "t"), [(16, 4, 8), (24, 4, 7)], ids=["d4-T8", "d6-T7"])
def test_sdpa_module_matches_reference_outputs_and_gradients(
    d_model: int, n_heads: int, t: int, causal: bool, heads: str, dtype: torch.dtype
) -> None:
    site = AttentionSite(d_model=d_model, n_heads=n_heads, causal=causal)
    fused, reference = twin_modules(site, dtype, position="rope", heads=heads, heads_args=HEADS[heads])
    x = torch.randn(2, t, d_model, dtype=dtype)
    out_fused, out_reference = fused(x), reference(x)
    assert_matches(out_fused, out_reference, "output")

    grad = torch.randn_like(out_fused)
    out_fused.backward(grad)
    out_reference.backward(grad)
    for (name, p_fused), p_reference in zip(fused.named_parameters(), reference.parameters(), strict=True):
        assert_matches(p_fused.grad, p_reference.grad, name)


@pytest.mark.parametrize("heads", HEADS)
def test_sdpa_module_matches_reference_when_decoding_with_a_cache(heads: str) -> None:
    """Tq < Tk: the cache holds 5 positions and 3 new queries arrive (bottom-right causal alignment)."""
    site = AttentionSite(d_model=24, n_heads=4)
    fused, reference = twin_modules(site, torch.float32, position="rope", heads=heads, heads_args=HEADS[heads])
    x = torch.randn(2, 8, 24)
    outputs = []
    for module in (fused, reference):
        cache = LayerKVCache()
        module(x[:, :5], cache=cache)
        outputs.append(module(x[:, 5:], cache=cache))
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("t_q", "t_k"), [(7, 7), (3, 7), (1, 7)])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_sdpa_function_matches_attend_reference_with_gqa(causal: bool, t_q: int, t_k: int, dtype: torch.dtype) -> None:
    q = torch.randn(2, 4, t_q, 6, dtype=dtype)
    k, v = torch.randn(2, 2, t_k, 6, dtype=dtype), torch.randn(2, 2, t_k, 6, dtype=dtype)
    expected = attend_reference(q, k, v, normaliser=SOFTMAX, causal=causal).out
    assert_matches(sdpa(q, k, v, causal=causal, scale=None), expected)


def test_auto_backend_uses_sdpa_for_softmax_with_rope() -> None:
    module = build_attention(AttentionConfig(position="rope"), AttentionSite(d_model=16, n_heads=4))
    assert module.cfg.backend == "auto" and module.choose_path(t_q=8).path == "sdpa"


def test_capturing_the_pattern_switches_the_layer_to_the_reference(make_lm) -> None:
    model = make_lm(normaliser="softmax", position="rope")
    tokens = torch.randint(0, 31, (2, 9))
    assert model.blocks[0].attn.choose_path(t_q=9).path == "sdpa"
    plain = model(tokens)
    with capture(model, ["blocks.0.attn.hook_pattern"]) as cache:
        assert model.blocks[0].attn.choose_path(t_q=9).path == "reference"
        captured = model(tokens)
    assert cache["blocks.0.attn.hook_pattern"].shape == (2, 4, 9, 9)
    torch.testing.assert_close(captured, plain, atol=lm_atol(plain), rtol=0)  # two orders (tests/tolerances.py)


@pytest.mark.parametrize(("t", "chunked"), [(24, True), (16, True), (15, False), (8, False)])
def test_auto_runs_a_short_window_on_the_chunked_path(t: int, chunked: bool, monkeypatch) -> None:
    """Backend auto on CPU: a window of w keys over at least 4·w keys goes to the chunked path (no [T, T] mask),
    shorter sequences to SDPA; both equal the reference, outputs and gradients."""
    from attnlab.attention.normalisers.tiled import TiledNormaliser

    site = AttentionSite(d_model=16, n_heads=4, causal=True)
    auto = build_attention(AttentionConfig(backend="auto", window=4), site)
    reference = build_attention(AttentionConfig(backend="reference", window=4), site)
    reference.load_state_dict(auto.state_dict())
    calls: list[int] = []
    original = TiledNormaliser.attend_chunked

    def spy(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TiledNormaliser, "attend_chunked", spy)
    x = torch.randn(2, t, 16, requires_grad=True)
    out = auto(x)
    assert bool(calls) is chunked
    ref = reference(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(out)
    (g_auto,) = torch.autograd.grad(out, x, grad)
    (g_ref,) = torch.autograd.grad(ref, x, grad)
    torch.testing.assert_close(g_auto, g_ref, atol=1e-5, rtol=1e-5)

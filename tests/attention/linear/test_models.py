"""Kernel attention inside the model: causal, decodes with the KV cache, same logits on every backend."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import AttentionConfig, AttentionSite, build_attention
from attnlab.errors import ConfigError
from attnlab.hook_points import capture
from tolerances import RETNET_CONDITION, lm_atol, order_bound, unit_roundoff

FAST = {  # normaliser → its fast backend; small chunks and Based's window below T, so both are exercised
    "linear_elu": ("chunked", {"chunk_size": 3}),
    "hedgehog": ("chunked", {"chunk_size": 3}),
    "based": ("chunked", {"chunk_size": 3, "window": 3}),
    "lightning": ("chunked", {"chunk_size": 3}),
    "retnet": ("chunked", {"chunk_size": 3}),
    "kernel_rpe_fft": ("fft", {}),
}
NAMES = list(FAST)


def decode(model, tokens: torch.Tensor, first: int = 4) -> torch.Tensor:
    """A prompt of ``first`` tokens, then one token at a time through the KV cache."""
    cache = model.new_cache()
    pieces = [model(tokens[:, :first], cache)]
    pieces += [model(tokens[:, t : t + 1], cache) for t in range(first, tokens.shape[1])]
    return torch.cat(pieces, dim=1)


@pytest.mark.parametrize("name", NAMES)
def test_changing_a_later_token_leaves_earlier_logits_unchanged(make_lm, name: str) -> None:
    model = make_lm(normaliser=name, normaliser_args=FAST[name][1])
    tokens = torch.randint(0, 31, (2, 9))
    edited = tokens.clone()
    edited[:, 6] = (tokens[:, 6] + 1) % 31
    before, after = model(tokens), model(edited)
    torch.testing.assert_close(after[:, :6], before[:, :6], atol=1e-6, rtol=0)
    assert not torch.allclose(after[:, 6], before[:, 6], atol=1e-3), "the edit should change its own logits"


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_cached_decoding_equals_the_full_pass(make_lm, name: str) -> None:
    # float64: the check is of the cache, which is exact, not of float32 rounding; the two evaluations differ in
    # summation order only: lm_atol (tests/tolerances.py), RetNet's signed rows amplifying it (RETNET_CONDITION).
    model = make_lm(normaliser=name, normaliser_args=FAST[name][1]).double()
    tokens = torch.randint(0, 31, (2, 11))
    full = model(tokens)
    condition = RETNET_CONDITION if name == "retnet" else 1.0
    torch.testing.assert_close(decode(model, tokens), full, atol=lm_atol(full, condition=condition), rtol=0)


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_the_fast_backend_gives_the_reference_logits(make_lm, name: str) -> None:
    backend, args = FAST[name]
    # float64: the check is that the backends compute the same function, not of float32 rounding; they differ in
    # summation order only: lm_atol (tests/tolerances.py), RetNet's signed rows amplifying it (RETNET_CONDITION).
    reference = make_lm(normaliser=name, normaliser_args=args, backend="reference").double()
    fast = make_lm(normaliser=name, normaliser_args=args, backend=backend).double()
    fast.load_state_dict(reference.state_dict())
    tokens = torch.randint(0, 31, (2, 11))
    full = reference(tokens)
    condition = RETNET_CONDITION if name == "retnet" else 1.0
    torch.testing.assert_close(fast(tokens), full, atol=lm_atol(full, condition=condition), rtol=0)


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_the_fast_backend_decodes_with_the_cache_as_in_the_full_pass(make_lm, name: str) -> None:
    backend, args = FAST[name]
    # float64: the check is of the cache, which is exact, not of float32 rounding; the two evaluations differ in
    # summation order only: lm_atol (tests/tolerances.py), RetNet's signed rows amplifying it (RETNET_CONDITION).
    model = make_lm(normaliser=name, normaliser_args=args, backend=backend).double()
    tokens = torch.randint(0, 31, (2, 11))
    full = model(tokens)
    condition = RETNET_CONDITION if name == "retnet" else 1.0
    torch.testing.assert_close(decode(model, tokens), full, atol=lm_atol(full, condition=condition), rtol=0)


@torch.no_grad()
def test_the_recurrent_backend_gives_the_reference_logits(make_lm) -> None:
    # float64: the check is that the backends compute the same function, not of float32 rounding; they differ in
    # summation order only: lm_atol (tests/tolerances.py), RetNet's signed rows amplifying it (RETNET_CONDITION).
    reference = make_lm(normaliser="retnet", backend="reference").double()
    recurrent = make_lm(normaliser="retnet", backend="recurrent").double()
    recurrent.load_state_dict(reference.state_dict())
    tokens = torch.randint(0, 31, (2, 9))
    full = reference(tokens)
    torch.testing.assert_close(recurrent(tokens), full, atol=lm_atol(full, condition=RETNET_CONDITION), rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_an_encoder_reads_later_tokens(make_lm, name: str) -> None:
    model = make_lm(mode="encoder", normaliser=name, normaliser_args=FAST[name][1])
    tokens = torch.randint(0, 31, (2, 8))
    edited = tokens.clone()
    edited[:, 7] = (tokens[:, 7] + 1) % 31
    assert not torch.allclose(model(edited)[:, 0], model(tokens)[:, 0], atol=1e-4)


@torch.no_grad()
def test_capturing_the_pattern_of_a_chunked_layer_returns_the_linear_weights(make_lm) -> None:
    model = make_lm(normaliser="linear_elu", normaliser_args={"chunk_size": 3}, backend="chunked")
    tokens = torch.randint(0, 31, (2, 7))
    plain = model(tokens)
    with capture(model, lambda name: name.endswith("hook_pattern")) as cache:
        logits = model(tokens)
    # The captured pass runs the reference, the plain one the chunked scan: the same sums in other orders.
    torch.testing.assert_close(logits, plain, atol=lm_atol(plain), rtol=0)
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert pattern.shape == (2, 4, 7, 7)
    # float32 rows of ≤ 7 positive weights a / (Σ a + 1e-12): two sums (order_bound's 2·γ_7) and a division (u).
    atol = order_bound(torch.float32, n_terms=7) + unit_roundoff(torch.float32)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 4, 7), atol=atol, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_a_score_mod_position_is_rejected_when_the_config_is_checked(make_lm, name: str) -> None:
    with pytest.raises(ConfigError, match="score_mod"):
        make_lm(normaliser=name, position="alibi")


@pytest.mark.parametrize("name", ["based", "lightning", "retnet", "kernel_rpe_fft"])
def test_relative_mechanisms_reject_cross_attention(name: str) -> None:
    with pytest.raises(ConfigError, match="cross-attention"):
        AttentionConfig(normaliser=name, position="nope").check_site(
            AttentionSite(d_model=16, n_heads=2, causal=False, cross=True)
        )


@pytest.mark.parametrize("name", ["linear_elu", "hedgehog"])
@torch.no_grad()
def test_cross_attention_runs_on_the_chunked_backend_as_on_the_reference(name: str) -> None:
    site = AttentionSite(d_model=16, n_heads=2, causal=False, cross=True)
    reference = build_attention(AttentionConfig(normaliser=name, position="nope", backend="reference"), site)
    chunked = build_attention(AttentionConfig(normaliser=name, position="nope", backend="chunked"), site)
    chunked.load_state_dict(reference.state_dict())
    x, context = torch.randn(2, 5, 16), torch.randn(2, 9, 16)
    torch.testing.assert_close(chunked(x, context), reference(x, context), atol=1e-5, rtol=1e-5)


def test_the_fft_backend_is_only_offered_to_kernel_rpe_fft() -> None:
    with pytest.raises(ConfigError, match="backend"):
        AttentionConfig(normaliser="linear_elu", backend="fft")

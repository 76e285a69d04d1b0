"""Every new heads entry, built from its registry example: causal, exact cached decoding, exact gradients."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from attnlab.attention import HEADS, NORMALISERS, AttentionConfig, AttentionSite, build_attention
from attnlab.errors import ConfigError
from tolerances import lm_atol

ENTRIES = ["moh", "lpa", "mla", "clla", "rcmha", "sinks"]
VARIANTS = {  # the registry examples, plus the variants whose code paths the examples do not reach
    **{name: (name, HEADS.entry(name).example) for name in ENTRIES},
    "mla-no-latents": ("mla", {"kv_rank": 16, "rope_dim": 0, "latent_norm": False}),
    "clla-int4": ("clla", {"kv_rank": 16, "share_every": 2, "quant_bits": 4}),
    "clla-int8-share1": ("clla", {"kv_rank": 16, "share_every": 1, "quant_bits": 8}),
    "sinks-logit-gqa": ("sinks", {"n_sinks": 3, "kind": "logit", "n_kv_heads": 2}),
}
CACHED = [v for v, (name, _) in VARIANTS.items() if HEADS.capabilities(name).kv_cache]
# d_model 8, 2 heads (d_head 4): small enough for gradcheck over every parameter.
GRAD_SITE = AttentionSite(d_model=8, n_heads=2, seq_len=5)
GRAD_ARGS = {
    "moh": {"n_shared": 1, "top_k": 1},
    "lpa": {"rank": 3},
    "mla": {"kv_rank": 6, "q_rank": 5},
    "clla": {"kv_rank": 6, "share_every": 2},  # quantisation is a straight-through estimate, not a gradient
    "rcmha": {"max_distance": 4},
    "sinks": {"n_sinks": 2},
}


def edit_token(tokens: torch.Tensor, position: int) -> torch.Tensor:
    edited = tokens.clone()
    edited[:, position] = (tokens[:, position] + 1) % 31
    return edited


@pytest.mark.parametrize("variant", VARIANTS)
def test_changing_a_later_token_leaves_earlier_logits_unchanged(make_lm, variant: str) -> None:
    name, args = VARIANTS[variant]
    model = make_lm(heads=name, heads_args=args)
    tokens = torch.randint(0, 31, (2, 8))
    before, after = model(tokens), model(edit_token(tokens, 5))
    torch.testing.assert_close(after[:, :5], before[:, :5], atol=1e-6, rtol=0)
    assert not torch.allclose(after[:, 5], before[:, 5], atol=1e-3), "the edit should change its own logits"


@pytest.mark.parametrize("chunk", [1, 3], ids=["one-at-a-time", "chunks-of-3"])
@pytest.mark.parametrize("variant", CACHED)
@torch.no_grad()
def test_cached_decoding_matches_the_full_forward(make_lm, variant: str, chunk: int) -> None:
    name, args = VARIANTS[variant]
    # float64: the check is of the cache, which is exact, not of float32 rounding; the two evaluations differ in
    # summation order only: lm_atol (tests/tolerances.py).
    model = make_lm(heads=name, heads_args=args).double()
    tokens = torch.randint(0, 31, (2, 8))
    cache = model.new_cache()
    decoded = torch.cat([model(tokens[:, i : i + chunk], cache) for i in range(0, 8, chunk)], dim=1)
    torch.testing.assert_close(decoded, model(tokens), atol=lm_atol(model(tokens)), rtol=0)


def test_rcmha_rejects_kv_cache_decoding_when_the_cache_is_made(make_lm) -> None:
    model = make_lm(heads="rcmha", heads_args=HEADS.entry("rcmha").example)
    with pytest.raises(ConfigError, match="heads='rcmha': does not support KV-cache decoding"):
        model.new_cache()


@pytest.mark.parametrize("name", ENTRIES)
def test_attention_module_gradients_match_finite_differences(name: str) -> None:
    """Gradients w.r.t. the input and every parameter of a whole Attention module, in float64."""
    module = build_attention(AttentionConfig(heads=name, heads_args=GRAD_ARGS[name]), GRAD_SITE).double()
    with torch.no_grad():  # zero-initialised tables (RCMHA's R, b, u; sink values) would hide their gradients
        for p in module.parameters():
            p.normal_(0.0, 0.5)
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
    x = torch.randn(1, 5, 8, dtype=torch.float64, requires_grad=True)

    def forward(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return functional_call(module, dict(zip(names, params, strict=True)), (x,))

    assert torch.autograd.gradcheck(forward, (x, *params))


KERNEL_NORMALISERS = [n for n in NORMALISERS.names() if hasattr(NORMALISERS.get(n), "attend")]


@pytest.mark.parametrize("normaliser", KERNEL_NORMALISERS[:1])
@pytest.mark.parametrize("name", ["rcmha", "sinks"])
def test_heads_that_extend_the_score_matrix_refuse_kernel_normalisers(make_lm, name: str, normaliser: str) -> None:
    with pytest.raises(ConfigError, match="kernel normaliser"):
        make_lm(heads=name, heads_args=HEADS.entry(name).example, normaliser=normaliser)

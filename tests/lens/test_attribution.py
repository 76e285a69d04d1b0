"""Direct logit attribution and the logit lens: exact identities on tiny float64 models.

Tolerance: float64 (ε = 2.2e-16); each value comes from at most ~10^4 rounded operations on numbers of
magnitude ≤ 100, so rounding stays below 10^4 · 100 · ε ≈ 2e-10; ATOL = 1e-9, while the terms checked are
of order 0.1–10.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from attnlab.attention import AttentionConfig
from attnlab.errors import ConfigError
from attnlab.lens.attribution import (
    attribution_names,
    direct_logit_attribution,
    logit_lens,
    logit_lens_diff,
)
from attnlab.lens.capture import run_with_cache
from attnlab.lens.patching import logit_diff
from attnlab.lens.pretrained.smollm2 import LlamaLM, LlamaSpec
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM
from conftest import liven

ATOL = 1e-9
TOKENS = torch.randint(0, 31, (3, 9), generator=torch.Generator().manual_seed(5))
CORRECT, WRONG = torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8])

MODELS = {
    "layernorm-learned-mlp": {"norm": "layernorm", "mlp": True, "position": "learned"},
    "rmsnorm-rope-no-mlp": {"norm": "rmsnorm", "mlp": False},
    "layernorm-biased-gqa": {"norm": "layernorm", "heads": "gqa", "heads_args": {"n_kv_heads": 2, "bias": True}},
}


def lm(norm: str = "layernorm", mlp: bool = True, **attention: Any) -> TransformerLM:
    cfg = ModelConfig(
        vocab_size=31,
        d_model=32,
        n_heads=4,
        n_layers=3,
        max_seq_len=16,
        norm=norm,
        mlp=mlp,
        attention=AttentionConfig(**attention),
    )
    return liven(TransformerLM(cfg)).eval().double()


def run(model: torch.nn.Module) -> tuple[Tensor, dict[str, Tensor]]:
    return run_with_cache(model, TOKENS, attribution_names(model))


@pytest.mark.parametrize("kind", list(MODELS))
def test_attributions_sum_to_the_logit_difference(kind: str) -> None:
    model = lm(**MODELS[kind])
    logits, cache = run(model)
    attribution = direct_logit_attribution(model, cache, CORRECT, WRONG)
    torch.testing.assert_close(attribution.total(), logit_diff(logits, CORRECT, WRONG), rtol=0, atol=ATOL)
    torch.testing.assert_close(attribution.rest, torch.zeros_like(attribution.rest), rtol=0, atol=ATOL)
    assert attribution.heads.shape == (3, 3, 4) and attribution.mlps.shape == (3, 3)
    assert attribution.heads.abs().min() > 1e-6  # every head contributes: none is silently dropped
    if model.cfg.norm == "layernorm":
        assert attribution.bias.abs().min() > 1e-3  # the LayerNorm bias term is real and accounted for
    if MODELS[kind].get("position") == "learned":
        assert attribution.pos_embed.abs().min() > 1e-6


def test_attributions_sum_to_the_logit_difference_in_a_llama_architecture() -> None:
    # SmolLM2's architecture (RMSNorm, GQA with interleaved RoPE, SwiGLU, tied unembedding, no position
    # embedding) with random weights: no GGUF file needed
    spec = LlamaSpec(
        n_layers=2,
        d_model=32,
        d_mlp=48,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=31,
        rope_base=1e4,
        rms_eps=1e-5,
        context_length=64,
    )
    model = liven(LlamaLM(spec)).eval().double()
    assert "hook_pos_embed" not in attribution_names(model)
    logits, cache = run(model)
    attribution = direct_logit_attribution(model, cache, CORRECT, WRONG)
    torch.testing.assert_close(attribution.total(), logit_diff(logits, CORRECT, WRONG), rtol=0, atol=ATOL)
    torch.testing.assert_close(attribution.rest, torch.zeros_like(attribution.rest), rtol=0, atol=ATOL)
    assert attribution.mlps.abs().min() > 1e-6
    torch.testing.assert_close(logit_lens(model, cache)[-1], logits[:, -1], rtol=0, atol=ATOL)


def test_heads_and_bias_of_a_layer_add_up_to_its_attention_output() -> None:
    # the per-head split is checked against hook_attn_out through an independent formula for frozen LayerNorm
    model = lm(**MODELS["layernorm-biased-gqa"])
    _, cache = run_with_cache(model, TOKENS, [*attribution_names(model), "blocks.1.hook_attn_out"])
    attribution = direct_logit_attribution(model, cache, CORRECT, WRONG)
    x = cache["blocks.2.hook_resid_post"][:, -1]
    sigma = (x.var(-1, unbiased=False) + model.ln_f.eps).sqrt()  # [B]
    r = cache["blocks.1.hook_attn_out"][:, -1]
    u = model.unembed.weight[CORRECT] - model.unembed.weight[WRONG]
    expected = (((r - r.mean(-1, keepdim=True)) * model.ln_f.weight * u).sum(-1)) / sigma
    torch.testing.assert_close(
        attribution.heads[:, 1].sum(-1) + attribution.attn_bias[:, 1], expected, rtol=0, atol=ATOL
    )


def test_one_position_per_prompt_matches_each_prompt_alone() -> None:
    model = lm()
    _, cache = run(model)
    position = torch.tensor([8, 3, 5])
    together = direct_logit_attribution(model, cache, CORRECT, WRONG, position)
    for b in range(3):
        alone = direct_logit_attribution(model, cache, CORRECT, WRONG, int(position[b]))
        torch.testing.assert_close(together.heads[b], alone.heads[b], rtol=0, atol=ATOL)
        torch.testing.assert_close(together.total()[b], alone.total()[b], rtol=0, atol=ATOL)


def test_without_a_wrong_token_the_attributions_sum_to_the_correct_logit() -> None:
    model = lm()
    logits, cache = run(model)
    attribution = direct_logit_attribution(model, cache, CORRECT)
    torch.testing.assert_close(attribution.total(), logits[torch.arange(3), -1, CORRECT], rtol=0, atol=ATOL)
    torch.testing.assert_close(attribution.mean().total(), attribution.total().mean(), rtol=0, atol=ATOL)


@pytest.mark.parametrize("kind", list(MODELS))
def test_the_logit_lens_ends_at_the_logits_and_its_frozen_form_accumulates_the_attributions(kind: str) -> None:
    model = lm(**MODELS[kind])
    logits, cache = run(model)
    lens = logit_lens(model, cache)
    assert lens.shape == (4, 3, 31)
    torch.testing.assert_close(lens[-1], logits[:, -1], rtol=0, atol=ATOL)
    diffs = logit_lens_diff(model, cache, CORRECT, WRONG)
    torch.testing.assert_close(diffs, _diff(lens), rtol=0, atol=ATOL)
    frozen = logit_lens_diff(model, cache, CORRECT, WRONG, frozen=True)
    a = direct_logit_attribution(model, cache, CORRECT, WRONG)
    per_layer = a.heads.sum(-1) + a.attn_bias + a.mlps  # [B, L]
    start = a.embed + a.pos_embed + a.bias
    expected = torch.stack([start + per_layer[:, :layer].sum(-1) for layer in range(4)])
    torch.testing.assert_close(frozen, expected, rtol=0, atol=ATOL)
    assert (frozen[:-1] - diffs[:-1]).abs().max() > 1e-3  # recomputing the norm per layer is a different reading


def _diff(lens: Tensor) -> Tensor:
    """correct − wrong logit of each prompt, from full lens logits [L + 1, B, V]."""
    rows = torch.arange(3)
    return lens[:, rows, CORRECT] - lens[:, rows, WRONG]


def test_bad_inputs_name_the_field() -> None:
    model = lm()
    _, cache = run(model)
    with pytest.raises(ConfigError, match="correct="):
        direct_logit_attribution(model, cache, torch.tensor([1, 2]), WRONG)
    with pytest.raises(KeyError, match="hook_resid_post"):
        direct_logit_attribution(model, {}, CORRECT, WRONG)
    gated = lm(heads="gated")
    _, gated_cache = run(gated)
    with pytest.raises(ConfigError, match="o_proj"):
        direct_logit_attribution(gated, gated_cache, CORRECT, WRONG)

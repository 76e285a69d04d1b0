"""run_with_cache returns the model's own logits and every layer's attention pattern."""

from __future__ import annotations

import torch

from attnlab.lens.capture import patterns, run_with_cache
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM


def tiny_lm() -> TransformerLM:
    return TransformerLM(ModelConfig(vocab_size=31, d_model=32, n_heads=4, n_layers=2)).eval()


def test_run_with_cache_logits_equal_a_plain_forward() -> None:
    model, tokens = tiny_lm(), torch.randint(0, 31, (2, 7))
    logits, _ = run_with_cache(model, tokens)
    torch.testing.assert_close(logits, model(tokens))


def test_patterns_has_a_b_h_t_t_pattern_for_every_layer() -> None:
    model, tokens = tiny_lm(), torch.randint(0, 31, (2, 7))
    _, cache = run_with_cache(model, tokens, lambda name: name.endswith("hook_pattern"))
    assert {layer: tuple(p.shape) for layer, p in patterns(cache).items()} == {0: (2, 4, 7, 7), 1: (2, 4, 7, 7)}


def test_captured_softmax_patterns_are_causal_rows_summing_to_one() -> None:
    _, cache = run_with_cache(tiny_lm(), torch.randint(0, 31, (2, 7)), ["blocks.0.attn.hook_pattern"])
    P = patterns(cache)[0]
    torch.testing.assert_close(P.sum(-1), torch.ones(2, 4, 7))
    assert (P.triu(1) == 0).all()

"""A hook that replaces ``hook_pattern`` changes the layer's output (z = pattern @ v), or is refused."""

from __future__ import annotations

import pytest
import torch

from attnlab.hook_points import capture, hooks
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM


def _model(**attention: object) -> TransformerLM:
    cfg = ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=4, attention={"position": "rope", **attention})
    return TransformerLM(cfg).eval()


@pytest.mark.parametrize("heads", [{"heads": "mha"}, {"heads": "gqa", "heads_args": {"n_kv_heads": 2}}])
def test_a_replaced_pattern_is_what_multiplies_v(heads: dict) -> None:
    model = _model(**heads)
    tokens = torch.randint(0, 32, (2, 9))
    uniform_causal = torch.tril(torch.ones(9, 9))
    uniform_causal = uniform_causal / uniform_causal.sum(-1, keepdim=True)
    with (
        capture(model, ["blocks.0.attn.hook_v"]) as cache,
        hooks(model, {"blocks.0.attn.hook_pattern": lambda p: uniform_causal.expand_as(p).clone()}),
        capture(model, ["blocks.0.attn.hook_z"]) as zs,
    ):
        model(tokens)
    v = cache["blocks.0.attn.hook_v"]
    v = v.repeat_interleave(4 // v.shape[1], dim=1)
    torch.testing.assert_close(zs["blocks.0.attn.hook_z"], uniform_causal @ v)


def test_an_identity_hook_changes_nothing() -> None:
    model = _model()
    tokens = torch.randint(0, 32, (1, 7))
    plain = model(tokens)
    with hooks(model, {"blocks.1.attn.hook_pattern": lambda p: p}):
        torch.testing.assert_close(model(tokens), plain)


def test_a_mechanism_whose_output_is_not_pattern_times_v_refuses_the_edit() -> None:
    model = _model(heads="differential")
    with hooks(model, {"blocks.0.attn.hook_pattern": lambda p: p * 0.5}), pytest.raises(ValueError, match="hook_z"):
        model(torch.randint(0, 32, (1, 6)))

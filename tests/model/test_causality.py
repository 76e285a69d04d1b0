"""A decoder never looks ahead; an encoder does."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import NORMALISERS

POSITIONS = ["rope", "alibi", "nope", "learned", "sinusoidal"]
HEADS = {
    "mha": ("mha", {}),
    "gqa": ("gqa", {"n_kv_heads": 2}),
    "mqa": ("mqa", {}),
    "gated": ("gated", {}),
    "gated-gqa": ("gated", {"n_kv_heads": 2}),
}


def edit_token(tokens: torch.Tensor, position: int) -> torch.Tensor:
    edited = tokens.clone()
    edited[:, position] = (tokens[:, position] + 1) % 31
    return edited


@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("normaliser", NORMALISERS.names())
def test_changing_a_later_token_leaves_earlier_logits_unchanged(
    make_supported_lm, normaliser: str, position: str, heads: str
) -> None:
    kind, args = HEADS[heads]
    model = make_supported_lm(normaliser=normaliser, position=position, heads=kind, heads_args=args)
    tokens = torch.randint(0, 31, (2, 8))
    before, after = model(tokens), model(edit_token(tokens, 5))
    torch.testing.assert_close(after[:, :5], before[:, :5], atol=1e-6, rtol=0)
    assert not torch.allclose(after[:, 5], before[:, 5], atol=1e-3), "the edit should change its own logits"


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("normaliser", NORMALISERS.names())
def test_encoder_earlier_outputs_see_later_tokens(make_supported_lm, normaliser: str, position: str) -> None:
    model = make_supported_lm(mode="encoder", normaliser=normaliser, position=position)
    tokens = torch.randint(0, 31, (2, 8))
    before, after = model(tokens), model(edit_token(tokens, 7))
    assert not torch.allclose(after[:, 0], before[:, 0], atol=1e-4)


def test_an_encoder_has_no_kv_cache(make_supported_lm) -> None:
    with pytest.raises(ValueError, match="encoder"):
        make_supported_lm(mode="encoder").new_cache()

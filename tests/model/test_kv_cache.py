"""Incremental decoding with the KV cache gives the logits of one full forward pass."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import NORMALISERS

POSITIONS = ["rope", "alibi", "nope", "learned", "sinusoidal"]
HEADS = {
    "mha": ("mha", {}),
    "gqa": ("gqa", {"n_kv_heads": 2}),
    "gated": ("gated", {}),
    "gated-gqa": ("gated", {"n_kv_heads": 2}),
}


def decode_in_chunks(model, tokens: torch.Tensor, size: int) -> torch.Tensor:
    cache = model.new_cache()
    chunks = [model(tokens[:, i : i + size], cache) for i in range(0, tokens.shape[1], size)]
    assert cache.length == tokens.shape[1]
    return torch.cat(chunks, dim=1)


@pytest.mark.parametrize("chunk", [1, 3], ids=["one-at-a-time", "chunks-of-3"])
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("normaliser", NORMALISERS.names())
@torch.no_grad()
def test_cached_decoding_matches_the_full_forward(
    make_supported_lm, normaliser: str, position: str, heads: str, chunk: int
) -> None:
    kind, args = HEADS[heads]
    # float64: the claim is exact equality, and float32 rounding is amplified by sharp normalisers (lssar's p=15)
    model = make_supported_lm(normaliser=normaliser, position=position, heads=kind, heads_args=args).double()
    tokens = torch.randint(0, 31, (2, 8))
    torch.testing.assert_close(decode_in_chunks(model, tokens, chunk), model(tokens), atol=1e-10, rtol=1e-10)


def greedy_without_cache(model, tokens: torch.Tensor, n_new: int) -> torch.Tensor:
    for _ in range(n_new):
        nxt = model(tokens)[:, -1].argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, nxt], dim=1)
    return tokens


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("normaliser", NORMALISERS.names())
@torch.no_grad()
def test_generate_equals_greedy_decoding_without_the_cache(make_supported_lm, normaliser: str, position: str) -> None:
    model = make_supported_lm(normaliser=normaliser, position=position)
    prompt = torch.randint(0, 31, (2, 4))
    generated = model.generate(prompt, n_new=8)
    assert generated.shape == (2, 12)
    assert torch.equal(generated, greedy_without_cache(model, prompt, 8))

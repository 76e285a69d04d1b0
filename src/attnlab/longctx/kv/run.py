"""Feeding a model through a ``PolicyKVCache``: a prompt compressed once, then decoding in chunks.

``chunk`` tokens go through the model per call against the cache, then the cache holds its budget again (for the
policies that evict while decoding). ``chunk=1`` is exact token-by-token decoding; with ``chunk = c`` a query
sees up to ``c − 1`` more tokens than the budget (the earlier tokens of its own chunk are not yet evicted).
SmolLM2-135M costs ~0.06 s a token on 2 cores one token at a time; chunks of 16 make long evaluations affordable.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.longctx.kv.cache import PolicyKVCache


@torch.no_grad()
def prefill(model: nn.Module, tokens: Tensor, cache: PolicyKVCache) -> Tensor:
    """Feed the prompt ``tokens`` [B, T] in one call, then ``cache.compress()``; returns the last logits [B, V].

    A model with ``final_hidden`` and ``unembed`` (SmolLM2's ``LlamaLM``) unembeds only the last position, so a
    long prompt never holds [B, T, V] logits.
    """
    if tokens.dim() != 2 or tokens.shape[1] < 1:
        raise ConfigError("tokens", tuple(tokens.shape), "must be [batch, time] with at least 1 token")
    if hasattr(model, "final_hidden") and hasattr(model, "unembed"):
        logits = model.unembed(model.final_hidden(tokens, cache)[:, -1])
    else:
        logits = model(tokens, cache)[:, -1]
    cache.compress()
    return logits.float()


@torch.no_grad()
def decode(model: nn.Module, tokens: Tensor, cache: PolicyKVCache, chunk: int = 1) -> Iterator[Tensor]:
    """Feed ``tokens`` [B, N] ``chunk`` at a time, ``cache.step()`` after each call; yields each call's logits."""
    if chunk < 1:
        raise ConfigError("chunk", chunk, "must be at least 1")
    for start in range(0, tokens.shape[1], chunk):
        logits = model(tokens[:, start : start + chunk], cache).float()
        cache.step()
        yield logits

"""Shared set-up: offline, seeded, single-threaded, and a factory of tiny lively models."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from collections.abc import Callable
from typing import Any

import pytest
import torch

from attnlab.attention import AttentionConfig
from attnlab.model.config import ModelConfig
from attnlab.model.transformer import TransformerLM

# Tiny tensors gain nothing from intra-op threads, and on a busy machine every parallel op waits for a
# descheduled worker thread (milliseconds per softmax).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def liven(model: torch.nn.Module, std: float = 0.3) -> torch.nn.Module:
    """Re-draw every parameter so attention is far from uniform.

    The GPT-2 initialisation (std 0.02) makes every score ≈ 0, so weights are near uniform and a wrong
    position or a stale cache entry would change the logits by less than any tolerance we could set.
    """
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std if p.dim() > 1 else 0.1)
    return model


@pytest.fixture
def make_lm() -> Callable[..., TransformerLM]:
    """``make_lm(normaliser="cog", position="alibi", ...)``: a tiny, lively model in eval mode.

    Keyword arguments go to ``AttentionConfig``, except ``n_layers`` and ``mode`` (``ModelConfig``).
    """

    def make(n_layers: int = 2, mode: str = "decoder", **attention: Any) -> TransformerLM:
        cfg = ModelConfig(
            vocab_size=31,
            d_model=32,
            n_heads=4,
            n_layers=n_layers,
            mode=mode,
            max_seq_len=16,
            attention=AttentionConfig(**attention),
        )
        return liven(TransformerLM(cfg)).eval()

    return make

"""Timing one attention layer for the claims about cost (a leading underscore: not a paper module)."""

from __future__ import annotations

import statistics
import time

import torch

from attnlab.attention import build_attention
from attnlab.attention.config import AttentionConfig, AttentionSite


def layer_seconds(attention: dict, length: int, *, backward: bool, repeats: int = 3, d_model: int = 64) -> float:
    """Median wall time of one forward (and backward) pass of one causal attention layer over ``length`` tokens
    (batch 1, width ``d_model``, 4 heads), after one warm-up call."""
    torch.manual_seed(0)
    layer = build_attention(AttentionConfig.model_validate(attention), AttentionSite(d_model, 4, seq_len=length))
    x = torch.randn(1, length, d_model, requires_grad=backward)

    def call() -> None:
        out = layer(x)
        if backward:
            out.sum().backward()

    call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)

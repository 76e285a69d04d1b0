"""PyramidKV (Cai et al., "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling",
arXiv:2406.02069): SnapKV's selection with budgets that shrink with depth, since lower layers spread their
attention over the whole prompt and upper layers focus on a few tokens.

Budgets form an arithmetic sequence over the layers with the mean ``budget`` B (so the model keeps exactly
``n_layers · n_kv_heads · B`` tokens, as SnapKV at the same B): the top layer keeps ``B / beta``, the bottom
``2B − B / beta``; a bottom budget over the prompt length is capped at it and the top raised to keep the mean (the
rule of NVIDIA/kvpress, ``kvpress/presses/pyramidkv_press.py``, after KVCache-Factory's ``pyramidkv_utils.py``).
Rounding keeps the sum exact (largest remainders). Every head of a layer gets the layer's budget; the
observation window is clipped to a budget smaller than it.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from attnlab.longctx.kv.snapkv import SnapKVPolicy


def pyramid(n_layers: int, mean: int, length: int, beta: float) -> list[int]:
    """Per-layer budgets, decreasing, summing to ``n_layers · min(mean, length)``, each in 0 … length."""
    if mean >= length or n_layers == 1:
        return [min(mean, length)] * n_layers
    low = mean / beta
    high = 2 * mean - low
    if high > length:
        high, low = float(length), 2 * mean - float(length)
    exact = [high - i * (high - low) / (n_layers - 1) for i in range(n_layers)]
    floors = [math.floor(x) for x in exact]
    short = n_layers * mean - sum(floors)
    for i in sorted(range(n_layers), key=lambda i: (floors[i] - exact[i], i))[:short]:
        floors[i] += 1
    return floors


class PyramidKVPolicy(SnapKVPolicy):
    """SnapKV with per-layer budgets decreasing linearly with depth."""

    name: ClassVar[str] = "pyramidkv"

    beta: float = Field(20.0, ge=1.0)

    def budgets(self, n_layers: int, n_kv_heads: int, length: int) -> Tensor:
        if self.budget is None:
            return super().budgets(n_layers, n_kv_heads, length)
        per_layer = torch.tensor(pyramid(n_layers, self.budget, length, self.beta), dtype=torch.long)
        return per_layer[:, None].expand(n_layers, n_kv_heads).clone()

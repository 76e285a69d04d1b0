"""SnapKV (Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation", NeurIPS 2024,
arXiv:2404.14469): after the prompt, keep per head the tokens the last ``window`` queries of the prompt (the
observation window) attend to most, and the window itself.

    score_j = pool_k( Σ_{i in window} A^h[i, j] ),   averaged over the query heads of a key/value group

with ``pool_k`` a 1-D average pooling of width ``kernel`` (stride 1, zero padding ``kernel // 2``) that keeps the
neighbours of a chosen token. Window 32 and kernel 5 are the paper's code defaults (NVIDIA/kvpress,
``kvpress/presses/snapkv_press.py``, uses window 64 and averages the group, which its issue #22 of SnapKV
motivates). A one-off compression: the cache grows again while decoding.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from torch import Tensor

from attnlab.longctx.kv.base import HeadState, KVPolicy, keep_top, window_of


class SnapKVPolicy(KVPolicy):
    """The observation window plus the tokens it attends to most (pooled), per key/value head."""

    name: ClassVar[str] = "snapkv"
    needs: ClassVar[frozenset[str]] = frozenset({"window"})
    while_decoding: ClassVar[bool] = False

    window: int = Field(32, ge=1)
    kernel: int = Field(5, ge=1)

    def select(self, layer: int, state: HeadState, budget: Tensor) -> Tensor:
        return keep_top(state.stats["window"], state.valid, budget, window_of(state, budget, self.window))

"""TOVA, Token Omission Via Attention (Oren et al., "Transformers are Multi-State RNNs", EMNLP 2024,
arXiv:2401.06104): when the cache is over budget, drop the tokens the current query attends to least.

The score of slot j is the attention of the newest query (the last of the forward call) averaged over every
query head of the layer, so all heads of a layer keep the same tokens (the paper's choice; NVIDIA/kvpress,
``kvpress/presses/tova_press.py``, does the same). Nothing is forced: the newest token stays only if it is attended.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from attnlab.longctx.kv.base import HeadState, KVPolicy, keep_top


class TOVAPolicy(KVPolicy):
    """Keep the tokens the newest query attends to most, averaged over the layer's heads."""

    name: ClassVar[str] = "tova"
    needs: ClassVar[frozenset[str]] = frozenset({"last"})

    def select(self, layer: int, state: HeadState, budget: Tensor) -> Tensor:
        last = state.stats["last"]  # [B, Hkv, S]: the mean over each group's query heads
        score = last.mean(1, keepdim=True).expand_as(last)  # equal groups: the mean over all query heads
        return keep_top(score, state.valid, budget)

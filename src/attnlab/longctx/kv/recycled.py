"""Recycled Attention (Xu, Goyal, Choi, "Recycled Attention: Efficient Inference for Long-Context Language Models",
arXiv:2411.05787): keep the whole cache, but attend to all of it only every ``stride`` steps; in between, attend
only to the ``budget`` keys the last full step attended to most, plus every token that arrived since.

The choice is per key/value head, from the attention of the full step's newest query (the last of its forward
call) averaged over the group's query heads. Nothing is evicted (memory is that of the full cache; what shrinks is
the attention each recycled step reads), positions stay the tokens' own (``positions="original"``) and with
``stride = 1`` every step is a full step: exactly full attention.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from torch import Tensor

from attnlab.longctx.kv.base import HeadState, KVPolicy, keep_top


class RecycledPolicy(KVPolicy):
    """Full attention every ``stride`` calls; in between, the top-``budget`` keys of the last full call."""

    name: ClassVar[str] = "recycled"
    needs: ClassVar[frozenset[str]] = frozenset({"last"})
    while_decoding: ClassVar[bool] = False
    positions: ClassVar[tuple[str, ...]] = ("original",)

    stride: int = Field(8, ge=1)

    def budgets(self, n_layers: int, n_kv_heads: int, length: int) -> Tensor:
        return super().budgets(n_layers, n_kv_heads, length).fill_(length)  # evicts nothing

    def select(self, layer: int, state: HeadState, budget: Tensor) -> Tensor:
        return state.valid

    def full_step(self, call: int) -> bool:
        return call % self.stride == 0

    def refresh(self, state: HeadState) -> Tensor | None:
        if self.budget is None:
            return None
        return keep_top(state.stats["last"], state.valid, min(self.budget, state.valid.shape[-1]))

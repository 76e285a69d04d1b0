"""A sliding window: each head keeps its newest ``budget`` tokens, the baseline that shows why sinks matter."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from attnlab.longctx.kv.base import HeadState, KVPolicy, window_of


class RecentPolicy(KVPolicy):
    """Keep the last ``budget`` tokens of every head."""

    name: ClassVar[str] = "recent"

    def select(self, layer: int, state: HeadState, budget: Tensor) -> Tensor:
        return window_of(state, budget, int(budget.max()))

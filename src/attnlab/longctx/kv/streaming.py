"""StreamingLLM (Xiao et al., "Efficient Streaming Language Models with Attention Sinks", ICLR 2024,
arXiv:2309.17453): the first ``n_sink`` tokens (the attention sinks) plus the most recent ``budget − n_sink``.

The paper re-numbers positions inside the cache (a token's position is its slot): the cache's
``positions="cache"`` (NVIDIA/kvpress does the same with ``KeyRerotationPress`` around ``StreamingLLMPress``).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator
from torch import Tensor

from attnlab.errors import ConfigError
from attnlab.longctx.kv.base import HeadState, KVPolicy, sinks_of, window_of


class StreamingPolicy(KVPolicy):
    """Sinks + a recent window, the same tokens in every head."""

    name: ClassVar[str] = "streaming"

    n_sink: int = Field(4, ge=0)

    @model_validator(mode="after")
    def _fits(self) -> StreamingPolicy:
        if self.budget is not None and self.n_sink >= self.budget:
            raise ConfigError("n_sink", self.n_sink, f"must be below the budget {self.budget}")
        return self

    def select(self, layer: int, state: HeadState, budget: Tensor) -> Tensor:
        sinks = sinks_of(state, budget, self.n_sink)
        return sinks | window_of(state, budget - sinks.sum(-1).amax(0), int(budget.max()))

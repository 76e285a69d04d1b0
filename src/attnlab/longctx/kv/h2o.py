"""H2O, the Heavy-Hitter Oracle (Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large
Language Models", NeurIPS 2023, arXiv:2306.14048): the most recent ``n_recent`` tokens plus the
``budget − n_recent`` older tokens with the largest accumulated attention

    score_j = Σ_{queries i so far} Σ_{query heads h of the KV group} A^h[i, j]

per layer and per key/value head (heads keep different tokens; with GQA the query heads that share a key/value
head add up). ``n_recent`` defaults to ``budget // 2``, the paper's equal heavy and recent budgets. Scores are plain
sums, as in the paper (older tokens have been seen by more queries). After a prompt the sums run over every query
of the prompt (kvpress's ``ObservedAttentionPress``); while decoding every new query adds its row.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator
from torch import Tensor

from attnlab.errors import ConfigError
from attnlab.longctx.kv.base import HeadState, KVPolicy, keep_top, window_of


class H2OPolicy(KVPolicy):
    """A recent window plus the heavy hitters of accumulated attention, per key/value head."""

    name: ClassVar[str] = "h2o"
    needs: ClassVar[frozenset[str]] = frozenset({"acc"})

    n_recent: int | None = Field(None, ge=0)  # None: budget // 2

    @model_validator(mode="after")
    def _fits(self) -> H2OPolicy:
        if self.budget is not None and self.n_recent is not None and self.n_recent > self.budget:
            raise ConfigError("n_recent", self.n_recent, f"must not exceed the budget {self.budget}")
        return self

    @property
    def recent(self) -> int:
        """The recent window: ``n_recent`` or half the budget."""
        if self.budget is None:
            return 0
        return self.n_recent if self.n_recent is not None else self.budget // 2

    def select(self, layer: int, state: HeadState, budget: Tensor) -> Tensor:
        return keep_top(state.stats["acc"], state.valid, budget, window_of(state, budget, self.recent))

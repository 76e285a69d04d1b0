"""Sorting as token classification, a non-causal (encoder) task: the non-causal self-attention pattern of CAB
(Zhang et al., "CAB: Comprehensive Attention Benchmarking on Long Sequence Modeling", 2023, arXiv:2210.07661)
on the number-sorting task of Vinyals, Bengio & Kudlur ("Order Matters: Sequence to sequence for sets", 2016,
arXiv:1511.06391), here with a fixed-length output read at the input positions rather than decoded.

The input is ``n = length`` tokens drawn uniformly with replacement from [0, V); the target at position i is
the i-th smallest input token (``targets = sort(inputs)``; ties are repeated as often as they occur). Every
position is scored. Position i must see the whole sequence (how many tokens are smaller than each candidate),
so a causal model cannot solve it: it needs ``ModelConfig.mode="encoder"``. Metric: the loop's cross-entropy
and per-position accuracy over all n positions.

``with_length(m)`` is the same vocabulary at length m (length extrapolation).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from attnlab.tasks.base import TASKS, Batch, ModelMode, Task, TaskConfig


class SortingConfig(TaskConfig):
    name: Literal["sorting"] = "sorting"
    mode: ClassVar[ModelMode] = "encoder"
    vocab: int = Field(32, gt=1)
    length: int = Field(16, gt=1)

    @property
    def vocab_size(self) -> int:
        return self.vocab

    @property
    def seq_len(self) -> int:
        return self.length

    def with_length(self, length: int) -> SortingConfig:
        """The same task with ``length`` input tokens, validated."""
        return type(self)(**{**self.model_dump(), "length": length})

    def build(self, seed: int) -> Sorting:
        return Sorting(self, seed)


TASKS.register(
    "sorting",
    summary="non-causal: output the input tokens in sorted order, one per position",
    paper="Vinyals et al. 2016, arXiv:1511.06391 (task); CAB, Zhang et al. 2023, arXiv:2210.07661 (pattern)",
)(SortingConfig)


class Sorting(Task):
    config: SortingConfig

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        c = self.config
        inputs = torch.randint(0, c.vocab, (n, c.length), generator=generator)  # [n, L]
        return Batch(inputs, inputs.sort(dim=1).values)  # every position scored

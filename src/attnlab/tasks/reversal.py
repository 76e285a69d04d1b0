"""Sequence reversal, a sequence-to-sequence task for an encoder-decoder: CAB's non-causal cross-attention
pattern, with causal self-attention in the decoder (Zhang et al., "CAB: Comprehensive Attention Benchmarking on
Long Sequence Modeling", 2023, arXiv:2210.07661), on the sequence-reversal transduction task of Grefenstette et
al. ("Learning to Transduce with Unbounded Memory", 2015, arXiv:1506.02516).

Token 0 is BOS; content is drawn uniformly with replacement from [1, V). The source is ``n = length`` content
tokens ``x_1 … x_n`` (the encoder's input, ``Batch.source``); the target is ``x_n … x_1``. The decoder is
teacher-forced: its input is ``BOS x_n … x_2`` (BOS, then the target without its last token) and the target at
position i is the (i+1)-th target token. All n target positions are scored. Target position i must read
source position n − 1 − i through cross-attention. Metric: the loop's cross-entropy and per-token accuracy.

``with_length(m)`` is the same vocabulary with m source (and target) tokens (length extrapolation).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from attnlab.tasks.base import TASKS, Batch, ModelMode, Task, TaskConfig

BOS = 0


class ReversalConfig(TaskConfig):
    name: Literal["reversal"] = "reversal"
    mode: ClassVar[ModelMode] = "encoder_decoder"
    vocab: int = Field(32, gt=2)  # BOS plus at least two content tokens
    length: int = Field(12, gt=1)

    @property
    def vocab_size(self) -> int:
        return self.vocab

    @property
    def seq_len(self) -> int:
        """The source length, which is also the decoder's (target) length."""
        return self.length

    def with_length(self, length: int) -> ReversalConfig:
        """The same task with ``length`` source tokens, validated."""
        return type(self)(**{**self.model_dump(), "length": length})

    def build(self, seed: int) -> Reversal:
        return Reversal(self, seed)


TASKS.register(
    "reversal",
    summary="encoder-decoder: output the source sequence reversed (teacher-forced)",
    paper="Grefenstette et al. 2015, arXiv:1506.02516 (task); CAB, Zhang et al. 2023, arXiv:2210.07661 (pattern)",
)(ReversalConfig)


class Reversal(Task):
    config: ReversalConfig

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        c = self.config
        source = torch.randint(BOS + 1, c.vocab, (n, c.length), generator=generator)  # [n, L]
        targets = source.flip(1)  # [n, L]
        inputs = torch.cat([torch.full((n, 1), BOS, dtype=torch.long), targets[:, :-1]], dim=1)  # teacher forcing
        return Batch(inputs, targets, source)

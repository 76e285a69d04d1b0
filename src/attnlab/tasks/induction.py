"""Repeated random tokens: the induction-head test (Olsson et al., "In-context Learning and Induction Heads",
2022, arXiv:2209.11895; the same sequences TransformerLens uses to find induction heads).

A sequence is ``[BOS] x_1 … x_h x_1 … x_h``: ``h = half`` tokens drawn uniformly with replacement from the
content vocabulary, then the same tokens again. With ``bos`` the sequence starts with token 0 and content is
drawn from [1, V); without it content is drawn from [0, V) and T = 2h.

Scored: every position of the second copy whose next token is also in the second copy, i.e. the h − 1
positions holding x_1 … x_(h−1) of the second copy, with targets x_2 … x_h (the next token, which the first
copy determines). Not scored: the first copy (random, unpredictable), the prediction of the second copy's first
token x_1 (predictable only from the position, not by induction) and the last position (nothing follows).
Metric: the loop's cross-entropy and accuracy over the scored positions, i.e. in-context loss and induction
accuracy on the second copy.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from attnlab.errors import ConfigError
from attnlab.tasks.base import IGNORE, TASKS, Batch, Task, TaskConfig

BOS = 0


class InductionConfig(TaskConfig):
    name: Literal["induction"] = "induction"
    vocab: int = Field(64, gt=0)
    half: int = Field(16, gt=0)  # length of the random sequence that is repeated
    bos: bool = True

    @model_validator(mode="after")
    def _fits(self) -> InductionConfig:
        if self.half < 2:
            raise ConfigError(
                "half", self.half, "needs 2 or more tokens so the second copy has a scored position", "2 …"
            )
        if self.vocab - self.content_low < 2:
            raise ConfigError(
                "vocab", self.vocab, "needs 2 or more content tokens besides BOS", f"{self.content_low + 2} …"
            )
        return self

    @property
    def content_low(self) -> int:
        """The first content token: 1 when token 0 is BOS, else 0."""
        return int(self.bos)

    @property
    def second_copy_start(self) -> int:
        return int(self.bos) + self.half

    @property
    def vocab_size(self) -> int:
        return self.vocab

    @property
    def seq_len(self) -> int:
        return int(self.bos) + 2 * self.half

    def with_length(self, length: int) -> InductionConfig:
        """The same task with ``half = (length − bos) // 2``: a sequence of about ``length`` tokens, validated."""
        return type(self)(**{**self.model_dump(), "half": (length - int(self.bos)) // 2})

    def build(self, seed: int) -> Induction:
        return Induction(self, seed)


TASKS.register(
    "induction",
    summary="repeated random tokens, scored on the second copy",
    paper="Olsson et al. 2022, arXiv:2209.11895",
)(InductionConfig)


class Induction(Task):
    config: InductionConfig

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        c = self.config
        x = torch.randint(c.content_low, c.vocab, (n, c.half), generator=generator)  # [n, h]
        prefix = torch.full((n, int(c.bos)), BOS, dtype=torch.long)  # [n, 0 or 1]
        inputs = torch.cat([prefix, x, x], dim=1)  # [n, T]
        targets = torch.full_like(inputs, IGNORE)
        start = c.second_copy_start
        targets[:, start : start + c.half - 1] = x[:, 1:]  # position of x_i in the second copy → x_(i+1)
        return Batch(inputs, targets)

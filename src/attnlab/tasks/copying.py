"""Copying a random span in context (Jelassi et al., "Repeat After Me: Transformers are Better than State
Space Models at Copying", 2024, arXiv:2402.01032; copying learned as grokking: Lv et al., "Language Models "Grok"
to Copy", 2024, arXiv:2409.09281).

Token 0 is padding and token 1 the separator; content is drawn uniformly with replacement from [2, V). A
sequence of length T is ``x_1 … x_s SEP x_1 … x_s PAD …``: a random string of ``s = span`` tokens, the
separator, the string again (teacher-forced) and padding up to T.

Scored: the s positions that predict the reproduction, i.e. the separator (target x_1) and the reproduced
x_1 … x_(s−1) (targets x_2 … x_s). Not scored: the string itself, the last reproduced token and the padding.
Metric: the loop's cross-entropy and per-token copying accuracy over the reproduction.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from attnlab.errors import ConfigError
from attnlab.tasks.base import IGNORE, TASKS, Batch, Task, TaskConfig

PAD, SEP = 0, 1
FIRST_CONTENT = 2


class CopyingConfig(TaskConfig):
    name: Literal["copying"] = "copying"
    vocab: int = Field(32, gt=0)
    span: int = Field(8, gt=0)
    length: int = Field(32, gt=0)

    @model_validator(mode="after")
    def _fits(self) -> CopyingConfig:
        if self.vocab < FIRST_CONTENT + 2:
            raise ConfigError("vocab", self.vocab, "needs 2 or more content tokens besides PAD=0 and SEP=1", "4 …")
        if 2 * self.span + 1 > self.length:
            raise ConfigError(
                "span",
                self.span,
                f"needs 2·span + 1 <= length={self.length} (string, separator, copy)",
                f"1 … {(self.length - 1) // 2}",
            )
        return self

    @property
    def vocab_size(self) -> int:
        return self.vocab

    @property
    def seq_len(self) -> int:
        return self.length

    def with_length(self, length: int) -> CopyingConfig:
        """The same task at ``length`` with the span scaled in proportion (a longer string to copy, not just more
        padding, which a causal model would never see), validated."""
        span = max(1, min((length - 1) // 2, round(self.span * length / self.length)))
        return type(self)(**{**self.model_dump(), "length": length, "span": span})

    def build(self, seed: int) -> Copying:
        return Copying(self, seed)


TASKS.register(
    "copying",
    summary="copy a random span after a separator",
    paper="Jelassi et al. 2024, arXiv:2402.01032",
)(CopyingConfig)


class Copying(Task):
    config: CopyingConfig

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        c = self.config
        s = c.span
        x = torch.randint(FIRST_CONTENT, c.vocab, (n, s), generator=generator)  # [n, s]
        inputs = torch.full((n, c.length), PAD, dtype=torch.long)
        inputs[:, :s] = x
        inputs[:, s] = SEP
        inputs[:, s + 1 : 2 * s + 1] = x
        targets = torch.full_like(inputs, IGNORE)
        targets[:, s : 2 * s] = x  # SEP → x_1, reproduced x_i → x_(i+1)
        return Batch(inputs, targets)

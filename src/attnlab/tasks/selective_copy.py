"""Selective copying (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023,
arXiv:2312.00752, §3.1 and §4.1, after the copying task of Arjovsky et al. 2016 and the variable-spacing
version of Jing et al. 2019).

Token 0 is the blank (noise) token, token V − 1 the marker; content is drawn uniformly with replacement from
[1, V − 1). A sequence of length T has a region of T − M positions holding ``M = n_memorize`` content
tokens at distinct random positions (kept in order) among blanks, followed by M markers. As in the Mamba
reference generator, the output is read at the markers: the target at the i-th marker is the i-th content
token, and the markers give no hint of it, so the model must select the content and keep its order.

Scored: the M marker positions only. Metric: the loop's cross-entropy and per-token accuracy over them.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from attnlab.errors import ConfigError
from attnlab.tasks.base import IGNORE, TASKS, Batch, Task, TaskConfig
from attnlab.tasks.mqar import sample_without_replacement

BLANK = 0


class SelectiveCopyConfig(TaskConfig):
    name: Literal["selective_copy"] = "selective_copy"
    vocab: int = Field(16, gt=0)
    length: int = Field(64, gt=0)  # the whole sequence: content region (T − M) plus M markers
    n_memorize: int = Field(8, gt=0)

    @model_validator(mode="after")
    def _fits(self) -> SelectiveCopyConfig:
        if self.vocab < 4:
            raise ConfigError(
                "vocab", self.vocab, "needs 2 or more content tokens besides blank=0 and the marker", "4 …"
            )
        if 2 * self.n_memorize > self.length:
            raise ConfigError(
                "n_memorize",
                self.n_memorize,
                f"needs 2·n_memorize <= length={self.length} (content region, then one marker per token)",
                f"1 … {self.length // 2}",
            )
        return self

    @property
    def marker(self) -> int:
        return self.vocab - 1

    @property
    def vocab_size(self) -> int:
        return self.vocab

    @property
    def seq_len(self) -> int:
        return self.length

    def with_length(self, length: int) -> SelectiveCopyConfig:
        """The same task at ``length`` with the same number of tokens to memorise (more blanks), validated."""
        return type(self)(**{**self.model_dump(), "length": length})

    def build(self, seed: int) -> SelectiveCopy:
        return SelectiveCopy(self, seed)


TASKS.register(
    "selective_copy",
    summary="recall scattered content tokens in order after markers",
    paper="Gu & Dao 2023, arXiv:2312.00752",
)(SelectiveCopyConfig)


class SelectiveCopy(Task):
    config: SelectiveCopyConfig

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        c = self.config
        m, region = c.n_memorize, c.length - c.n_memorize
        tokens = torch.randint(BLANK + 1, c.marker, (n, m), generator=generator)  # [n, M]
        positions = sample_without_replacement(n, 0, region, m, generator).sort(dim=1).values  # [n, M] ascending
        inputs = torch.full((n, c.length), BLANK, dtype=torch.long)
        inputs.scatter_(1, positions, tokens)
        inputs[:, region:] = c.marker
        targets = torch.full_like(inputs, IGNORE)
        targets[:, region:] = tokens
        return Batch(inputs, targets)

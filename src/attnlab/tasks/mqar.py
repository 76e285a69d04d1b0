"""Multi-query associative recall, MQAR (Arora et al., "Zoology: Measuring and Improving Recall in
Efficient Language Models", 2023, arXiv:2312.04927).

A sequence of length T starts with P key–value pairs ``k1 v1 k2 v2 … kP vP``; keys are drawn without
replacement from [1, V/2) and values from [V/2, V). Every key is then queried once in the remaining
T − 2P positions: query slots sit at even offsets of that region, chosen without replacement with
probability ∝ a·i^(a−1) over slot index i = 1 … (T − 2P)/2 (a power law that favours short gaps, a = 0.01
as in Zoology). The target at a query position is the key's value; only query positions are scored. The
other positions hold random tokens from the whole vocabulary (Zoology's ``random_non_queries``).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from attnlab.errors import ConfigError
from attnlab.tasks.base import IGNORE, TASKS, Batch, Task, TaskConfig


class MQARConfig(TaskConfig):
    name: Literal["mqar"] = "mqar"
    vocab: int = Field(256, gt=3)
    length: int = Field(64, gt=3)
    num_kv_pairs: int = Field(8, gt=0)
    power_a: float = Field(0.01, gt=0)
    random_non_queries: bool = True

    @model_validator(mode="after")
    def _fits(self) -> MQARConfig:
        if self.length % 2:
            raise ConfigError("length", self.length, "must be even", f"even numbers, e.g. {self.length + 1}")
        if 4 * self.num_kv_pairs > self.length:
            raise ConfigError(
                "num_kv_pairs",
                self.num_kv_pairs,
                f"needs 4·pairs <= length={self.length}",
                f"1 … {self.length // 4}",
            )
        if self.num_kv_pairs > self.vocab // 2 - 1:
            raise ConfigError(
                "num_kv_pairs",
                self.num_kv_pairs,
                f"needs distinct keys: pairs < vocab/2={self.vocab // 2}",
                f"1 … {self.vocab // 2 - 1}",
            )
        return self

    @property
    def vocab_size(self) -> int:
        return self.vocab

    @property
    def seq_len(self) -> int:
        return self.length

    def with_length(self, length: int) -> MQARConfig:
        """The same task at ``length`` (rounded down to even), with the same number of key-value pairs, validated."""
        return type(self)(**{**self.model_dump(), "length": length - length % 2})

    def build(self, seed: int) -> MQAR:
        return MQAR(self, seed)


TASKS.register("mqar", summary="multi-query associative recall", paper="Arora et al. 2023, arXiv:2312.04927")(
    MQARConfig
)


def sample_without_replacement(n: int, low: int, high: int, k: int, g: torch.Generator) -> torch.Tensor:
    """[n, k] distinct integers from [low, high) per row."""
    return torch.rand(n, high - low, generator=g).argsort(dim=1)[:, :k] + low


class MQAR(Task):
    config: MQARConfig

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        c = self.config
        p, half = c.num_kv_pairs, c.vocab // 2
        keys = sample_without_replacement(n, 1, half, p, generator)  # [n, P]
        values = sample_without_replacement(n, half, c.vocab, p, generator)  # [n, P]
        context = torch.stack([keys, values], dim=2).flatten(1)  # [n, 2P]: k1 v1 k2 v2 …

        slots = (c.length - 2 * p) // 2
        i = torch.arange(1, slots + 1, dtype=torch.float64)
        probs = (c.power_a * i ** (c.power_a - 1)).expand(n, slots)
        chosen = torch.multinomial(probs, p, replacement=False, generator=generator)  # [n, P] slot per key
        query_pos = 2 * p + 2 * chosen  # [n, P]

        if c.random_non_queries:
            inputs = torch.randint(0, c.vocab, (n, c.length), generator=generator)
        else:
            inputs = torch.zeros(n, c.length, dtype=torch.long)
        inputs[:, : 2 * p] = context
        inputs.scatter_(1, query_pos, keys)
        targets = torch.full((n, c.length), IGNORE, dtype=torch.long)
        targets.scatter_(1, query_pos, values)
        return Batch(inputs, targets)

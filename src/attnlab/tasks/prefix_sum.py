"""Running (prefix) sums, a sequence-to-sequence task whose output i depends on source positions ≤ i only: the task
for CAB's fourth pattern, causal cross-attention (Zhang et al., "CAB: Comprehensive Attention Benchmarking on Long
Sequence Modeling", 2023, arXiv:2210.07661), with causal self-attention in the decoder.

Token 0 is BOS; token ``1 + v`` is the value v in 0 … m − 1 (``m = modulus``). The source is ``n = length`` values
``x_1 … x_n`` drawn uniformly; the target is ``y_i = (x_1 + … + x_(i−k)) mod m`` with ``k = delay`` (an empty sum
is 0), so target i reads source positions up to i − k: ``delay = 0`` is the prefix sum, a larger delay asks the
cross-attention to look k positions behind the diagonal. The decoder is teacher-forced: its input is
``BOS y_1 … y_(n−1)``, and with ``y_(i−1)`` in hand position i needs one source token, ``x_(i−k)``. Scored: the
target positions i > k (the first k are the empty sum, known without the source). Metric: the loop's
cross-entropy and per-token accuracy.

Train it with ``ModelConfig(mode="encoder_decoder", causal_cross=True)`` for the causal cross pattern (decoder
position i reads memory positions ≤ i, over a causal encoder); with the default full cross-attention it is the same
task under the non-causal pattern, a control. ``with_length(m)`` is the same task with m source (and target)
tokens (length extrapolation).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from attnlab.errors import ConfigError
from attnlab.tasks.base import IGNORE, TASKS, Batch, ModelMode, Task, TaskConfig

BOS = 0


class PrefixSumConfig(TaskConfig):
    name: Literal["prefix_sum"] = "prefix_sum"
    mode: ClassVar[ModelMode] = "encoder_decoder"
    modulus: int = Field(10, gt=1)
    length: int = Field(16, gt=1)
    delay: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _scored(self) -> PrefixSumConfig:
        if self.delay >= self.length:
            raise ConfigError(
                "delay", self.delay, f"leaves nothing to score at length={self.length}", f"0 … {self.length - 1}"
            )
        return self

    @property
    def vocab_size(self) -> int:
        return self.modulus + 1

    @property
    def seq_len(self) -> int:
        """The source length, which is also the decoder's (target) length."""
        return self.length

    def with_length(self, length: int) -> PrefixSumConfig:
        """The same task with ``length`` source tokens, validated."""
        return type(self)(**{**self.model_dump(), "length": length})

    def build(self, seed: int) -> PrefixSum:
        return PrefixSum(self, seed)


TASKS.register(
    "prefix_sum",
    summary="encoder-decoder: running sums mod m of the source, k behind (output i reads source ≤ i − k)",
    paper="CAB, Zhang et al. 2023, arXiv:2210.07661 (causal cross-attention pattern)",
)(PrefixSumConfig)


def running_sums(values: torch.Tensor, modulus: int, delay: int) -> torch.Tensor:
    """[n, L] → [n, L]: ``(values[:, 0] + … + values[:, i − delay]) mod modulus`` (0 where i < delay)."""
    sums = values.cumsum(dim=1) % modulus
    return torch.cat([torch.zeros_like(sums[:, :delay]), sums[:, : sums.shape[1] - delay]], dim=1)


class PrefixSum(Task):
    config: PrefixSumConfig

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        c = self.config
        values = torch.randint(0, c.modulus, (n, c.length), generator=generator)  # [n, L]
        answer = 1 + running_sums(values, c.modulus, c.delay)
        inputs = torch.cat([torch.full((n, 1), BOS, dtype=torch.long), answer[:, :-1]], dim=1)  # teacher forcing
        targets = answer.clone()
        targets[:, : c.delay] = IGNORE
        return Batch(inputs, targets, 1 + values)

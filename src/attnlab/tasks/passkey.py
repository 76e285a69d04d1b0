"""Passkey retrieval (Mohtashami & Jaggi, "Landmark Attention: Random-Access Infinite Context Length for
Transformers", 2023, arXiv:2305.16300, §4.2), at the token level.

Tokens 0–9 are digits, 10 the key marker ("the pass key is"), 11 the query marker ("what is the pass key?")
and 12 … 12 + P − 1 the filler, ``P = filler_period`` tokens repeated in a fixed cycle (the paper's "The
grass is green. The sky is blue. …" repeated). A sequence of length T with ``k = digits`` is::

    filler … KEY d_1 … d_k filler … QUERY d_1 … d_k

The haystack (everything before QUERY, T − k − 1 positions) is the filler cycle with the needle
``KEY d_1 … d_k`` inserted after ``start`` filler tokens, where ``start = round(depth · F)`` over the F
filler tokens (``depth`` None: ``start`` uniform in 0 … F). Each digit is uniform in 0–9. The example's
depth is ``start / F`` (0 = needle first, 1 = needle just before the query); ``sample_with_depth`` and
``eval_batch_with_depth`` return it so accuracy can be reported by depth.

Scored: the k positions that predict the answer (QUERY → d_1, answer d_i → d_(i+1)). Metric: the loop's
cross-entropy and per-digit accuracy over them. For length extrapolation evaluate ``config.with_length(2 * T)``
(validated, unlike ``model_copy``).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from attnlab.errors import ConfigError
from attnlab.tasks.base import IGNORE, TASKS, Batch, Task, TaskConfig, hash_seed

KEY, QUERY, FIRST_FILLER = 10, 11, 12


class PasskeyConfig(TaskConfig):
    name: Literal["passkey"] = "passkey"
    length: int = Field(64, gt=0)
    digits: int = Field(5, gt=0)
    depth: float | None = None  # needle depth in [0, 1]; None: uniform random per example
    filler_period: int = Field(5, gt=0)

    @model_validator(mode="after")
    def _fits(self) -> PasskeyConfig:
        if self.depth is not None and not 0.0 <= self.depth <= 1.0:
            raise ConfigError("depth", self.depth, "must be a fraction of the haystack", "0 … 1, or None for uniform")
        if self.length < 2 * self.digits + 3:
            raise ConfigError(
                "length",
                self.length,
                f"needs room for the needle, one filler token, the query and the answer with digits={self.digits}",
                f"{2 * self.digits + 3} …",
            )
        return self

    @property
    def filler_tokens(self) -> int:
        """F: filler tokens in the haystack (T − k − 1 positions, of which k + 1 are the needle)."""
        return self.length - 2 * self.digits - 2

    @property
    def vocab_size(self) -> int:
        return FIRST_FILLER + self.filler_period

    @property
    def seq_len(self) -> int:
        return self.length

    def with_length(self, length: int) -> PasskeyConfig:
        """The same task at another length (e.g. 2× for extrapolation), validated."""
        return type(self)(**{**self.model_dump(), "length": length})

    def build(self, seed: int) -> Passkey:
        return Passkey(self, seed)


TASKS.register(
    "passkey",
    summary="retrieve a digit passkey hidden in filler at a given depth",
    paper="Mohtashami & Jaggi 2023, arXiv:2305.16300",
)(PasskeyConfig)


class Passkey(Task):
    config: PasskeyConfig

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        return self.sample_with_depth(n, generator)[0]

    def eval_batch_with_depth(self, n: int) -> tuple[Batch, Tensor]:
        """The evaluation set of ``eval_batch`` and the depth [n] of each example."""
        g = torch.Generator().manual_seed(hash_seed(self.seed, "eval"))
        return self.sample_with_depth(n, g)

    def sample_with_depth(self, n: int, generator: torch.Generator) -> tuple[Batch, Tensor]:
        """A batch and each example's needle depth [n] in [0, 1]."""
        c = self.config
        k, f = c.digits, c.filler_tokens
        needle_len, haystack = k + 1, c.length - k - 1
        passkey = torch.randint(0, 10, (n, k), generator=generator)  # [n, k]
        if c.depth is None:
            start = torch.randint(0, f + 1, (n, 1), generator=generator)  # [n, 1]
        else:
            start = torch.full((n, 1), round(c.depth * f), dtype=torch.long)
        t = torch.arange(haystack).unsqueeze(0)  # [1, H]
        filler_index = torch.where(t < start, t, t - needle_len)  # the filler cycle continues after the needle
        filler = FIRST_FILLER + filler_index % c.filler_period  # [n, H]
        needle = torch.cat([torch.full((n, 1), KEY), passkey], dim=1)  # [n, k + 1]
        needle_at_t = needle.gather(1, (t - start).clamp(0, k))  # [n, H]
        in_needle = (t >= start) & (t < start + needle_len)
        inputs = torch.cat(
            [torch.where(in_needle, needle_at_t, filler), torch.full((n, 1), QUERY), passkey], dim=1
        )  # [n, T]
        targets = torch.full_like(inputs, IGNORE)
        targets[:, haystack : haystack + k] = passkey  # QUERY → d_1, d_i → d_(i+1)
        return Batch(inputs, targets), start.squeeze(1).double() / f

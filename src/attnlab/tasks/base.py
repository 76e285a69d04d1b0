"""Tasks: a task is a config with ``build(seed)``; the built task hands out batches.

Every task is token-in, token-out: ``inputs`` [B, T] and ``targets`` [B, T] with ``IGNORE`` (−100) at
positions that are not scored, so one loss (cross-entropy over scored positions) and one metric
(accuracy over scored positions) serve them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from attnlab.config import StrictModel
from attnlab.registry import Registry

IGNORE = -100
TASKS: Registry = Registry("task")


@dataclass
class Batch:
    inputs: Tensor  # [B, T] token ids
    targets: Tensor  # [B, T] token ids, IGNORE where not scored


class TaskConfig(StrictModel):
    """Base of every task config; subclasses set ``name`` (a Literal) and register with ``TASKS``."""

    name: str
    causal: ClassVar[bool] = True  # False for tasks that need a non-causal (encoder) model

    @property
    def vocab_size(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def seq_len(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def build(self, seed: int) -> Task:  # pragma: no cover - abstract
        raise NotImplementedError


class Task:
    """A built task: deterministic training batches by step, and one fixed evaluation set."""

    def __init__(self, config: TaskConfig, seed: int):
        self.config = config
        self.seed = seed

    def sample(self, n: int, generator: torch.Generator) -> Batch:  # pragma: no cover - abstract
        raise NotImplementedError

    def train_batch(self, step: int, batch_size: int) -> Batch:
        """The batch for ``step``: a pure function of (seed, step), so a resumed run sees the same data."""
        g = torch.Generator().manual_seed(hash_seed(self.seed, "train", step))
        return self.sample(batch_size, g)

    def eval_batch(self, n: int) -> Batch:
        g = torch.Generator().manual_seed(hash_seed(self.seed, "eval"))
        return self.sample(n, g)


def hash_seed(*parts: Any) -> int:
    """A stable 63-bit seed from parts (Python's hash() is salted per process)."""
    import hashlib

    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def task_from_dict(data: Any) -> TaskConfig:
    """``{"name": "mqar", ...}`` → the registered config class, validated."""
    if isinstance(data, TaskConfig):
        return data
    if not isinstance(data, dict) or "name" not in data:
        from attnlab.errors import ConfigError

        raise ConfigError("task.name", data, "a task needs a name", TASKS.names())
    return TASKS.entry(data["name"]).factory.parse(data)

"""Any decoder task with a landmark token after every ``block`` tokens, the stream landmark attention trains on
(Mohtashami & Jaggi, "Random-Access Infinite Context Length for Transformers", 2023, arXiv:2305.16300, §3; the
authors insert it in their data pipeline: epfml/landmark-attention, ``data/utils.py::add_mem_tokens``).

The inner task's stream x_0 … x_{T−1} becomes

    x_0 … x_{l−1}  LM  x_l … x_{2l−1}  LM  …          (l = ``block``; T + ⌊T / l⌋ positions)

so every (l + 1)-th position (0-based: l, 2l + 1, …) holds the landmark token, id = the inner vocabulary's size
(``vocab_size`` is one more). This is the layout ``heads="landmark"`` with ``heads_args={"block": l}`` assumes: the
layer finds its landmarks by position, so the two ``block`` values must agree (the ``longctx-passkey`` preset's
test checks that its own do). Targets stay with their tokens: x_t's target (for a next-token task, x_{t+1}) is
still scored at x_t's position, also when a landmark follows it, and a landmark's own position is never scored.
(The paper trains on the language-model loss of the whole stream, landmarks included; here only the inner task's
scored positions count, so every mechanism is scored on the same predictions, with or without landmarks.)

Length extrapolation: ``with_length(n)`` rebuilds the inner task at n − ⌊n / (l + 1)⌋ tokens, so the stream is n
long when l + 1 divides n (the training length's multiples, for the usual factors).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, SerializeAsAny, field_validator, model_validator

from attnlab.errors import ConfigError
from attnlab.tasks.base import IGNORE, TASKS, Batch, Task, TaskConfig, task_from_dict


class LandmarksConfig(TaskConfig):
    name: Literal["landmarks"] = "landmarks"
    task: SerializeAsAny[TaskConfig] = Field(default_factory=lambda: task_from_dict({"name": "passkey"}))
    block: int = Field(16, gt=0)  # l: inner tokens per block; a landmark follows each block

    @field_validator("task", mode="before")
    @classmethod
    def _inner(cls, value: Any) -> TaskConfig:
        return task_from_dict(value)

    @model_validator(mode="after")
    def _decoder_inner(self) -> LandmarksConfig:
        if self.task.mode != "decoder" or self.task.name == "landmarks":
            raise ConfigError(
                "task.name",
                self.task.name,
                "landmarks wrap a decoder task's single stream",
                [n for n in TASKS.names() if n != "landmarks" and TASKS.get(n).mode == "decoder"],
            )
        return self

    @property
    def landmark_id(self) -> int:
        return self.task.vocab_size

    @property
    def vocab_size(self) -> int:
        return self.task.vocab_size + 1

    @property
    def seq_len(self) -> int:
        return self.task.seq_len + self.task.seq_len // self.block

    def with_length(self, length: int) -> LandmarksConfig:
        """The same task with a stream of about ``length`` positions (the inner task at length − ⌊length/(l+1)⌋)."""
        inner_with_length = getattr(self.task, "with_length", None)
        if not callable(inner_with_length):
            raise ConfigError("task.name", self.task.name, "cannot be rebuilt at another length (no with_length)")
        inner = inner_with_length(length - length // (self.block + 1))
        return type(self)(task=inner, block=self.block)

    def build(self, seed: int) -> Landmarks:
        return Landmarks(self, seed)


TASKS.register(
    "landmarks",
    summary="any decoder task with a landmark token after every block of tokens (landmark attention's stream)",
    paper="Mohtashami & Jaggi 2023, arXiv:2305.16300",
)(LandmarksConfig)


def insert_landmarks(batch: Batch, block: int, landmark_id: int) -> Batch:
    """The stream with a landmark after every ``block`` tokens; targets stay with their tokens, landmarks unscored."""
    n, t = batch.inputs.shape
    positions = torch.arange(t) + torch.arange(t) // block  # where token t goes
    length = t + t // block
    inputs = torch.full((n, length), landmark_id, dtype=batch.inputs.dtype)
    targets = torch.full((n, length), IGNORE, dtype=batch.targets.dtype)
    inputs[:, positions] = batch.inputs
    targets[:, positions] = batch.targets
    return Batch(inputs, targets)


class Landmarks(Task):
    config: LandmarksConfig

    def __init__(self, config: LandmarksConfig, seed: int):
        super().__init__(config, seed)
        self.inner = config.task.build(seed)

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        c = self.config
        return insert_landmarks(self.inner.sample(n, generator), c.block, c.landmark_id)

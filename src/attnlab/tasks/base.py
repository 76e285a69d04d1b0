"""Tasks: a task is a config with ``build(seed)``; the built task hands out batches.

Every task is token-in, token-out: ``inputs`` [B, T] and ``targets`` [B, T] with ``IGNORE`` (−100) at
positions that are not scored, so one loss (cross-entropy over scored positions) and one metric
(accuracy over scored positions) serve them all. Sequence-to-sequence tasks add ``source`` [B, S], the
encoder's input; ``inputs`` are then the decoder's (teacher-forced) input.

A task config says which model it needs in the class attribute ``mode`` (the ``ModelConfig.mode``):
``"decoder"`` (causal LM), ``"encoder"`` (non-causal, token classification) or ``"encoder_decoder"``
(cross-attention from a causal decoder to a non-causal encoder). ``causal`` is kept for older code: it is
derived from ``mode`` (False only for ``"encoder"``), and a subclass that sets only ``causal = False``
gets ``mode = "encoder"``.

Length extrapolation: a task config that can be rebuilt at another length defines
``with_length(length) -> TaskConfig`` (the same task at about ``length`` positions, validated);
:func:`extrapolation_tasks` builds those configs for a list of factors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from attnlab.config import StrictModel
from attnlab.errors import ConfigError
from attnlab.registry import Registry

IGNORE = -100
TASKS: Registry = Registry("task")
ModelMode = Literal["decoder", "encoder", "encoder_decoder"]
MODEL_MODES: tuple[str, ...] = ("decoder", "encoder", "encoder_decoder")
# Tasks ranked by their evaluation loss (lower is better) whatever else they report: token accuracy says little
# about a language model. Every other task is ranked by accuracy (higher is better). The leaderboards and the
# learning-rate search (which must know the metric before any run has finished) share this rule.
LOSS_TASKS = frozenset({"lm"})


def task_ranking_metric(task: str) -> str:
    """``"loss"`` for a task of ``LOSS_TASKS`` (``task`` may be a labelled variant, ``lm[tokenizer=bpe]``), else
    ``"accuracy"``."""
    return "loss" if task.split("[", 1)[0] in LOSS_TASKS else "accuracy"


@dataclass
class Batch:
    inputs: Tensor  # [B, T] token ids (the decoder's input in a sequence-to-sequence task)
    targets: Tensor  # [B, T] token ids, IGNORE where not scored
    source: Tensor | None = None  # [B, S] the encoder's input; None for single-stream tasks


class TaskConfig(StrictModel):
    """Base of every task config; subclasses set ``name`` (a Literal) and register with ``TASKS``.

    ``mode`` is the model kind the task needs (see the module docstring); ``causal`` follows from it.
    """

    name: str
    mode: ClassVar[ModelMode] = "decoder"
    causal: ClassVar[bool] = True  # derived from mode: False only for tasks that need an encoder
    # True: the evaluation also reports ``exact_match`` (``exact_match``: every scored position of an example
    # right), for tasks whose scored positions make one answer (the digits of a sum), where a per-token accuracy
    # of 0.9 can mean that most answers are wrong
    sequence_metric: ClassVar[bool] = False

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """Keep ``mode`` and the older ``causal`` flag in step for every subclass."""
        super().__pydantic_init_subclass__(**kwargs)
        own = cls.__dict__
        if "mode" in own:
            if own["mode"] not in MODEL_MODES:
                raise TypeError(f"{cls.__name__}.mode={own['mode']!r}: not one of {', '.join(MODEL_MODES)}")
            cls.causal = own["mode"] != "encoder"
        elif "causal" in own:
            cls.mode = "decoder" if own["causal"] else "encoder"

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


def exact_match(logits: Tensor, targets: Tensor) -> Tensor:
    """The fraction of rows whose every scored position's argmax is its target (rows with none scored count as
    right): whole-answer accuracy under teacher forcing. ``logits`` [B, T, V], ``targets`` [B, T]."""
    scored = targets != IGNORE
    wrong = (logits.argmax(-1) != targets) & scored
    return (~wrong.any(dim=1)).double().mean()


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
        raise ConfigError("task.name", data, "a task needs a name", TASKS.names())
    return TASKS.entry(data["name"]).factory.parse(data)


def tasks_with_length() -> list[str]:
    """The registered tasks whose config can be rebuilt at another length (they define ``with_length``)."""
    import attnlab.tasks  # noqa: F401  (registers every task)

    return [name for name in TASKS.names() if callable(getattr(TASKS.get(name), "with_length", None))]


def extrapolation_label(factor: float) -> str:
    """The metric suffix of a length factor: 2.0 → ``"2x"``, 1.5 → ``"1.5x"``."""
    return f"{factor:g}x"


def extrapolation_tasks(
    task: TaskConfig, factors: Sequence[float], field: str = "train.extrapolate"
) -> list[tuple[str, TaskConfig]]:
    """(label, config) for each factor f: ``task.with_length(round(f · T))`` with T the task's ``seq_len``.

    A task without ``with_length``, a repeated factor or a length the task rejects is a ConfigError on
    ``field`` (one line, naming the task and what would work).
    """
    if not factors:
        return []
    with_length = getattr(task, "with_length", None)
    if not callable(with_length):
        raise ConfigError(
            field,
            list(factors),
            f"task {task.name!r} cannot be rebuilt at another length (it has no with_length)",
            tasks_with_length(),
        )
    out: list[tuple[str, TaskConfig]] = []
    for factor in factors:
        label = extrapolation_label(factor)
        if any(label == seen for seen, _ in out):
            raise ConfigError(field, list(factors), f"factor {factor:g} is given twice", "distinct factors")
        length = round(factor * task.seq_len)
        try:
            out.append((label, with_length(length)))
        except ConfigError as err:
            raise ConfigError(field, factor, f"task {task.name!r} rejects length {length}: {err}") from None
    return out

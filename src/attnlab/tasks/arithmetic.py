"""Integer arithmetic as next-token prediction: the digit formats shared by ``addition`` and ``multiplication``.

A sequence is ``a OP b = c`` with ``a`` of ``digits`` digits, ``b`` of ``b_digits`` digits and ``c`` their sum or
product written at its full width (``digits + 1`` for a sum, ``digits + b_digits`` for a product), every number
zero-padded to its width so that one config has one sequence length. Digits are drawn uniformly and independently
(so leading zeros occur), and the answer is computed on Python integers, exact at any length.

Formats (how the position of a digit is described, the subject of Shen et al., "Positional Description Matters for
Transformers Arithmetic", 2023, arXiv:2311.14737, and Zhou et al., "Transformers Can Achieve Length Generalization
But Not Robustly", 2024, arXiv:2402.09371):

- ``plain``: most significant digit first, as written: ``0 4 7 + 8 5 6 = 0 9 0 3``;
- ``reversed``: least significant digit first in the operands and the answer (both papers): the answer's digit i
  then depends only on the operands' digits up to i and the carry, in the order a causal model writes it:
  ``7 4 0 + 6 5 8 = 3 0 9 0``;
- ``index_hints``: the reversed format with a letter before each digit that names its significance (Zhou et al.'s
  index hints; Shen et al.'s "index hints" in the plain order are ``plain_index_hints``), the same letter for
  the same significance in the operands and the answer: ``A7 B4 C0 + A6 B5 C8 = A3 B0 C9 D0``;
- ``plain_index_hints``: the same letters with the digits most significant first.

The hint letters are ``hints`` tokens; the letter of significance i is ``hint_offset + i``, where the offset is 0
(``hint_offset="zero"``) or drawn per example uniformly from 0 … hints − width (``"random"``, the default), so that
training at n digits meets every letter and a longer operand at evaluation reuses letters it has seen (the random
offset of Zhou et al.'s hints and of randomised positions, Ruoss et al. 2023, arXiv:2305.16843).

Scored: the positions that predict an answer digit (``=`` → the first answer token, then each answer digit → the
next), the answer's hint letters are teacher-forced and not scored (they are fixed by the format). Metric: the
loop's cross-entropy and per-digit accuracy, and ``exact_match`` (``sequence_metric``): the fraction of examples whose
every answer digit is right (teacher-forced argmax), the papers' accuracy.

Length generalisation: ``with_length(L)`` is the same task with the largest ``digits`` whose sequence fits in L
positions, left-padded with ``PAD`` to exactly L (``length`` field), so ``train.extrapolate`` evaluates longer
operands with the same vocabulary.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Self

import torch
from pydantic import Field, model_validator
from torch import Tensor

from attnlab.errors import ConfigError
from attnlab.tasks.base import IGNORE, Batch, Task, TaskConfig

PLUS, TIMES, EQUALS, PAD, FIRST_HINT = 10, 11, 12, 13, 14  # tokens 0–9 are the digits
Format = Literal["plain", "reversed", "index_hints", "plain_index_hints"]
FORMATS: tuple[str, ...] = ("plain", "reversed", "index_hints", "plain_index_hints")


class ArithmeticConfig(TaskConfig):
    """The fields of both arithmetic tasks; a subclass sets ``name``, ``operator`` and ``answer_width``."""

    digits: int = Field(5, gt=0)  # digits of the first operand (and of the second unless b_digits is set)
    b_digits: int | None = Field(None, gt=0)
    format: Format = "reversed"
    hints: int = Field(32, gt=0)  # the letters of the index hints (vocabulary, whatever the format)
    hint_offset: Literal["zero", "random"] = "random"
    length: int | None = Field(None, gt=0)  # None: the natural length; else left-padded with PAD to it

    operator: ClassVar[int] = PLUS  # the operator's token; a subclass sets its own
    sequence_metric: ClassVar[bool] = True  # report exact_match: the papers score whole answers

    @model_validator(mode="after")
    def _fits(self) -> Self:
        if self.hinted and self.answer_width > self.hints:
            raise ConfigError(
                "hints",
                self.hints,
                f"fewer letters than the answer's {self.answer_width} digits",
                f"{self.answer_width} …",
            )
        if self.length is not None and self.length < self.natural_length:
            raise ConfigError(
                "length",
                self.length,
                f"shorter than the {self.natural_length} tokens of the sequence",
                f"{self.natural_length} …",
            )
        return self

    @property
    def second(self) -> int:
        """Digits of the second operand."""
        return self.digits if self.b_digits is None else self.b_digits

    @property
    def answer_width(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def combine(self, a: int, b: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def hinted(self) -> bool:
        return self.format in ("index_hints", "plain_index_hints")

    @property
    def natural_length(self) -> int:
        """Tokens of ``a OP b = c`` in this format, without padding."""
        numbers = self.digits + self.second + self.answer_width
        return 2 + numbers * (2 if self.hinted else 1)

    @property
    def vocab_size(self) -> int:
        return FIRST_HINT + self.hints

    @property
    def seq_len(self) -> int:
        return self.natural_length if self.length is None else self.length

    def with_length(self, length: int) -> Self:
        """The largest ``digits`` whose sequence fits in ``length`` positions, padded to exactly ``length``."""
        fitting = [d for d in range(1, length + 1) if self._at(d).natural_length <= length]
        if not fitting:
            raise ConfigError("length", length, "too short for one-digit operands", f"{self._at(1).natural_length} …")
        return type(self)(**{**self._at(fitting[-1]).model_dump(), "length": length})

    def _at(self, digits: int) -> Self:
        return self.model_copy(update={"digits": digits, "length": None})

    def build(self, seed: int) -> Arithmetic:
        return Arithmetic(self, seed)


def to_digits(values: list[int], width: int) -> Tensor:
    """[n, width] decimal digits, most significant first, of non-negative integers below 10^width."""
    if any(v < 0 or len(str(v)) > width for v in values):
        raise ValueError(f"{values}: every value must be a non-negative integer of at most {width} digits")
    return torch.tensor([[int(ch) for ch in str(v).zfill(width)] for v in values], dtype=torch.long).reshape(-1, width)


def from_digits(digits: Tensor) -> list[int]:
    """The integers of [n, width] digit rows, most significant first."""
    return [int("".join(map(str, row))) if row else 0 for row in digits.tolist()]


def write_number(digits: Tensor, fmt: str, offset: Tensor) -> tuple[Tensor, Tensor]:
    """A number [n, w] (most significant first) as tokens in ``fmt``, and a boolean [w'] that marks its digits.

    ``offset`` [n, 1] is the hint letter of significance 0 (relative to ``FIRST_HINT``).
    """
    n, w = digits.shape
    if fmt in ("reversed", "index_hints"):
        digits = digits.flip(1)  # least significant first
        significance = torch.arange(w)
    else:
        significance = torch.arange(w - 1, -1, -1)
    if fmt in ("plain", "reversed"):
        return digits, torch.ones(w, dtype=torch.bool)
    letters = FIRST_HINT + offset + significance  # [n, w]
    tokens = torch.stack([letters, digits], dim=2).reshape(n, 2 * w)  # letter, digit, letter, digit, …
    return tokens, torch.arange(2 * w) % 2 == 1


class Arithmetic(Task):
    config: ArithmeticConfig

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        c = self.config
        a = torch.randint(0, 10, (n, c.digits), generator=generator)
        b = torch.randint(0, 10, (n, c.second), generator=generator)
        if c.hinted and c.hint_offset == "random":
            offset = torch.randint(0, c.hints - c.answer_width + 1, (n, 1), generator=generator)
        else:
            offset = torch.zeros(n, 1, dtype=torch.long)
        return self.write(a, b, offset)

    def encode(self, a: list[int], b: list[int], offset: int = 0) -> Batch:
        """The batch of the given operands (hint letters from ``offset``): known answers for tests and probes."""
        c = self.config
        n = len(a)
        return self.write(to_digits(a, c.digits), to_digits(b, c.second), torch.full((n, 1), offset))

    def write(self, a: Tensor, b: Tensor, offset: Tensor) -> Batch:
        """``a OP b = c`` for operand digits a [n, digits], b [n, b_digits] (most significant first), hint offsets
        [n, 1]: the inputs and the targets at the positions that predict an answer digit."""
        c = self.config
        n = a.shape[0]
        answer = to_digits(
            [c.combine(x, y) for x, y in zip(from_digits(a), from_digits(b), strict=True)], c.answer_width
        )
        a_tokens, _ = write_number(a, c.format, offset)
        b_tokens, _ = write_number(b, c.format, offset)
        c_tokens, is_digit = write_number(answer, c.format, offset)
        pad = c.seq_len - c.natural_length
        inputs = torch.cat(
            [
                torch.full((n, pad), PAD),
                a_tokens,
                torch.full((n, 1), c.operator),
                b_tokens,
                torch.full((n, 1), EQUALS),
                c_tokens,
            ],
            dim=1,
        )
        targets = torch.full_like(inputs, IGNORE)
        start = c.seq_len - c_tokens.shape[1]  # the answer's first position
        scored = start + torch.nonzero(is_digit).squeeze(1) - 1  # the positions that predict an answer digit
        targets[:, scored] = inputs[:, scored + 1]
        return Batch(inputs, targets)

"""Multi-digit multiplication, ``a × b = c`` with the answer at ``digits + b_digits`` digits, in the formats of
``attnlab.tasks.arithmetic``: Shen et al., "Positional Description Matters for Transformers Arithmetic" (2023,
arXiv:2311.14737), whose multiplication results are in the reversed format with padding (here zero-padded
operands and answer) and index hints.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from attnlab.tasks.arithmetic import TIMES, ArithmeticConfig
from attnlab.tasks.base import TASKS


class MultiplicationConfig(ArithmeticConfig):
    name: Literal["multiplication"] = "multiplication"
    digits: int = Field(3, gt=0)
    operator: ClassVar[int] = TIMES

    @property
    def answer_width(self) -> int:
        """A product of an n-digit and an m-digit number has at most n + m digits."""
        return self.digits + self.second

    def combine(self, a: int, b: int) -> int:
        return a * b


TASKS.register(
    "multiplication",
    summary="a × b = c over n-digit operands: plain, reversed or index-hinted digits; longer operands by with_length",
    paper="Shen et al. 2023, arXiv:2311.14737",
)(MultiplicationConfig)

"""Multi-digit addition, ``a + b = c`` with the answer at ``digits + 1`` digits, in the formats of
``attnlab.tasks.arithmetic`` (plain, reversed, index hints): the length-generalisation task of Zhou et al.,
"Transformers Can Achieve Length Generalization But Not Robustly" (2024, arXiv:2402.09371), and of Shen et al.,
"Positional Description Matters for Transformers Arithmetic" (2023, arXiv:2311.14737).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from attnlab.tasks.arithmetic import PLUS, ArithmeticConfig
from attnlab.tasks.base import TASKS


class AdditionConfig(ArithmeticConfig):
    name: Literal["addition"] = "addition"
    operator: ClassVar[int] = PLUS

    @property
    def answer_width(self) -> int:
        """A sum of two numbers of at most n digits has at most n + 1 digits."""
        return max(self.digits, self.second) + 1

    def combine(self, a: int, b: int) -> int:
        return a + b


TASKS.register(
    "addition",
    summary="a + b = c over n-digit operands: plain, reversed or index-hinted digits; longer operands by with_length",
    paper="Zhou et al. 2024, arXiv:2402.09371; Shen et al. 2023, arXiv:2311.14737",
)(AdditionConfig)

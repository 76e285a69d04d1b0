"""Multiple-choice questions with the correct option moved across A–D: each question in four rotations.

The format is the usual zero-shot one (as in the MMLU harnesses, and in Lieberum et al. 2023, "Does Circuit
Analysis Interpretability Scale? Evidence from Multiple Choice Capabilities in Chinchilla", arXiv:2307.09458)::

    Question: What is the capital of France?
    A. Berlin
    B. Paris
    C. Rome
    D. Madrid
    Answer:

and the answer is the next token, one of " A", " B", " C", " D" (each must be one token of the tokenizer). A
question's options are its answer and three distractors; rotation r puts the answer at letter r and keeps the
cyclic order of the options (``options[j] = base[(j − r) mod 4]`` with ``base = [answer, d1, d2, d3]``), so the
four rotations of a question differ only in where each option stands. A model without a position bias would be
as accurate at every letter; Li & Gao 2024, "Anchored Answers: Unravelling Positional Bias in GPT-2's
Multiple-Choice Questions" (arXiv:2405.03205), find GPT-2 anchored on "A".

Questions come from the factual-recall relations (``attnlab.experiments.prompts.recall``; distractors are other
answers of the same relation) and from one-digit addition (distractors: the answer ± 1, ± 2). Everything is drawn
from ``random.Random(seed)``: the same seed, facts and tokenizer give the same prompts.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attnlab.errors import ConfigError
from attnlab.experiments.prompts.ioi import encode_ids
from attnlab.experiments.prompts.recall import Fact, counterfactuals, pad_rows

LETTERS = ("A", "B", "C", "D")
# relation → the question that asks for its answer
QUESTIONS = {
    "capital": "What is the capital of {}?",
    "language": "What is the official language of {}?",
    "currency": "What is the currency of {}?",
    "landmark": "In which city is the {}?",
    "opposite": "What is the opposite of {}?",
}


@dataclass(frozen=True)
class Question:
    """A question, its correct answer and three distractors (all distinct)."""

    text: str
    answer: str
    distractors: tuple[str, str, str]

    def options(self, rotation: int) -> list[str]:
        """The four options with the answer at letter ``rotation`` (cyclic order kept)."""
        base = [self.answer, *self.distractors]
        return [base[(j - rotation) % 4] for j in range(4)]

    def render(self, rotation: int) -> str:
        """The prompt text with the answer at letter ``rotation``, ending with "Answer:"."""
        lines = [f"{letter}. {option}" for letter, option in zip(LETTERS, self.options(rotation), strict=True)]
        return "\n".join([f"Question: {self.text}", *lines, "Answer:"])


def fact_questions(facts: Sequence[Fact], seed: int = 0) -> list[Question]:
    """One question per fact whose relation has a question form and at least three other answers."""
    rng = random.Random(seed)
    out = []
    for fact in facts:
        others = counterfactuals(fact)
        if fact.relation in QUESTIONS and len(others) >= 3:
            out.append(
                Question(QUESTIONS[fact.relation].format(fact.subject), fact.answer, tuple(rng.sample(others, 3)))
            )
    return out


def arithmetic_questions(n: int, seed: int = 0) -> list[Question]:
    """``n`` distinct one-digit additions "What is 3 + 4?" (answer 7; distractors three of 5, 6, 8, 9)."""
    pairs = [(a, b) for a in range(1, 10) for b in range(1, 10)]
    if not 0 <= n <= len(pairs):
        raise ConfigError("n_arithmetic", n, f"must be between 0 and {len(pairs)}")
    rng = random.Random(seed)
    out = []
    for a, b in rng.sample(pairs, n):
        near = [str(a + b + d) for d in (-2, -1, 1, 2)]
        out.append(Question(f"What is {a} + {b}?", str(a + b), tuple(rng.sample(near, 3))))
    return out


@dataclass(frozen=True)
class MCQPrompts:
    """Every question in its four rotations (question-major: row 4·q + r), right-padded.

    ``tokens`` [N, T]; ``end`` [N] the last token ("Answer:"'s colon); ``correct`` [N] the answer's letter index
    (= the rotation); ``letters`` [4] the ids of " A" .. " D"; ``question`` [N] the question's index;
    ``texts`` the prompts.
    """

    tokens: Tensor
    end: Tensor
    correct: Tensor
    letters: Tensor
    question: Tensor
    texts: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, rows: Sequence[int]) -> MCQPrompts:
        """The prompts at ``rows``, in that order, cut to the longest of them."""
        index = torch.tensor(list(rows), dtype=torch.long)
        return MCQPrompts(
            tokens=self.tokens[index, : int(self.end[index].max()) + 1],
            end=self.end[index],
            correct=self.correct[index],
            letters=self.letters,
            question=self.question[index],
            texts=tuple(self.texts[i] for i in rows),
        )


def letter_tokens(tokenizer: Any) -> Tensor:
    """The ids of " A" .. " D"; ConfigError if one of them is not a single token."""
    ids = []
    for letter in LETTERS:
        encoded = encode_ids(tokenizer, " " + letter)
        if len(encoded) != 1:
            raise ConfigError("tokenizer", type(tokenizer).__name__, f"splits the answer letter {' ' + letter!r}")
        ids.append(encoded[0])
    return torch.tensor(ids)


def mcq_prompts(tokenizer: Any, questions: Sequence[Question], bos: int | None = None, pad: int = 0) -> MCQPrompts:
    """Every question in its four rotations (``bos``: a token before each prompt; ``pad``: the id after its end)."""
    if not questions:
        raise ConfigError("questions", "[]", "needs at least one question")
    seen = set()
    for q in questions:
        if len({q.answer, *q.distractors}) != 4:
            raise ConfigError("question", q.text, "needs four distinct options")
        if q.text in seen:
            raise ConfigError("question", q.text, "is listed twice")
        seen.add(q.text)
    letters = letter_tokens(tokenizer)
    first = [] if bos is None else [bos]
    texts = [q.render(r) for q in questions for r in range(4)]
    rows = [first + encode_ids(tokenizer, text) for text in texts]
    return MCQPrompts(
        tokens=pad_rows(rows, pad),
        end=torch.tensor([len(r) - 1 for r in rows]),
        correct=torch.arange(4).repeat(len(questions)),
        letters=letters,
        question=torch.arange(len(questions)).repeat_interleave(4),
        texts=tuple(texts),
    )


def split_questions(questions: Sequence[Question], seed: int = 0) -> tuple[list[Question], list[Question]]:
    """The questions shuffled (``random.Random(seed)``) and cut in two halves: (selection, held-out)."""
    order = list(questions)
    random.Random(seed).shuffle(order)
    return order[0::2], order[1::2]

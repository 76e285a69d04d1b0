"""Position bias in multiple choice, with the options as the documents that move: plain, PINE, its parts, CCA and
Uni-Encoder.

The questions and their rotations are those of ``experiments.prompts.mcq`` (Li & Gao 2024, "Anchored Answers",
arXiv:2405.03205: a small LM anchors on one letter): rotation r puts the correct option at letter r and keeps the
cyclic order of the options, the letters stay A–D in order. The prompt is cut into PINE's segments (Wang et al.,
arXiv:2407.01100, treat the options of a multiple-choice question as its documents)::

    prefix     [BOS] "Question: What is the capital of France?\\n"
    documents  "A. Berlin\\n"  "B. Paris\\n"  "C. Rome\\n"  "D. Madrid\\n"     (each tokenized on its own)
    suffix     "Answer:"

and the choice is the letter among " A" … " D" with the largest logit after "Answer:"; its label is the option's
content (its index in the question's own order, the answer first), so the flip rate counts questions whose chosen
*answer* changes with the rotation. The letter of a document changes with its place, so PINE removes the positional
part of the bias (where the option stands) and keeps any preference for a letter; a small model that always
answers "A" (the anchor of "Anchored Answers") is then as biased under PINE as without it.

The ``bare`` format takes the letters away, so that only the place of an option can bias the choice: each document
is ``"- Berlin\n"`` and the choice is the option whose first token (of " " + option) has the largest logit after
"Answer:" (questions whose four options do not start with four different tokens are left out). The documents then
only move, so PINE's and CCA's choices do not depend on the rotation.

Uni-Encoder (Song et al., arXiv:2106.01263; ``lens.uni_encoder``) scores the options themselves: the context is the
question and "Answer:" without the lettered list (a listed order would bring the order back), each candidate is
" " + option, all four in one pass at the same positions; the choice is the best mean token log-likelihood. That
is the cloze form of the question, so its accuracy is not the lettered form's; its scores, and so its choice, do not
depend on the rotation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.experiments.prompts.ioi import encode_ids
from attnlab.experiments.prompts.mcq import LETTERS, Question, arithmetic_questions, fact_questions, letter_tokens
from attnlab.experiments.prompts.recall import candidate_facts
from attnlab.lens.pine import PineLayout
from attnlab.lens.uni_encoder import candidate_scores

N_ARITHMETIC = 16  # one-digit additions added to the fact questions (as ``attnlab circuits mcq``'s default)
FORMATS = ("letters", "bare")


@dataclass(frozen=True)
class OptionPrompt:
    """One question: its prefix and suffix, each rotation's four lines (token ids), the letters' ids, and the
    cloze form for Uni-Encoder (context, and each option's tokens in the question's order)."""

    prefix: list[int]
    lines: list[list[list[int]]]  # [rotation][place] → tokens of "A. option\n" (bare: "- option\n")
    suffix: list[int]
    letters: list[int] | None  # the ids of " A" … " D"; None: the bare format, read the options' first tokens
    cloze: list[int]
    options: list[list[int]]  # [content] → tokens of " option"; content 0 is the answer
    answer: int = 0

    @property
    def n_positions(self) -> int:
        return len(LETTERS)

    @staticmethod
    def content(rotation: int, letter: int) -> int:
        """The option (its index in the question's order) at ``letter`` in ``rotation`` (``Question.options``)."""
        return (letter - rotation) % len(LETTERS)

    def moved(self, position: int) -> tuple[Tensor, PineLayout]:
        """tokens [1, T] of the rotation with the answer at letter ``position``, and their layout."""
        docs = self.lines[position]
        layout = PineLayout.of(self.prefix, docs, self.suffix)
        return torch.tensor([layout.concat(self.prefix, docs, self.suffix)]), layout

    def label(self, position: int, logits: Tensor) -> int:
        """The chosen option's content, from the last token's logits [V]: the best of the four letters, or (bare)
        the best of the options' first tokens."""
        if self.letters is None:
            return int(logits[[option[0] for option in self.options]].argmax())
        return self.content(position, int(logits[self.letters].argmax()))

    def uni_label(self, model: nn.Module, position: int) -> int:
        """Uni-Encoder's choice with the options in the rotation's order (its content)."""
        order = [self.content(position, j) for j in range(len(LETTERS))]
        scores = candidate_scores(model, self.cloze, [self.options[c] for c in order])
        return order[int(scores.argmax())]


def option_prompt(
    tokenizer: Any, question: Question, letters: list[int] | None, bos: int | None = None
) -> OptionPrompt:
    """A question cut into PINE's segments (module docstring), in every rotation; ``letters`` None: bare."""
    first = [] if bos is None else [bos]
    marks = [f"{letter}." for letter in LETTERS] if letters is not None else ["-"] * len(LETTERS)
    lines = [
        [encode_ids(tokenizer, f"{mark} {option}\n") for mark, option in zip(marks, question.options(r), strict=True)]
        for r in range(len(LETTERS))
    ]
    base = [question.answer, *question.distractors]
    return OptionPrompt(
        prefix=first + encode_ids(tokenizer, f"Question: {question.text}\n"),
        lines=lines,
        suffix=encode_ids(tokenizer, "Answer:"),
        letters=letters,
        cloze=first + encode_ids(tokenizer, f"Question: {question.text}\nAnswer:"),
        options=[encode_ids(tokenizer, " " + option) for option in base],
    )


def distinct_starts(tokenizer: Any, question: Question) -> bool:
    """Whether the four options (" " + option) start with four different tokens (the bare format reads them)."""
    return len({encode_ids(tokenizer, " " + o)[0] for o in (question.answer, *question.distractors)}) == 4


def option_prompts(
    tokenizer: Any, n_prompts: int, seed: int = 0, bos: int | None = None, fmt: str = "letters"
) -> list[OptionPrompt]:
    """``n_prompts`` questions drawn (``random.Random(seed)``) from the fact questions of the recall set and
    ``N_ARITHMETIC`` one-digit additions, each in its four rotations, in the format ``fmt`` (``FORMATS``)."""
    if fmt not in FORMATS:
        raise ConfigError("mcq_format", fmt, "not a multiple-choice format", FORMATS)
    questions = fact_questions(candidate_facts(tokenizer), seed) + arithmetic_questions(N_ARITHMETIC, seed)
    if fmt == "bare":
        questions = [q for q in questions if distinct_starts(tokenizer, q)]
    if not 1 <= n_prompts <= len(questions):
        raise ConfigError("prompts", n_prompts, f"must be between 1 and {len(questions)} (the questions there are)")
    letters = letter_tokens(tokenizer).tolist() if fmt == "letters" else None
    chosen = random.Random(seed).sample(questions, n_prompts)
    return [option_prompt(tokenizer, q, letters, bos) for q in chosen]

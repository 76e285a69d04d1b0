"""Position bias in multiple-choice answering: accuracy by the answer's letter, the letters' logit lens, the heads
that write the bias, and the bias after recalibrating them.

On every question in its four rotations (``attnlab.experiments.prompts.mcq``) the model's choice is the letter
among " A" .. " D" with the largest logit after "Answer:". ``mcq_circuit`` measures, on the selection questions:

- **accuracy by position**: the fraction of prompts answered correctly when the answer is at A, B, C or D, and
  how often each letter is chosen; the *anchor* is the letter chosen most often (Li & Gao 2024, "Anchored
  Answers", arXiv:2405.03205: GPT-2 anchors on "A");
- **the letters' logit lens** (``attnlab.lens.attribution.logit_lens``): the mean logit of each letter read off
  the residual stream before every layer and after the last (where the anchor's preference appears);
- **bias heads**: direct logit attribution of ``logit(anchor) − logit(correct)`` over the prompts whose answer is
  not the anchor; the heads with the largest mean push the anchor over the right answer;
- **correct-letter heads** (Lieberum et al. 2023, "Does Circuit Analysis Interpretability Scale? Evidence from
  Multiple Choice Capabilities in Chinchilla", arXiv:2307.09458): the attribution of ``logit(correct) − mean of
  the other three letters``.

Recalibration scales the bias heads' outputs (``attnlab.lens.interventions.scale_heads``; 0 = ablation), as
"Anchored Answers" recalibrates the components it finds, and is measured on held-out questions (other questions,
all four rotations), with as many random heads ablated as a control.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from attnlab.experiments.ioi import length_chunks, top_heads
from attnlab.experiments.prompts.mcq import MCQPrompts
from attnlab.experiments.recall import Edit
from attnlab.lens.attribution import attribution_names, direct_logit_attribution, logit_lens
from attnlab.lens.capture import run_with_cache
from attnlab.lens.interventions import Head
from attnlab.lens.residual import at_position


@dataclass(frozen=True)
class MCQScores:
    """Choices among the four letters over ``n`` prompts (each rotation equally often)."""

    n: int
    accuracy: Tensor  # [4]: accuracy when the answer is at A, B, C, D
    choices: Tensor  # [4]: the fraction of prompts answered with A, B, C, D

    @property
    def overall(self) -> float:
        """Accuracy over all prompts (the rotations are balanced)."""
        return float(self.accuracy.mean())

    @property
    def anchor(self) -> int:
        """The letter chosen most often (its index)."""
        return int(self.choices.argmax())

    @property
    def spread(self) -> float:
        """Highest minus lowest accuracy by position: 0 for a model without position bias."""
        return float(self.accuracy.max() - self.accuracy.min())


def _scores(choice: Tensor, correct: Tensor) -> MCQScores:
    """Scores from the chosen letter [N] and the answer's letter [N]."""
    hits = (choice == correct).double()
    accuracy = torch.stack([hits[correct == r].mean() for r in range(4)])
    choices = torch.stack([(choice == r).double().mean() for r in range(4)])
    return MCQScores(n=len(choice), accuracy=accuracy, choices=choices)


@torch.no_grad()
def mcq_scores(model: nn.Module, prompts: MCQPrompts, prompt_batch: int = 16) -> MCQScores:
    """The model's choice on every prompt, scored by position."""
    choice, correct = [], []
    for part in length_chunks(prompts, prompt_batch):
        choice.append(at_position(model(part.tokens), part.end, 1)[:, part.letters].argmax(-1))
        correct.append(part.correct)
    return _scores(torch.cat(choice), torch.cat(correct))


@dataclass(frozen=True)
class MCQCircuit:
    """What ``mcq_circuit`` measured on the selection prompts."""

    scores: MCQScores
    lens: Tensor  # [L + 1, 4]: mean logit of A, B, C, D before each layer and after the last
    bias: Tensor  # [L, H]: DLA of logit(anchor) − logit(correct), prompts whose answer is not the anchor
    correct: Tensor  # [L, H]: DLA of logit(correct) − mean of the other letters, every prompt
    seconds: dict[str, float] = field(default_factory=dict)

    def bias_heads(self, top: int) -> list[Head]:
        """The ``top`` heads that push the anchor over the correct letter most (positive attribution only)."""
        return top_heads(self.bias.where(self.bias > 0, torch.nan), top)


@torch.no_grad()
def mcq_circuit(model: nn.Module, prompts: MCQPrompts, prompt_batch: int = 16) -> MCQCircuit:
    """Scores, the letters' logit lens, and the bias and correct-letter attributions (module docstring)."""
    t0 = time.perf_counter()
    names = attribution_names(model)
    letters = prompts.letters
    chosen, correct, per_letter = [], [], []
    lens: Tensor | float = 0.0
    for part in length_chunks(prompts, prompt_batch):
        logits, cache = run_with_cache(model, part.tokens, names)
        chosen.append(at_position(logits, part.end, 1)[:, letters].argmax(-1))
        correct.append(part.correct)
        lens = lens + logit_lens(model, cache, part.end)[:, :, letters].sum(1)
        # each letter's own attribution [B, 4, L, H]: a difference of two letters is a difference of these
        ones = [letters[j].expand(len(part)) for j in range(4)]
        per_letter.append(
            torch.stack([direct_logit_attribution(model, cache, c, None, part.end).heads for c in ones], 1)
        )
    scores = _scores(torch.cat(chosen), torch.cat(correct))
    answer, dla = torch.cat(correct), torch.cat(per_letter)
    rows = torch.arange(len(answer))
    right = dla[rows, answer]  # [N, L, H]
    others = (dla.sum(1) - right) / 3
    off_anchor = answer != scores.anchor
    bias = (
        (dla[off_anchor, scores.anchor] - right[off_anchor]).mean(0) if off_anchor.any() else torch.zeros_like(right[0])
    )
    assert isinstance(lens, Tensor)
    return MCQCircuit(
        scores=scores,
        lens=lens / len(prompts),
        bias=bias,
        correct=(right - others).mean(0),
        seconds={"runs": time.perf_counter() - t0},
    )


@torch.no_grad()
def edit_scores(
    model: nn.Module, prompts: MCQPrompts, edits: Sequence[Edit], prompt_batch: int = 16
) -> list[tuple[Edit, MCQScores]]:
    """Per edit: the scores with the edit applied."""
    out = []
    for edit in edits:
        with edit.applied(model):
            out.append((edit, mcq_scores(model, prompts, prompt_batch)))
    return out

"""Position bias before and after PINE: multi-document key–value retrieval with the answer's document moved.

PINE: Wang et al., "Eliminating Position Bias of Language Models: A Mechanistic Approach" (ICLR 2025,
arXiv:2407.01100), ``attnlab.lens.pine``. The task follows the key–value retrieval of Liu et al., "Lost in the
Middle: How Language Models Use Long Contexts" (TACL 2024, arXiv:2307.03172), in the small form a 135M model can
copy: ``n_docs`` records ``"key 4821: apple.\\n"`` (random four-digit keys, one-token values), then
``"key 4821:"``; the answer is the value's token, scored as the argmax over the whole vocabulary. Each prompt is run
with its answer's record at every position (the other records keep their relative order), by the plain model and
under PINE, so the table gives accuracy by position and the flip rate: the share of prompts whose prediction is not
the same at every position. Each record is tokenized on its own (as the authors' tokenizer does), so moving a
record permutes whole token blocks and PINE's prediction cannot depend on the order (``lens.pine``'s tests).
Everything is drawn from ``random.Random(seed)`` with the model's own tokenizer; nothing is downloaded.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.experiments.prompts.ioi import encode_ids
from attnlab.lens.pine import PineLayout, pine_logits

VALUES = (
    "apple", "river", "chair", "tiger", "cloud", "bread", "stone", "horse", "glass", "lemon", "piano", "rabbit",
    "candle", "forest", "pencil", "window", "garden", "silver", "rocket", "violin", "tomato", "jacket", "coffee",
    "dragon", "mirror", "orange", "planet", "bottle", "castle", "spider",
)  # fmt: skip
PREFIX = "Records:\n"


@dataclass(frozen=True)
class Retrieval:
    """One prompt: its prefix, suffix and records (token ids), which record is asked, and the answer token."""

    prefix: list[int]
    records: list[list[int]]
    suffix: list[int]
    asked: int
    answer: int

    def moved(self, position: int) -> tuple[Tensor, PineLayout]:
        """tokens [1, T] with the asked record at ``position`` (the others in their order) and their layout."""
        order = [i for i in range(len(self.records)) if i != self.asked]
        order.insert(position, self.asked)
        docs = [self.records[i] for i in order]
        layout = PineLayout.of(self.prefix, docs, self.suffix)
        return torch.tensor([layout.concat(self.prefix, docs, self.suffix)]), layout


def retrieval_prompts(tokenizer: Any, n_docs: int, n_prompts: int, seed: int = 0) -> list[Retrieval]:
    """``n_prompts`` key–value retrieval prompts of ``n_docs`` records, values that are one token after a space."""
    values = [v for v in VALUES if len(encode_ids(tokenizer, " " + v)) == 1]
    if not 2 <= n_docs <= len(values):
        raise ConfigError("docs", n_docs, f"needs 2 to {len(values)} records (one-token values)")
    if n_prompts < 1:
        raise ConfigError("prompts", n_prompts, "must be at least 1")
    rng = random.Random(seed)
    out = []
    for _ in range(n_prompts):
        keys, vals = rng.sample(range(1000, 10000), n_docs), rng.sample(values, n_docs)
        asked = rng.randrange(n_docs)
        out.append(
            Retrieval(
                prefix=encode_ids(tokenizer, PREFIX),
                records=[encode_ids(tokenizer, f"key {k}: {v}.\n") for k, v in zip(keys, vals, strict=True)],
                suffix=encode_ids(tokenizer, f"key {keys[asked]}:"),
                asked=asked,
                answer=encode_ids(tokenizer, " " + vals[asked])[0],
            )
        )
    return out


@dataclass(frozen=True)
class PositionBias:
    """Predictions [N prompts, n positions] of the plain model and under PINE, and the answers [N]."""

    plain: Tensor
    pine: Tensor
    answers: Tensor

    def accuracy(self, which: str) -> list[float]:
        pred = self.plain if which == "plain" else self.pine
        return (pred == self.answers[:, None]).double().mean(0).tolist()

    def flip_rate(self, which: str) -> float:
        pred = self.plain if which == "plain" else self.pine
        return (pred != pred[:, :1]).any(1).double().mean().item()

    def table(self) -> str:
        plain, pine = self.accuracy("plain"), self.accuracy("pine")
        lines = ["position  plain   PINE"]
        lines += [f"{g:>8}  {a:5.2f}  {b:5.2f}" for g, (a, b) in enumerate(zip(plain, pine, strict=True))]
        lines.append(f"{'mean':>8}  {sum(plain) / len(plain):5.2f}  {sum(pine) / len(pine):5.2f}")
        lines.append(f"{'flips':>8}  {self.flip_rate('plain'):5.2f}  {self.flip_rate('pine'):5.2f}")
        return "\n".join(lines)


@torch.no_grad()
def position_bias(model: nn.Module, prompts: Sequence[Retrieval]) -> PositionBias:
    """Every prompt with its answer's record at every position, plain and under PINE (last token's argmax)."""
    plain, pine = [], []
    for prompt in prompts:
        row_plain, row_pine = [], []
        for g in range(len(prompt.records)):
            tokens, layout = prompt.moved(g)
            row_plain.append(int(model(tokens)[0, -1].argmax()))
            row_pine.append(int(pine_logits(model, tokens, layout)[0, -1].argmax()))
        plain.append(row_plain)
        pine.append(row_pine)
    answers = torch.tensor([p.answer for p in prompts])
    return PositionBias(torch.tensor(plain), torch.tensor(pine), answers)

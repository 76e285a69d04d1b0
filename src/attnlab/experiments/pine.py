"""Position bias before and after PINE, its parts and CCA: key–value retrieval with the answer's document moved.

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

The same table serves every prompt set whose documents move (``experiments.option_bias``: multiple choice with the
options rotated) and every method (``METHODS``): the plain model; PINE; PINE's inter-document mask alone
(positions at the indices) and its attention-ranked positions alone (causal mask), to see which part does what;
concentric causal attention's text analogue (``lens.concentric``); and, where the prompt defines candidates,
Uni-Encoder's one-pass candidate scoring (``lens.uni_encoder``). A prompt's prediction is a label (here the
predicted token; for multiple choice, the chosen option's content), so the flip rate counts a changed answer, not a
changed letter.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.experiments.prompts.ioi import encode_ids
from attnlab.lens.concentric import cca_logits
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

    @property
    def n_positions(self) -> int:
        return len(self.records)

    def label(self, position: int, logits: Tensor) -> int:
        """The prediction from the last token's logits [V]: the most likely token."""
        return int(logits.argmax())

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


class MovablePrompt(Protocol):
    """A prompt whose documents move: the answer's label, and each placement's tokens, layout and prediction."""

    answer: int

    @property
    def n_positions(self) -> int: ...

    def moved(self, position: int) -> tuple[Tensor, PineLayout]: ...

    def label(self, position: int, logits: Tensor) -> int: ...


def _plain(model: nn.Module, tokens: Tensor, layout: PineLayout) -> Tensor:
    return model(tokens)


# methods that run the prompt as laid out (tokens, layout) → logits [1, T, V]
LAYOUT_METHODS: dict[str, Callable[[nn.Module, Tensor, PineLayout], Tensor]] = {
    "plain": _plain,
    "pine": pine_logits,
    "pine-mask-only": functools.partial(pine_logits, positions=False),
    "pine-positions-only": functools.partial(pine_logits, mask=False),
    "cca": cca_logits,
}
# scores candidates instead: only prompts with a ``uni_label(model, position)`` (multiple choice)
UNI_ENCODER = "uni-encoder"
METHODS = (*LAYOUT_METHODS, UNI_ENCODER)


def check_methods(methods: Sequence[str], allowed: Sequence[str]) -> None:
    """ConfigError unless ``methods`` is a non-empty list of distinct names of ``allowed``."""
    if not methods:
        raise ConfigError("methods", "", "needs at least one method", list(allowed))
    for name in methods:
        if name not in allowed:
            raise ConfigError("methods", name, "not a method of this task", list(allowed))
    if len(set(methods)) != len(methods):
        raise ConfigError("methods", ",".join(methods), "lists a method twice")


@dataclass(frozen=True)
class PositionBias:
    """Each method's predictions [N prompts, n positions] and the answers [N] (labels of one kind)."""

    predictions: dict[str, Tensor]
    answers: Tensor
    position_names: tuple[str, ...] | None = None

    def accuracy(self, method: str) -> list[float]:
        """The share of prompts answered right with the answer at each position."""
        return (self.predictions[method] == self.answers[:, None]).double().mean(0).tolist()

    def flip_rate(self, method: str) -> float:
        """The share of prompts whose prediction is not the same at every position."""
        pred = self.predictions[method]
        return (pred != pred[:, :1]).any(1).double().mean().item()

    def table(self) -> str:
        names = list(self.predictions)
        width = [max(5, len(n)) for n in names]
        n_pos = next(iter(self.predictions.values())).shape[1]
        rows = self.position_names or tuple(str(g) for g in range(n_pos))
        acc = {n: self.accuracy(n) for n in names}

        def line(head: str, values: Sequence[float]) -> str:
            return f"{head:>8}  " + "  ".join(f"{v:{w}.2f}" for v, w in zip(values, width, strict=True))

        lines = ["position  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, width, strict=True))]
        lines += [line(r, [acc[n][g] for n in names]) for g, r in enumerate(rows)]
        lines.append(line("mean", [sum(acc[n]) / n_pos for n in names]))
        lines.append(line("flips", [self.flip_rate(n) for n in names]))
        return "\n".join(lines)


@torch.no_grad()
def position_bias(
    model: nn.Module,
    prompts: Sequence[MovablePrompt],
    methods: Sequence[str] = ("plain", "pine"),
    position_names: tuple[str, ...] | None = None,
) -> PositionBias:
    """Every prompt with its answer at every position, under each method (``METHODS``)."""
    allowed = METHODS if all(hasattr(p, "uni_label") for p in prompts) else tuple(LAYOUT_METHODS)
    check_methods(methods, allowed)
    out: dict[str, list[list[int]]] = {name: [] for name in methods}
    for prompt in prompts:
        rows: dict[str, list[int]] = {name: [] for name in methods}
        for g in range(prompt.n_positions):
            tokens, layout = prompt.moved(g)
            for name in methods:
                if name == UNI_ENCODER:
                    rows[name].append(prompt.uni_label(model, g))  # type: ignore[attr-defined]
                else:
                    rows[name].append(prompt.label(g, LAYOUT_METHODS[name](model, tokens, layout)[0, -1]))
        for name in methods:
            out[name].append(rows[name])
    answers = torch.tensor([p.answer for p in prompts])
    return PositionBias({n: torch.tensor(v) for n, v in out.items()}, answers, position_names)

"""The copying probe ``[BOS] + x + x`` and its scores: the one layout and the one scoring the lens, ``attnlab
inspect`` and the intervention experiments use.

``x`` is ``n`` random ordinary tokens; a model that copies predicts the second ``x`` from the first. This is the
repeated-random-tokens probe of induction heads (Olsson et al., "In-context Learning and Induction Heads", 2022,
arXiv:2209.11895; TransformerLens' ``utils.get_induction_score`` / ``generate_repeated_tokens``), and the proxy task of
PEAR's released code (``TTArch/PEAR-RAG``, ``train/data/gener.py``: ``x = r_1..r_n r_1..r_n``, loss on the second
half). With BOS at position 0, x's first token is at ``offset`` = 1 (0 without BOS).

What is scored (every loss through ``losses.next_token_nll``, the logit at t − 1 predicting the token at t):

- ``targets()``: the second copy *after its first token* (``r_1`` after ``r_n`` cannot be inferred by copying);
- ``first_copy()``: the first copy after its first token, the no-copying baseline (the model has not seen these
  tokens yet);
- ``copy_losses``: ``attnlab inspect``'s split over the *whole* copies (positions 1 … n and n + 1 … 2n).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.lens.capture import patterns, run_with_cache
from attnlab.lens.interventions import Head
from attnlab.lens.losses import next_token_nll
from attnlab.lens.metrics import induction_score


def copy_layout(x: Tensor, bos: int | None) -> Tensor:
    """``[bos] + x + x`` as ids [B, 2n + 1] from ``x`` [B, n] (``[B, 2n]`` when ``bos`` is None)."""
    parts = [x, x] if bos is None else [torch.full((x.shape[0], 1), bos, dtype=x.dtype), x, x]
    return torch.cat(parts, dim=1)


def induction_tokens(n: int, seed: int, low: int, high: int, bos: int | None) -> Tensor:
    """``[bos] + x + x`` as ids [1, 2n + 1] (``[1, 2n]`` without ``bos``); x is n ids uniform in [low, high), seeded."""
    if n < 1 or high <= low:
        raise ValueError(f"need n >= 1 and low < high; got n={n}, low={low}, high={high}")
    x = torch.randint(low, high, (1, n), generator=torch.Generator().manual_seed(seed))
    return copy_layout(x, bos)


@dataclass(frozen=True)
class CopyTask:
    """``[BOS] + x + x`` with ``x`` = ``n`` ids uniform in ``[low, high)`` (no BOS when ``bos`` is None).

    Scored targets: the second copy after its first token, ``n − 1`` per sequence (see the module docstring).
    """

    n: int = 50
    low: int = 2
    high: int = 32000
    bos: int | None = None

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ConfigError("seq_len", self.n, "the copied sequence needs at least 2 tokens")
        if not 0 <= self.low < self.high:
            raise ConfigError("token range", f"[{self.low}, {self.high})", "needs 0 <= low < high")

    @property
    def offset(self) -> int:
        """Position of ``x``'s first token (1 after a BOS, else 0)."""
        return 0 if self.bos is None else 1

    @property
    def length(self) -> int:
        """Tokens per sequence: ``2n`` (+ 1 with BOS)."""
        return self.offset + 2 * self.n

    def batch(self, size: int, generator: torch.Generator) -> Tensor:
        """``size`` sequences [size, length], drawn from ``generator`` (so a seed fixes the set)."""
        if size < 1:
            raise ConfigError("batch", size, "must be at least 1")
        return copy_layout(torch.randint(self.low, self.high, (size, self.n), generator=generator), self.bos)

    def targets(self) -> slice:
        """Token positions scored: the second copy without its first token, ``offset + n + 1 .. offset + 2n − 1``."""
        return slice(self.offset + self.n + 1, self.offset + 2 * self.n)

    def first_copy(self) -> slice:
        """The first copy without its first token, ``offset + 1 .. offset + n − 1``: the no-copying baseline."""
        return slice(self.offset + 1, self.offset + self.n)


def copy_loss(logits: Tensor, tokens: Tensor, task: CopyTask) -> Tensor:
    """Mean next-token cross-entropy (nats) on the task's scored targets; differentiable. ``logits`` [B, T, V]."""
    return next_token_nll(logits, tokens, task.targets(), reduction="mean")


@dataclass(frozen=True)
class CopyScores:
    """The copying task measured once: losses in nats/token, accuracy as a share of targets."""

    first_loss: float  # first copy (after its first token): nothing to copy yet
    copy_loss: float  # second copy (after its first token)
    copy_acc: float  # greedy next-token accuracy on the second copy


@torch.no_grad()
def measure_copy(model: nn.Module, tokens: Tensor, task: CopyTask, chunk: int = 16) -> CopyScores:
    """``CopyScores`` of ``model`` on ``tokens`` [B, task.length], ``chunk`` sequences per forward pass.

    Accuracy: the share of scored targets that are the argmax of the model's next-token distribution.
    """
    if tokens.dim() != 2 or tokens.shape[1] != task.length:
        raise ValueError(f"tokens must be [B, {task.length}] for this task; got {tuple(tokens.shape)}")
    first, second = task.first_copy(), task.targets()
    first_sum = copy_sum = 0.0
    correct = 0
    for part in tokens.split(chunk):
        logits = model(part)
        first_sum += float(next_token_nll(logits, part, first, reduction="sum"))
        copy_sum += float(next_token_nll(logits, part, second, reduction="sum"))
        correct += int((logits[:, second.start - 1 : second.stop - 1].argmax(-1) == part[:, second]).sum())
    count = tokens.shape[0] * (task.n - 1)
    return CopyScores(first_sum / count, copy_sum / count, correct / count)


def copy_losses(logits: Tensor, tokens: Tensor, n: int) -> tuple[float, float]:
    """Mean loss (nats/token) on the whole first copy (targets at positions 1..n) and second (n+1..2n).

    ``tokens`` is ``[BOS] + x + x`` [B, 2n + 1] and ``logits`` [B, 2n + 1, V]; averaged over the batch.
    """
    if tokens.shape[-1] != 2 * n + 1 or logits.shape[:2] != tokens.shape:
        raise ValueError(
            f"copy_losses expects tokens [B, 2n+1] and logits [B, 2n+1, V]; got {tuple(tokens.shape)}, "
            f"{tuple(logits.shape)}, n={n}"
        )
    first = next_token_nll(logits, tokens, slice(1, n + 1))
    second = next_token_nll(logits, tokens, slice(n + 1, 2 * n + 1))
    return float(first.mean()), float(second.mean())


@torch.no_grad()
def top_induction_heads(
    model: nn.Module, task: CopyTask, k: int, seed: int, batch: int = 4
) -> list[tuple[Head, float]]:
    """The ``k`` heads with the highest induction score (``metrics.induction_score``) on a seeded task batch."""
    if task.bos is None:
        raise ConfigError("bos", None, "induction-head detection needs the [BOS] + x + x layout")
    tokens = task.batch(batch, torch.Generator().manual_seed(seed))
    _, cache = run_with_cache(model, tokens, lambda name: name.endswith(".attn.hook_pattern"))
    scored = [
        ((layer, h), float(s)) for layer, P in patterns(cache).items() for h, s in enumerate(induction_score(P, task.n))
    ]
    return sorted(scored, key=lambda x: -x[1])[:k]

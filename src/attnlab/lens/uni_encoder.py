"""Uni-Encoder: every candidate continuation scored in one pass, each at the same positions, none seeing another.

Song et al., "Uni-Encoder: A Fast and Accurate Response Selection Paradigm for Generation-Based Dialogue Systems"
(Findings of ACL 2023, arXiv:2106.01263). Response selection either encodes context and candidate together once
per candidate (a cross-encoder: accurate, n passes) or separately (a poly/bi-encoder: fast, no interaction).
Uni-Encoder concatenates the context with all n candidates in one sequence; every candidate gets the same
positions, starting right after the context, and an attention mask by which a candidate token sees the context
and its own candidate, never another candidate. Each candidate then reads exactly what it would read alone, at
the positions it would have alone, and the context is encoded once.

For a causal LM the paper's encoder is replaced by the decoder itself (``UniLayout``): the context [c tokens] is
causal; candidate i of L_i tokens sits at positions ``c … c + L_i − 1``, and its token j sees the context and its
own tokens 0…j. That mask is contained in the causal one, so it goes through the attention core's
``position_ids`` and ``AttentionMask`` with the layer's own rule kept. The score of a candidate is its mean token
log-likelihood under the model, log p(y_1 | context) and log p(y_j | context, y_<j) read off the same pass
(``candidate_scores``): the model is not trained with a scoring head here (the paper trains one on each
candidate's pooled state), and the mean, not the sum, keeps options of different token counts comparable (the
length-normalised accuracy of zero-shot multiple-choice evaluation, Brown et al. 2020, arXiv:2005.14165, §2.4).

Each candidate's score is a function of the context and that candidate only, so it is the same, up to float
summation order, whatever the order of the candidates, and equal to scoring the candidate alone after the context
(``candidate_scores_alone``, the cross-encoder).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.types import AttentionMask


@dataclass(frozen=True)
class UniLayout:
    """A context of ``context`` tokens followed by candidates of the given lengths, in one sequence."""

    context: int
    candidates: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.context < 1:
            raise ValueError(f"UniLayout needs a context of at least one token; got {self.context}")
        if not self.candidates or min(self.candidates) < 1:
            raise ValueError(f"UniLayout.candidates must be one or more positive lengths; got {self.candidates}")

    @property
    def total(self) -> int:
        return self.context + sum(self.candidates)

    def starts(self) -> list[int]:
        """The index of each candidate's first token."""
        out, at = [], self.context
        for n in self.candidates:
            out.append(at)
            at += n
        return out

    def segment_ids(self, device: torch.device | None = None) -> Tensor:
        """[T]: −1 for the context, i for candidate i."""
        parts = [torch.full((self.context,), -1)] + [torch.full((n,), i) for i, n in enumerate(self.candidates)]
        return torch.cat(parts).to(device)

    def positions(self, device: torch.device | None = None) -> Tensor:
        """[T]: the context at 0…c−1, every candidate from c on."""
        c = self.context
        return torch.cat([torch.arange(c)] + [torch.arange(c, c + n) for n in self.candidates]).to(device)

    def visible(self, device: torch.device | None = None) -> Tensor:
        """[T, T] boolean: causal, and a candidate token sees no other candidate."""
        seg = self.segment_ids(device)
        idx = torch.arange(self.total, device=device)
        other = (seg[:, None] >= 0) & (seg[None, :] >= 0) & (seg[:, None] != seg[None, :])
        return (idx[:, None] >= idx[None, :]) & ~other


def mean_logprob(logits: Tensor, targets: Tensor) -> Tensor:
    """logits [L, V] (row j predicts target j), targets [L] → the mean log-probability of the targets."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    return logp.gather(-1, targets[:, None])[:, 0].mean()


def candidate_scores(model: nn.Module, context: Sequence[int], candidates: Sequence[Sequence[int]]) -> Tensor:
    """[n] float64: each candidate's mean token log-likelihood after ``context``, all from one forward pass."""
    layout = UniLayout(len(context), tuple(len(c) for c in candidates))
    device = next(model.parameters()).device
    tokens = torch.tensor([[*context, *(t for c in candidates for t in c)]], device=device)
    mask = AttentionMask(visible=layout.visible(device)[None, None])
    logits = model(tokens, position_ids=layout.positions(device)[None], attention_mask=mask)[0]
    scores = []
    for start, cand in zip(layout.starts(), candidates, strict=True):
        # the first token is predicted by the context's last, the others by the candidate's own previous token
        rows = torch.tensor([layout.context - 1, *range(start, start + len(cand) - 1)], device=device)
        scores.append(mean_logprob(logits[rows], torch.tensor(list(cand), device=device)))
    return torch.stack(scores)


def candidate_scores_alone(model: nn.Module, context: Sequence[int], candidates: Sequence[Sequence[int]]) -> Tensor:
    """The same scores with one plain forward pass per candidate, ``context + candidate`` (the reference)."""
    device = next(model.parameters()).device
    scores = []
    for cand in candidates:
        logits = model(torch.tensor([[*context, *cand]], device=device))[0]
        scores.append(mean_logprob(logits[len(context) - 1 : -1], torch.tensor(list(cand), device=device)))
    return torch.stack(scores)

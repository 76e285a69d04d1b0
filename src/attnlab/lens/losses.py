"""Next-token losses of a causal LM, the one place the lens and its experiments score predictions.

A causal LM's logit at position t − 1 is its distribution over the token at t, so scoring the targets at positions
``targets`` (a slice of the token positions) reads the logits one position earlier: the loss of target t is
``−log softmax(logits[t − 1])[tokens[t]]`` (nats). This is the language-modelling loss of Radford et al. 2019
(GPT-2) and of Hugging Face ``transformers``' ``LlamaForCausalLM.forward`` (``shift_logits = logits[..., :-1, :]``,
``shift_labels = labels[..., 1:]``), restricted to a span of targets.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Reduction = Literal["none", "mean", "sum"]


def next_token_nll(
    logits: Tensor, tokens: Tensor, targets: slice = slice(1, None), reduction: Reduction = "none"
) -> Tensor:
    """Cross-entropy (nats) of predicting ``tokens[:, t]`` from ``logits[:, t − 1]`` for each t in ``targets``.

    ``tokens`` [B, T]; ``targets`` is a slice of its positions (start ≥ 1; the default scores every position but
    the first); ``logits`` [B, T′, V] must cover positions ``start − 1 … stop − 2`` (T′ = T, or T − 1 when the last
    position's logits were never computed). Half-precision logits are upcast to float32 first; float32 and float64
    stay as they are. ``reduction="none"`` gives [B, len(targets)] (``[B, 0]`` for an empty span); ``"mean"`` /
    ``"sum"`` a 0-d tensor.
    Differentiable.
    """
    start, stop, step = targets.indices(tokens.shape[1])
    if step != 1 or start < 1 or stop < start:  # an empty span is allowed: a one-token chunk has no target yet
        raise ValueError(f"targets must be a contiguous slice of positions 1 … {tokens.shape[1] - 1}; got {targets}")
    pred = logits[:, start - 1 : stop - 1]  # [B, n, V]: the logit at t − 1 predicts the token at t
    if pred.shape[1] != stop - start:
        raise ValueError(f"logits {tuple(logits.shape)} do not cover the positions {start - 1} … {stop - 2}")
    if pred.dtype in (torch.float16, torch.bfloat16):
        pred = pred.float()
    return F.cross_entropy(pred.transpose(1, 2), tokens[:, start:stop], reduction=reduction)


@torch.no_grad()
def text_loss(model: nn.Module, tokens: Tensor, chunk: int = 8) -> float:
    """Mean next-token cross-entropy (nats/token) of ``model`` over every position of ``tokens`` [B, T] but the
    first, ``chunk`` sequences per forward pass."""
    total, count = 0.0, 0
    for part in tokens.split(chunk):
        total += float(next_token_nll(model(part), part, reduction="sum"))
        count += part[:, 1:].numel()
    return total / count

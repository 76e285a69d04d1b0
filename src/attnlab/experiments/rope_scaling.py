"""RoPE scaling on SmolLM2 without fine-tuning: perplexity against context length for PI, NTK-aware, YaRN and ABF.

Every method rebuilds the model's attention with another rotary position entry over the same weights
(``smollm2.with_position``); ``s`` is the scale factor (target length / training length, L = 8192 from the GGUF's
``llama.context_length``; SmolLM2-135M's RoPE base is 100 000, pairs interleaved):

============  ====================  ========================================================================
method        attnlab entry         what ``factor`` = s does
============  ====================  ========================================================================
``none``      ``rope``              nothing (factor must be 1)
``pi``        ``rope_pi``           positions m / s (Chen et al. 2023, arXiv:2306.15595)
``ntk``       ``rope_ntk``          base b · s^{d/(d−2)} (bloc97 2023; Peng et al. 2023, arXiv:2309.00071)
``yarn``      ``yarn``              NTK-by-parts frequencies, logits × (0.1 ln s + 1)² (Peng et al. 2024)
``abf``       ``rope_abf``          base b · s: ABF names no rule, only "a larger base" (Xiong et al. 2023,
                                    arXiv:2309.16039; Zhang et al. 2024 use 10⁴ → 5·10⁵, i.e. s = 50)
``eabf``      ``rope_abf``          the same base b · s plus Entropy-ABF's query scale max(1, log(m+1)/log L)
                                    from layer 2 on (Zhang, Li, Liu 2024, arXiv:2401.07004)
============  ====================  ========================================================================

With s = 1 every method is plain RoPE (``eabf`` only up to L tokens: its query scale is 1 for m < L).

Measurement: one forward pass over ``max(lengths)`` tokens of real text per method. The model is causal and every
entry here is a static function of position, so the predictions within the first L′ tokens of that pass are exactly
those of a pass over L′ tokens: perplexity at every shorter length is read off the same pass. For each length the
table gives the perplexity over all its predictions and over its second half (positions L′/2 … L′ − 1, where a
length beyond training shows most). Logits are unembedded in slices of 1024 positions ([T, 49152] float32 logits
would be 3.2 GB at 16k tokens); attention is PyTorch's fused SDPA (no [T, T] weights are stored).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.lens.losses import next_token_nll

METHODS = ("none", "pi", "ntk", "yarn", "abf", "eabf")


def scaled_position(method: str, factor: float, base: float) -> tuple[str, dict[str, Any]]:
    """(attnlab position entry, its arguments) for ``method`` at scale ``factor`` on a RoPE of ``base``.

    The training length and ``interleaved`` are left to ``smollm2.attention_config``. Raises ConfigError for an
    unknown method, a factor below 1, or ``none`` with a factor other than 1.
    """
    if method not in METHODS:
        raise ConfigError("method", method, "unknown RoPE scaling method", METHODS)
    if not (isinstance(factor, int | float) and math.isfinite(factor) and factor >= 1):
        raise ConfigError(f"{method}.factor", factor, "must be a finite number >= 1")
    if method == "none":
        if factor != 1:
            raise ConfigError("none.factor", factor, "plain RoPE has no scale factor", [1])
        return "rope", {}
    if method in ("pi", "ntk", "yarn"):
        return {"pi": "rope_pi", "ntk": "rope_ntk", "yarn": "yarn"}[method], {"scale": float(factor)}
    return "rope_abf", {"base": base * factor, "entropy_scaling": method == "eabf"}


def parse_methods(text: str) -> list[tuple[str, float]]:
    """``"none,pi:2,yarn:4"`` → [("none", 1.0), ("pi", 2.0), ("yarn", 4.0)]; a method without ``:s`` has s = 1."""
    out = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, factor = item.partition(":")
        try:
            value = float(factor) if factor else 1.0
        except ValueError:
            raise ConfigError("methods", item, "expected METHOD or METHOD:FACTOR, e.g. yarn:2") from None
        scaled_position(name, value, 10000.0)  # validates
        out.append((name, value))
    if not out:
        raise ConfigError("methods", text, "no method given", METHODS)
    return out


@torch.no_grad()
def token_nll(model: nn.Module, tokens: Tensor, slice_len: int = 1024) -> Tensor:
    """Next-token NLL (nats) [B, T − 1] of one causal forward pass; entry t is −log p(token t+1 | tokens ≤ t).

    A model with ``final_hidden`` and ``unembed`` (the SmolLM2 ``LlamaLM``) is unembedded ``slice_len`` positions at a
    time, so the [B, T, V] logits never exist at once.
    """
    if hasattr(model, "final_hidden") and hasattr(model, "unembed"):
        hidden = model.final_hidden(tokens)
        pieces = []
        for start in range(0, tokens.shape[1] - 1, slice_len):
            stop = min(start + slice_len, tokens.shape[1] - 1)
            logits = model.unembed(hidden[:, start:stop]).float()  # positions start … stop − 1
            pieces.append(next_token_nll(logits, tokens[:, start : stop + 1]))
        return torch.cat(pieces, dim=1)
    return next_token_nll(model(tokens).float(), tokens)


@dataclass(frozen=True)
class ScalingRow:
    """Perplexity of one method at one context length."""

    method: str
    factor: float
    length: int
    perplexity: float  # over the predictions of positions 0 … length − 2 (all tokens of a length-L′ window)
    perplexity_second_half: float  # over the predictions made at positions length/2 … length − 2
    seconds: float  # the method's one forward pass at max(lengths) (the same for all its rows)


def perplexity_by_length(nll: Tensor, lengths: Sequence[int]) -> list[tuple[int, float, float]]:
    """From NLL [B, T − 1] of one pass: (L′, ppl over the first L′ − 1 predictions, ppl over their second half)."""
    out = []
    for length in lengths:
        if length < 4 or length - 1 > nll.shape[1]:
            raise ConfigError("length", length, f"must be in 4 … {nll.shape[1] + 1} (the evaluated tokens)")
        window = nll[:, : length - 1]
        out.append((length, math.exp(float(window.mean())), math.exp(float(window[:, length // 2 :].mean()))))
    return out


def rope_scaling_table(
    model: Any, tokens: Tensor, methods: Sequence[tuple[str, float]], lengths: Sequence[int]
) -> list[ScalingRow]:
    """Perplexity vs context length for every (method, factor) on ``tokens`` [1, ≥ max(lengths)].

    ``model`` is a SmolLM2 ``LlamaLM``; each method rebuilds its attention in place (``with_position``) and the model
    is left in plain RoPE at the end. One pass over ``max(lengths)`` tokens per method.
    """
    from attnlab.lens.pretrained.smollm2 import with_position

    if not lengths:
        raise ConfigError("lengths", list(lengths), "give at least one length")
    longest = max(lengths)
    if tokens.shape[1] < longest:
        raise ConfigError("lengths", longest, f"longer than the {tokens.shape[1]} tokens given")
    rows = []
    try:
        for method, factor in methods:
            position, args = scaled_position(method, factor, model.spec.rope_base)
            with_position(model, position, args)
            t0 = time.perf_counter()
            nll = token_nll(model, tokens[:, :longest])
            seconds = time.perf_counter() - t0
            for length, ppl, ppl_half in perplexity_by_length(nll, lengths):
                rows.append(ScalingRow(method, factor, length, ppl, ppl_half, seconds))
    finally:
        with_position(model, "rope")
    return rows

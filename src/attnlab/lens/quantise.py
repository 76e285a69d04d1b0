"""W8A8 fake quantisation: how much a trained model's evaluation loss rises when its linear layers compute in 8 bits.

The setting of "Quantizable Transformers" (Bondarenko et al. 2023, arXiv:2306.12929, §5): uniform 8-bit
quantisation of every linear layer's weights (symmetric, min–max; one scale per tensor, or one per output channel)
and of its input activations (asymmetric, one scale and zero point per tensor, static: the ranges are calibrated
once on held-out batches, then fixed). Outliers in the activations stretch the per-tensor range, so the other
values lose their resolution: the gap between the quantised and the full-precision loss measures it.

Fake quantisation (quantise, then dequantise, and compute in floating point) gives the numbers an integer kernel
would up to its accumulation order. Every ``nn.Linear`` is quantised (the attention projections, MLPs, the
unembedding); embeddings, norms and the attention products are not. A tied unembedding is quantised as a linear
layer only: the embedding lookup keeps the full-precision table.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.tasks.base import Batch
from attnlab.train.loop import run_model

Granularity = Literal["per_tensor", "per_channel"]
GRANULARITIES: tuple[Granularity, ...] = ("per_tensor", "per_channel")
Ranges = dict[str, tuple[float, float]]  # linear layer name → (min, max) of its inputs


def quantise_symmetric(x: Tensor, bits: int = 8, per_channel: bool = False) -> Tensor:
    """Round ``x`` to the grid scale · {−(2ᵇ⁻¹ − 1), …, 2ᵇ⁻¹ − 1} with scale = max |x| / (2ᵇ⁻¹ − 1), one scale per
    tensor or per row (a weight's output channel); dequantised. A zero tensor (or row) stays zero."""
    levels = 2 ** (bits - 1) - 1
    top = x.abs().amax(dim=-1, keepdim=True) if per_channel else x.abs().max()
    scale = torch.where(top > 0, top / levels, torch.ones_like(top))
    return (x / scale).round().clamp(-levels, levels) * scale


def quantise_asymmetric(x: Tensor, low: float, high: float, bits: int = 8) -> Tensor:
    """Round ``x`` to 2ᵇ levels spanning [low, high] (the range widened to include 0, so zero is exact): scale =
    (high − low) / (2ᵇ − 1), zero point round(−low / scale); values outside the range clip to its ends."""
    low, high = min(low, 0.0), max(high, 0.0)
    levels = 2**bits - 1
    scale = (high - low) / levels if high > low else 1.0
    zero = round(-low / scale)
    return ((x / scale).round() + zero).clamp(0, levels).sub(zero).mul(scale)


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` of ``model`` by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Tensor | Batch]) -> Ranges:
    """The min and max of every linear layer's input over ``batches`` (token ids, or a task's ``Batch`` on the
    model's device): the static ranges of the activation quantisers."""
    ranges: Ranges = {}

    def record(name: str):
        def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0].detach()
            low, high = float(x.min()), float(x.max())
            seen = ranges.get(name, (low, high))
            ranges[name] = (min(seen[0], low), max(seen[1], high))

        return hook

    handles = [m.register_forward_pre_hook(record(name)) for name, m in linear_layers(model).items()]
    try:
        for batch in batches:
            model(batch) if isinstance(batch, Tensor) else run_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    if not ranges:
        raise ConfigError("batches", "none", "no calibration batch ran through a linear layer", "one batch or more")
    return ranges


@contextmanager
def fake_quantised(
    model: nn.Module, ranges: Ranges, granularity: Granularity = "per_tensor", bits: int = 8
) -> Iterator[nn.Module]:
    """Within the block, every linear layer of ``model`` computes ``linear(qa(x), qw(W), b)``: 8-bit weights (per
    tensor or per output channel) and statically quantised inputs; the weights themselves are left untouched."""
    if granularity not in GRANULARITIES:
        raise ConfigError("granularity", granularity, "unknown", GRANULARITIES)
    layers = linear_layers(model)
    missing = sorted(set(layers) - set(ranges))
    if missing:
        raise ConfigError("ranges", missing[0], "has no calibrated range (calibrate on this model)", sorted(ranges))
    for name, layer in layers.items():
        weight = quantise_symmetric(layer.weight.detach(), bits, per_channel=granularity == "per_channel")
        low, high = ranges[name]

        def forward(x: Tensor, layer: nn.Linear = layer, w: Tensor = weight, lo: float = low, hi: float = high):
            return F.linear(quantise_asymmetric(x, lo, hi, bits), w.to(x.dtype), layer.bias)

        layer.forward = forward  # an instance attribute: Module.__call__ runs it instead of the class's
    try:
        yield model
    finally:
        for layer in layers.values():
            del layer.forward

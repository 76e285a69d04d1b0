"""``run_with_cache``: one forward pass of an attnlab model that records hook-point activations by name.

A thin wrapper over ``attnlab.hook_points.capture``. Hooking ``blocks.{L}.attn.hook_pattern`` makes that layer
fall back to the reference attention (fused kernels return no weights), so the pattern is always the real one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from attnlab.hook_points import capture

_PATTERN = re.compile(r"^blocks\.(\d+)\.attn\.hook_pattern$")


@torch.no_grad()
def run_with_cache(
    model: nn.Module, tokens: Tensor, names: Iterable[str] | Callable[[str], bool] | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """tokens [B, T] → (logits [B, T, V], cache {hook name: activation}).

    ``names``: None records every hook point; a list records those names (an unknown name is a ``KeyError``);
    a predicate ``name -> bool`` records the names it accepts. Activations are detached.
    """
    with capture(model, names) as cache:
        logits = model(tokens)
    return logits, dict(cache)


def patterns(cache: dict[str, Tensor]) -> dict[int, Tensor]:
    """The attention patterns in a cache: {layer: ``blocks.{layer}.attn.hook_pattern`` [B, H, Tq, Tk]}, by layer."""
    found = {int(m.group(1)): act for name, act in cache.items() if (m := _PATTERN.match(name))}
    return dict(sorted(found.items()))


def capture_patterns(model: nn.Module, tokens: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
    """One forward pass with every ``blocks.{L}.attn.hook_pattern`` captured → (output, {layer: P [B, H, T, T]})."""
    out, cache = run_with_cache(model, tokens, lambda name: name.endswith(".attn.hook_pattern"))
    return out, patterns(cache)

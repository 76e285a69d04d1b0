"""Hook points with TransformerLens names (``blocks.{L}.attn.hook_pattern``, ...), at the bottom of the package.

A ``HookPoint`` is an identity module; its name is its module path, so hooks attach with the standard
``register_forward_hook`` (as TransformerLens's ``hook_points.py``, which every component imports). ``capture``
records activations by name for the duration of a ``with`` block; ``hooks`` attaches replacement functions.
This module imports nothing of attnlab, so the attention core, the model and the lens all point down to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from torch import Tensor, nn


class HookPoint(nn.Module):
    """Identity; a named place to read or replace an activation."""

    def forward(self, x: Tensor) -> Tensor:
        return x

    @property
    def active(self) -> bool:
        return bool(self._forward_hooks) or bool(self._forward_pre_hooks)


def hook_points(model: nn.Module) -> dict[str, HookPoint]:
    return {name: m for name, m in model.named_modules() if isinstance(m, HookPoint)}


def _select(model: nn.Module, names: Iterable[str] | Callable[[str], bool] | None) -> dict[str, HookPoint]:
    points = hook_points(model)
    if names is None:
        return points
    if callable(names):
        return {n: p for n, p in points.items() if names(n)}
    wanted = list(names)
    unknown = [n for n in wanted if n not in points]
    if unknown:
        raise KeyError(f"unknown hook point(s) {unknown}; e.g. {sorted(points)[:8]} ... ({len(points)} in all)")
    return {n: points[n] for n in wanted}


@contextmanager
def capture(
    model: nn.Module, names: Iterable[str] | Callable[[str], bool] | None = None, detach: bool = True
) -> Iterator[dict[str, Tensor]]:
    """Record the activations at the chosen hook points: ``with capture(m, names) as cache: m(x)``."""
    cache: dict[str, Tensor] = {}
    handles = []
    for name, point in _select(model, names).items():

        def save(_module: nn.Module, _inputs: tuple, output: Tensor, name: str = name) -> None:
            cache[name] = output.detach() if detach else output

        handles.append(point.register_forward_hook(save))
    try:
        yield cache
    finally:
        for h in handles:
            h.remove()


@contextmanager
def hooks(model: nn.Module, fns: dict[str, Callable[[Tensor], Tensor | None]]) -> Iterator[None]:
    """Run with ``fn(activation) -> replacement or None`` attached at each named hook point."""
    points = _select(model, fns.keys())
    handles = []
    for name, fn in fns.items():

        def call(_module: nn.Module, _inputs: tuple, output: Tensor, fn=fn) -> Tensor | None:
            return fn(output)

        handles.append(points[name].register_forward_hook(call))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
